"""How many units each pruned layer keeps so that a target fraction of ALL parameters is removed.

"20%" in the papers means about 20% of the model's total parameters removed (embeddings included in
the total). The allocator solves for keep counts; the achieved ratio is then exact, not estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import HywiaError
from .models.groups import ATTN, MLP, GroupSet

UNIFORM = "uniform"
GLOBAL = "global"
GLOBAL_SCORE = "global-score"  # FLAP's rule: rank units by score alone, not score per parameter
EDGES = "edges"  # uniform, unless the first or last layer is pruned: then global with EDGE_FLOOR
ALLOCATIONS = (UNIFORM, GLOBAL, GLOBAL_SCORE, EDGES)
EDGE_FLOOR = 0.1


@dataclass(frozen=True)
class UnitBudget:
    """What the allocator needs to know about one group set."""

    key: tuple[int, str]
    num_units: int
    params_per_unit: int
    min_keep: int
    step: int  # kept counts are multiples of this (round_to for MLP channels, 1 for KV groups)


# An achieved ratio further than this (a fraction of ALL parameters) from the request is reported: a
# warning and ``parameters.allocation_note`` in the report, or a refusal with ``--strict``.
TARGET_TOLERANCE = 0.005


@dataclass
class Allocation:
    keep_counts: dict[tuple[int, str], int]
    removed_params: int
    total_params: int
    target_params: int | None = None  # what was asked for (round(ratio * total))
    constraint: str = ""  # what limits how close the allocation can get (for the note)

    @property
    def ratio(self) -> float:
        return self.removed_params / self.total_params

    def note(self, tolerance: float = TARGET_TOLERANCE) -> str | None:
        """One line when the achieved ratio is further than ``tolerance`` from the request, else None."""
        if self.target_params is None or abs(self.removed_params - self.target_params) <= tolerance * self.total_params:
            return None
        return (f"removed {self.ratio:.2%} of the parameters instead of the {self.target_params / self.total_params:.2%} "
                f"asked for: the closest achievable with {self.constraint}")


def check_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0 < ratio < 1):
        raise HywiaError(f"--ratio must be a fraction of parameters to remove in (0, 1), got {ratio}")


def parse_layer_range(spec: str | None, num_layers: int) -> list[int]:
    """``"A:B"`` selects layers A..B-1 like a Python slice (negative ends count from the last layer); an end
    beyond the model (``0:999`` on 30 layers) is refused, not clipped."""
    if spec is None or spec == "":
        return list(range(num_layers))
    try:
        start_text, end_text = spec.split(":")
        start = int(start_text) if start_text.strip() else 0
        end = int(end_text) if end_text.strip() else num_layers
    except ValueError:
        raise HywiaError(f"--layers must look like A:B (e.g. 4:28), got {spec!r}") from None
    if not (-num_layers <= start <= num_layers and -num_layers <= end <= num_layers):
        raise HywiaError(f"--layers {spec} is outside the model: it has {num_layers} layers "
                         f"(0..{num_layers - 1}; e.g. --layers 0:{num_layers})")
    layers = list(range(num_layers))[start:end]
    if not layers:
        raise HywiaError(f"--layers {spec} selects no layer of a model with {num_layers} layers")
    return layers


def budgets_for(group_sets: list[GroupSet], params_per_unit: dict[tuple[int, str], int], round_to: int,
                min_width: float = 0.0) -> list[UnitBudget]:
    """One budget per group set. Every layer keeps at least one KV group and one MLP step, and at least
    ``min_width`` of its units (rounded up; MLP to the step) -- a floor for the score-driven allocations,
    which otherwise may strip a layer almost bare."""
    if round_to < 1:
        raise HywiaError(f"--round-to must be a positive integer, got {round_to}")
    if not (isinstance(min_width, (int, float)) and 0 <= min_width < 1):
        raise HywiaError(f"--min-width must be a fraction of each layer's units in [0, 1), got {min_width}")
    budgets = []
    for gs in group_sets:
        step = round_to if gs.kind == MLP else 1
        if gs.kind == MLP and gs.num_units < round_to:
            raise HywiaError(
                f"--round-to {round_to} cannot fit layer {gs.layer}: its MLP has only {gs.num_units} channels"
            )
        floor = math.ceil(min_width * gs.num_units / step - 1e-9) * step
        min_keep = min(max(step, floor), (gs.num_units // step) * step)
        budgets.append(UnitBudget(gs.key, gs.num_units, params_per_unit[gs.key], min_keep, step))
    return budgets


def _max_removable(budgets: list[UnitBudget]) -> int:
    return sum((b.num_units - b.min_keep) * b.params_per_unit for b in budgets)


def check_feasible(budgets: list[UnitBudget], ratio: float, total: int) -> None:
    """Raise if removing ``ratio`` of ``total`` parameters is impossible within ``budgets``."""
    check_ratio(ratio)
    target = round(ratio * total)
    most = _max_removable(budgets)
    if target > most:
        raise HywiaError(
            f"cannot remove {target / total:.1%} of the parameters: the selected layers at their minimum "
            f"widths (KV groups: {max((b.min_keep for b in budgets if b.key[1] == ATTN), default=0)}, "
            f"MLP channels: {max((b.min_keep for b in budgets if b.key[1] == MLP), default=0)}) remove at most "
            f"{most / total:.1%}; lower --ratio or --min-width, or prune more layers"
        )


def _constraint(budgets: list[UnitBudget]) -> str:
    mlp = [b for b in budgets if b.key[1] == MLP]
    attn = [b for b in budgets if b.key[1] == ATTN]
    parts = [f"{len(mlp)} pruned layers"]
    if attn:
        parts.append(f"whole KV groups ({attn[0].num_units} per layer, at least {min(b.min_keep for b in attn)} kept)")
    if mlp:
        step = mlp[0].step
        parts.append(f"MLP widths in steps of {step} (--round-to), at least {min(b.min_keep for b in mlp)} kept")
    return ", ".join(parts)


def allocate_uniform(budgets: list[UnitBudget], ratio: float, total_params: int) -> Allocation:
    """Same keep counts in every pruned layer, the achieved ratio the closest achievable to the target.

    Every KV-group count from the floor up is tried with the MLP width (a multiple of the step, within
    the floor) closest to the remainder of the target. The candidate removing the closest number of
    parameters wins; candidates within one MLP channel per pruned layer of the closest (the finest
    resolution of a uniform layout, whatever the step) count as tied, and among them the one removing the
    most similar fraction of heads and channels wins.
    """
    check_feasible(budgets, ratio, total_params)
    target = round(ratio * total_params)
    attn = [b for b in budgets if b.key[1] == ATTN]
    mlp = [b for b in budgets if b.key[1] == MLP]
    for group in (attn, mlp):
        if len({(b.num_units, b.params_per_unit, b.min_keep, b.step) for b in group}) > 1:
            raise HywiaError("the selected layers have different widths already; use --allocation global")
    n_attn, c_attn = (attn[0].num_units, attn[0].params_per_unit) if attn else (0, 0)
    n_mlp, c_mlp = mlp[0].num_units, mlp[0].params_per_unit
    step, mlp_floor = mlp[0].step, mlp[0].min_keep
    mlp_ceiling = (n_mlp // step) * step  # kept widths are multiples of the step
    layers_attn, layers_mlp = len(attn), len(mlp)

    candidates = []
    for keep_attn in range(attn[0].min_keep, n_attn + 1) if attn else [0]:
        attn_removed = (n_attn - keep_attn) * c_attn * layers_attn
        ideal_keep = n_mlp - (target - attn_removed) / (c_mlp * layers_mlp)
        below = math.floor(ideal_keep / step) * step
        options = []
        for keep_mlp in sorted({min(max(k, mlp_floor), mlp_ceiling) for k in (below, below + step)}):
            removed = attn_removed + (n_mlp - keep_mlp) * c_mlp * layers_mlp
            frac_attn = (n_attn - keep_attn) / n_attn if attn else 0.0
            frac_mlp = (n_mlp - keep_mlp) / n_mlp
            options.append((abs(removed - target), abs(frac_attn - frac_mlp), keep_attn, keep_mlp, removed))
        candidates.append(min(options))  # the closest MLP width for this KV-group count
    closest = min(c[0] for c in candidates)
    resolution = c_mlp * layers_mlp
    tied = [c for c in candidates if c[0] <= closest + resolution]
    _, _, keep_attn, keep_mlp, removed = min(tied, key=lambda c: (c[1], c[0], c[2]))
    counts = {b.key: (keep_attn if b.key[1] == ATTN else keep_mlp) for b in budgets}
    return Allocation(counts, removed, total_params, target, _constraint(budgets))


def allocate_global(
    budgets: list[UnitBudget],
    scores: dict[tuple[int, str], torch.Tensor],
    ratio: float,
    total_params: int,
    *,
    per_parameter: bool = True,
) -> Allocation:
    """Non-uniform widths: remove the units of lowest score per parameter across all pruned layers.

    Scores must be comparable across layers (Taylor scores are loss-change estimates; fused HyWIA
    scores are normalised per layer). Each layer keeps at least its minimum; MLP widths stay multiples
    of the step: removals happen ``step`` channels at a time, the lowest-scored first.

    With ``per_parameter=False`` (allocation ``global-score``, FLAP's rule) units are ranked by their
    score alone, whatever their size -- right for standardised scores, which may be negative and carry
    no unit of "importance per weight" -- and removed lowest first.

    The removal stops at the chunk boundary closest to the target: before the chunk that crosses it or
    after, whichever lands closer (never below a layer's floor: chunks stop there).
    """
    check_feasible(budgets, ratio, total_params)
    target = round(ratio * total_params)
    chunks = []  # (score per parameter, key, units in chunk, params)
    for b in budgets:
        ordered = torch.sort(scores[b.key].double()).values
        usable = (b.num_units // b.step) * b.step
        tail = b.num_units - usable  # channels beyond the last full step are always removed first
        # chunk k spans [tail + k*step, tail + (k+1)*step), the first one from 0: sums from one cumsum
        count = len(range(0, usable - b.min_keep, b.step))
        if count == 0:
            continue
        ends = tail + b.step * torch.arange(1, count + 1)
        starts = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1]])
        prefix = torch.cat([ordered.new_zeros(1), ordered.cumsum(0)])
        sizes = ends - starts
        values = (prefix[ends] - prefix[starts]) / (sizes * (b.params_per_unit if per_parameter else 1))
        for value, units in zip(values.tolist(), sizes.tolist()):
            chunks.append((value, b.key, units, units * b.params_per_unit))
    chunks.sort(key=lambda c: c[0])
    keep = {b.key: b.num_units for b in budgets}
    removed = 0
    for _, key, units, params in chunks:
        if removed >= target:
            break
        if target - removed < removed + params - target:  # stopping short lands closer than overshooting
            break
        keep[key] -= units
        removed += params
    return Allocation(keep, removed, total_params, target, _constraint(budgets))


def allocate_scored(
    mode: str, budgets: list[UnitBudget], scores: dict[tuple[int, str], torch.Tensor], ratio: float, total_params: int
) -> Allocation:
    """The score-driven allocations: ``global`` (score per parameter) or ``global-score`` (score alone)."""
    if mode not in (GLOBAL, GLOBAL_SCORE):
        raise HywiaError(f"allocation {mode!r} does not use scores; expected {GLOBAL} or {GLOBAL_SCORE}")
    return allocate_global(budgets, scores, ratio, total_params, per_parameter=mode == GLOBAL)


AUTO_ROUND_TO = "auto"
# The automatic MLP step on GPUs: the widest of these whose granularity is at most GRANULARITY of the
# narrowest pruned MLP (128 on 13B-class widths and up, 64 on 7B-class; GEMM tiles of 64/128 columns keep
# tensor cores full); CPUs gain nothing from it, so there it is 1 unless asked for.
HARDWARE_STEPS = (128, 64)
HARDWARE_GRANULARITY = 0.01
SMALL_MODEL_STEP = (64, 0.125)  # narrow MLPs (< 6400 channels) still get 64 when it is at most 1/8 of the width


def hardware_round_to(device: str, mlp_widths: list[int]) -> int:
    """The automatic ``--round-to`` for MLP widths on ``device`` (cpu, cuda[:N] or auto = spread over GPUs)."""
    if not str(device).startswith(("cuda", "auto")) or not mlp_widths:
        return 1
    narrowest = min(mlp_widths)
    for step in HARDWARE_STEPS:
        if step <= HARDWARE_GRANULARITY * narrowest:
            return step
    step, most = SMALL_MODEL_STEP
    return step if step <= most * narrowest else 1


def resolve_round_to(round_to: int | str, device: str, group_sets: list[GroupSet]) -> tuple[int, str | None]:
    """``--round-to`` as a number: itself; ``auto``: ``hardware_round_to`` of the pruned MLP widths, with a line
    for the report's allocation notes saying what was chosen and why."""
    if round_to != AUTO_ROUND_TO:
        try:
            value = int(round_to)
        except (TypeError, ValueError):
            raise HywiaError(f"--round-to must be a positive integer or {AUTO_ROUND_TO}, got {round_to!r}") from None
        if value < 1:
            raise HywiaError(f"--round-to must be a positive integer or {AUTO_ROUND_TO}, got {round_to!r}")
        return value, None
    widths = [gs.num_units for gs in group_sets if gs.kind == MLP]
    step = hardware_round_to(device, widths)
    if step == 1:
        return 1, None
    return step, (f"MLP widths kept at multiples of {step} (--round-to auto on {device}: GPU matrix tiles; "
                  f"narrowest pruned MLP {min(widths)} channels; --round-to 1 turns it off)")


def resolve_edges(allocation: str, min_width: float | None, layers: list[int], num_layers: int
                  ) -> tuple[str, float | None, str | None]:
    """``edges`` made concrete for the pruned ``layers``: ``uniform`` when the first and last layers stay whole
    (HyWIA on SmolLM2 layers 4:28: uniform beat global on validation at 20% and 50%), else ``global`` with a
    floor of ``EDGE_FLOOR`` unless ``min_width`` is set (all 30 layers: global won on validation: the
    sensitive first and last layers keep more). Returns (allocation, min_width, a line saying why)."""
    if allocation != EDGES:
        return allocation, min_width, None
    edges = [layer for layer in (0, num_layers - 1) if layer in layers]
    if not edges:
        return UNIFORM, min_width, "allocation edges: uniform (the first and last layers are not pruned)"
    floor = EDGE_FLOOR if min_width is None else min_width
    return GLOBAL, floor, (f"allocation edges: global with a {floor:.0%} floor (layer(s) {edges} pruned: per-layer "
                           "widths let the sensitive first and last layers keep more)")

