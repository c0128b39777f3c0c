"""``--method hywia``: fine- and coarse-grained importance blended by attention (``fusion.AttentionFusion``)
whose few parameters are learned end to end with the LLM frozen.

* fine (per weight, aggregated): Taylor Element^1 ``sum |w g|`` (or Element^2) over all the unit's coupled
  weights (q/k/v/o rows and columns, gate/up/down), from one gradient pass: the loss view; or
  ``--hywia-fine wanda-sp``: ``sum |W_ij| ||X_j||`` over the unit's o_proj / down_proj input columns (each
  weight's magnitude times its input's norm, forward only): the activation view.
* coarse (the whole group at once), ``--hywia-coarse``: ``sequential`` (default) = the output error of
  removing the unit's columns of o_proj / down_proj while the kept ones compensate, taken greedily as units
  leave together (``importance.sequential``: each unit's score is the joint error at the step the greedy
  removal takes it; second order, from one layer-wise pass over the calibration inputs), ``compensated`` =
  the same error for each unit alone (``importance.compensated``), or
  ``taylor`` = ``|sum w g|`` over the group (the first-order loss change of zeroing it).

End to end: soft masks from the fused scores at the target widths gate head outputs and MLP channels
(``gates``); the fusion parameters minimise the language-model loss (or the KL divergence to the
dense model) on the calibration samples; hard top-k of the final fused scores then selects the units.
``--hywia-gates compensated``: when the reconstruction follows, a gated-off unit's inputs are replaced by
their ridge prediction from the kept units (``substitution``) instead of zero, so the loss the fusion
learns from is the reconstructed model's; ``auto`` does so when the per-layer Gram copies fit the cache
budget (``DENSE_CACHE_*``), else falls back to plain gates (recorded in the report).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, fields

import torch
from tqdm.auto import tqdm

from ...calibration.layerwise import GramStats
from ...errors import HywiaError
from ...models.groups import MLP
from ...models.placement import input_device
from ..compensated import compensated_scores
from ..sequential import sequential_scores
from ..forward_methods import BIAS_COMPENSATION, bias_compensation, collect
from ..registry import MethodSpec, ScoreResult, Scores, ScoringContext, register_method, score, top_units
from ..weight_methods import gradient_stats, taylor_importance
from .gates import gated
from .graphed import gated_objective, graph_step
from .substitution import substitution_matrix
from .flat import FlatScores
from .fusion import BLENDS, FINE, NORMALISATIONS, AttentionFusion, blend_inputs, normalise

LOSSES = ("lm", "kl")
FINE_SCORES = ("element1", "element2", "wanda-sp")
COARSE = ("compensated", "sequential", "taylor")
COMPENSATED_SCORES = {"compensated": compensated_scores, "sequential": sequential_scores}
GATES = ("plain", "compensated", "auto")
GRAPH = ("auto", "off")
SUBSTITUTION_REFRESH = 25  # compensated gates: rebuild the substitutions around the current selection every N steps
# The dense logits of all calibration samples are kept when they fit in the larger of DENSE_CACHE_BYTES and
# DENSE_CACHE_WEIGHT_SHARE of the model's weights (on a GPU also within DENSE_CACHE_GPU_SHARE of its free
# memory); else they are recomputed per step, so the fusion's peak does not grow with the calibration size.
DENSE_CACHE_BYTES = 1 << 30
DENSE_CACHE_WEIGHT_SHARE = 0.1
DENSE_CACHE_GPU_SHARE = 0.25


@dataclass
class HybridOptions:
    """Settings of HyWIA's fusion (``--hywia-*`` on the command line)."""

    fine: str = "element1"  # fine-grained saliency: element1 (w*g), element2 (w*g - 1/2 w*F*w) or wanda-sp
    # coarse / gates: chosen on validation data over 3 calibration seeds (BENCHMARKS.md, "Issue 10, round 5")
    coarse: str = "sequential"  # whole-group score: compensated output error (sequential or one-shot), or taylor
    coarse_damping: float = 0.1  # relative ridge of the compensated error (as --reconstruct-damping)
    intercept: bool = False  # compensated: removed inputs' means go into a bias (FLAP's compensation)
    normalisation: str = "mean"  # within (layer, kind): mean, rank or zscore (uniform allocation)
    blend: str = "group"  # one blend per group (default, chosen on validation data), or one per (layer, kind)
    # steps / loss: chosen on held-out LAMBADA validation over calibration seeds (BENCHMARKS.md, "HyWIA
    # sweep"), never on the evaluation text. batch_size 8 validated slightly better (about 1-2%) at 4x the
    # cost; 2 keeps the default run within minutes on a laptop CPU.
    steps: int = 100  # optimisation steps of the fusion parameters
    lr: float = 0.05
    temperature: float = 0.1  # soft-mask temperature, in units of the fused scores' std
    loss: str = "kl"  # lm: language-model loss; kl: KL divergence to the dense model's logits
    batch_size: int = 2  # calibration samples per step
    key_dim: int = 8
    fixed_alpha: float | None = None  # fixed weight of the fine score (no learning): 0.5 = plain average
    realloc_every: int = 10  # global allocation: recompute per-layer widths every N steps
    gates: str = "auto"  # plain (gated-off units output zero), compensated (their ridge stand-in), or auto
    graph: str = "auto"  # auto: the fusion's forward + backward replayed as CUDA graphs where possible; off: eager

    @classmethod
    def from_dict(cls, options: dict) -> "HybridOptions":
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise HywiaError(f"unknown HyWIA option(s) {sorted(unknown)}; known: {sorted(known)}")
        opts = cls(**options)
        opts.validate()
        return opts

    def validate(self) -> None:
        checks = [
            (self.fine in FINE_SCORES, f"--hywia-fine must be one of {FINE_SCORES}, got {self.fine!r}"),
            (self.coarse in COARSE, f"--hywia-coarse must be one of {COARSE}, got {self.coarse!r}"),
            (self.coarse_damping > 0, f"--hywia-coarse-damping must be > 0, got {self.coarse_damping}"),
            (self.normalisation in NORMALISATIONS, f"--hywia-normalisation must be one of {NORMALISATIONS}"),
            (self.blend in BLENDS, f"--hywia-blend must be one of {BLENDS}, got {self.blend!r}"),
            (self.loss in LOSSES, f"--hywia-loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.steps >= 0 and self.batch_size >= 1, "--hywia-steps must be >= 0 and the batch size >= 1"),
            (self.temperature > 0, f"--hywia-temperature must be > 0, got {self.temperature}"),
            (self.fixed_alpha is None or 0 <= self.fixed_alpha <= 1, "--hywia-fixed-alpha must be in [0, 1]"),
            (self.gates in GATES, f"--hywia-gates must be one of {GATES}, got {self.gates!r}"),
            (self.graph in GRAPH, f"--hywia-graph must be one of {GRAPH}, got {self.graph!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise HywiaError(message)


def granularity_scores(context: ScoringContext, opts: HybridOptions, keep_grams: bool = False
                       ) -> tuple[Scores, Scores, Scores, dict]:
    """Raw fine (element-wise Taylor sum |s|, or Wanda-sp) and coarse scores (module docstring), the output
    projections' input means (for the intercept; empty without one) and, with ``keep_grams`` and a compensated
    coarse score, float32 copies of their input Grams (for compensated gates; else empty)."""
    fine, coarse, means, grams = {}, {}, {}, {}
    if opts.fine == "wanda-sp":
        fine = {key: value.cpu() for key, value in score("wanda-sp", context).scores.items()}
    if opts.fine != "wanda-sp" or opts.coarse == "taylor":
        stats = gradient_stats(context, with_fisher=opts.fine == "element2")
        for gs in context.group_sets:
            if opts.fine != "wanda-sp":
                fine[gs.key] = taylor_importance(gs, stats, "element", second_order=opts.fine == "element2").cpu()
            if opts.coarse == "taylor":
                coarse[gs.key] = taylor_importance(gs, stats, "group").cpu()
        del stats
    if opts.coarse in COMPENSATED_SCORES:
        def per_unit(weight, gram: GramStats, gs):
            extra = dict(input_sum=gram.sum, count=gram.count) if opts.intercept else {}
            kept_gram = gram.gram.float() if keep_grams else None  # a copy: the score consumes the Gram
            errors = COMPENSATED_SCORES[opts.coarse](weight, gram.take_gram(), gs.num_units, opts.coarse_damping,
                                                     overwrite=True, **extra)
            return errors.cpu(), (gram.sum / gram.count).float().cpu(), kept_gram

        collected = collect(context, per_unit, statistics=GramStats)
        coarse = {key: value[0] for key, value in collected.items()}
        means = {key: value[1] for key, value in collected.items()} if opts.intercept else {}
        grams = {key: value[2] for key, value in collected.items()} if keep_grams else {}
    return fine, coarse, means, grams


def gate_plan(context: ScoringContext, opts: HybridOptions) -> tuple[bool, str]:
    """Whether the fusion uses compensated gates, and why (for the report)."""
    if opts.gates == "plain" or opts.fixed_alpha is not None or opts.steps == 0:
        return False, "plain gates" if opts.gates == "plain" else "no fusion training"
    reasons = []
    if context.reconstruct_damping is None or context.reconstruct_damping in (0, float("inf")):
        reasons.append("no reconstruction with a finite positive damping follows")
    if opts.coarse not in COMPENSATED_SCORES:
        reasons.append("the coarse score collects no Gram matrices (--hywia-coarse taylor)")
    if opts.intercept:
        reasons.append("the intercept reconstruction is not modelled by the substitution")
    gram_bytes = sum(4 * context.model.get_submodule(context.adapter.unit_output_module(*gs.key)).weight.shape[1] ** 2
                     for gs in context.group_sets)
    budget = _cache_budget(context.model, input_device(context.model))
    if opts.gates == "auto" and gram_bytes > budget:
        reasons.append(f"the Gram copies ({gram_bytes / 2**30:.2f} GiB) exceed the cache budget ({budget / 2**30:.2f} GiB)")
    if reasons and opts.gates == "compensated":
        raise HywiaError(f"--hywia-gates compensated is not possible: {'; '.join(reasons)}")
    return (False, "plain gates: " + "; ".join(reasons)) if reasons else (True, "compensated gates")


def comparable(raw: Scores, params_per_unit: dict, scope: str, mode: str) -> Scores:
    """Normalise raw scores within (layer, kind) (``scope="layer"``), or across the model for global
    allocation (``scope="model"``: divide by the model-wide mean score per parameter, which keeps the
    Taylor estimates' cross-layer information)."""
    if scope == "layer":
        return {key: normalise(scores, mode) for key, scores in raw.items()}
    per_param = torch.cat([scores / params_per_unit[key] for key, scores in raw.items()]).mean().clamp_min(1e-30)
    return {key: scores / per_param for key, scores in raw.items()}


def anchored(raw: Scores, anchor: Scores) -> Scores:
    """``raw`` rescaled per (layer, kind) to the mean of ``anchor`` there: the within-layer order of ``raw``,
    the cross-layer scale of ``anchor``. Used for the compensated coarse score under global allocation:
    output errors of different layers are in different units, the Taylor loss estimates are not."""
    return {key: scores / scores.float().mean().clamp_min(1e-30) * anchor[key].float().mean() for key, scores in raw.items()}


def score_hywia(context: ScoringContext) -> ScoreResult:
    opts = HybridOptions.from_dict(context.options)
    started = time.perf_counter()
    compensated_gates, gates_note = gate_plan(context, opts)
    fine_raw, coarse_raw, means, grams = granularity_scores(context, opts, keep_grams=compensated_gates)
    scored = time.perf_counter()
    ppu = {gs.key: gs.params_per_unit(context.model) for gs in context.group_sets}
    scope = "layer" if context.allocation == "uniform" else "model"
    fine = comparable(fine_raw, ppu, scope, opts.normalisation)
    if opts.coarse in COMPENSATED_SCORES and scope == "model":
        coarse = anchored(coarse_raw, fine)
    else:
        coarse = comparable(coarse_raw, ppu, scope, opts.normalisation)
    keys = [gs.key for gs in context.group_sets]
    keep = context.allocate({k: 0.5 * fine[k] + 0.5 * coarse[k] for k in keys})
    num_layers = context.adapter.num_layers
    inputs = {
        k: blend_inputs(fine[k], coarse[k], depth=k[0] / max(1, num_layers - 1), is_mlp=k[1] == MLP, keep=keep[k])
        for k in keys
    }
    device = input_device(context.model)
    flat = FlatScores(keys, fine, coarse, device)
    fusion = AttentionFusion(key_dim=opts.key_dim, seed=context.seed).to(device)
    # one fusion call for every group set per step (the fusion is row-wise), on the model's device
    if opts.blend == "layer":
        all_context = torch.stack([inputs[k][0].mean(dim=0) for k in flat.keys]).to(device)
        all_keys = torch.stack([inputs[k][1].mean(dim=0) for k in flat.keys]).to(device)
    else:
        all_context = torch.cat([inputs[k][0] for k in flat.keys]).to(device)
        all_keys = torch.cat([inputs[k][1] for k in flat.keys]).to(device)

    def blend_weights() -> torch.Tensor:
        """alpha per unit [units, 2] (or one [2] for a fixed blend), in ``flat``'s order."""
        if opts.fixed_alpha is not None:
            return torch.tensor([opts.fixed_alpha, 1 - opts.fixed_alpha], device=device)
        alpha = fusion(all_context, all_keys)
        return flat.expand(alpha) if opts.blend == "layer" else alpha

    losses: list[float] = []
    step_kind = "no fusion training"
    if opts.fixed_alpha is None and opts.steps > 0:
        keep, losses, step_kind = _learn(context, opts, fusion, flat, blend_weights, keep, grams)
    del grams
    learned = time.perf_counter()
    with torch.no_grad():
        alpha = blend_weights()
        fused = {k: v.clone() for k, v in flat.split(flat.fuse(alpha).cpu()).items()}
        alpha = alpha.cpu()
    per_key = {k: alpha for k in keys} if alpha.dim() == 1 else flat.split(alpha)
    alpha_fine = {k: a[..., FINE] for k, a in per_key.items()}
    details = {
        "options": asdict(opts),
        "normalisation_scope": scope,
        "gates": gates_note,
        "fusion_step": step_kind,
        "alpha_fine": {f"{k[0]}.{k[1]}": float(alpha_fine[k].float().mean()) for k in keys},
        "loss_curve": [round(x, 5) for x in losses],
        "kept_per_layer": {
            name: {f"{k[0]}.{k[1]}": int(c) for k, c in context.allocate(scores).items()}
            for name, scores in (("fine", fine), ("coarse", coarse), ("hybrid", fused))
        },
        "shared_with_hybrid": {
            name: _shared_selection(scores, fused, context.allocate) for name, scores in (("fine", fine), ("coarse", coarse))
        },
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_per_stage": {"scores": round(scored - started, 2), "fusion": round(learned - scored, 2),
                              "details": round(time.perf_counter() - learned, 2)},
    }
    if not opts.intercept:
        return ScoreResult(fused, details)
    details[BIAS_COMPENSATION] = True
    before_surgery, after_surgery = bias_compensation(context.model, context.adapter, means, details)
    return ScoreResult(fused, details, before_surgery=before_surgery, after_surgery=after_surgery)


def _shared_selection(single: Scores, fused: Scores, allocate) -> dict[str, float]:
    """Per (layer, kind): share of the units the hybrid keeps that a single granularity keeps too."""
    single_counts, fused_counts = allocate(single), allocate(fused)
    shares = {}
    for key in fused:
        kept_fused = set(top_units(fused[key], fused_counts[key]).tolist())
        kept_single = set(top_units(single[key], single_counts[key]).tolist())
        shares[f"{key[0]}.{key[1]}"] = len(kept_fused & kept_single) / max(1, len(kept_fused))
    return shares


def _learn(context, opts, fusion, flat: FlatScores, blend_weights, keep, grams):
    """Fit the fusion parameters with the LLM frozen; return the final keep counts and the loss curve.
    With ``grams`` (compensated gates) the substitutions follow the current selection (``SUBSTITUTION_REFRESH``)."""
    model, samples = context.model, context.samples
    device = input_device(model)
    optimiser = torch.optim.Adam(fusion.parameters(), lr=opts.lr)
    saved_flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved_flags:
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    losses = []
    step_kind = "eager"
    generator = torch.Generator().manual_seed(context.seed)
    vocab = model.get_output_embeddings().weight.shape[0]
    cache_fits = samples.numel() * vocab * 4 <= _cache_budget(model, device)
    dense_cache = _dense_logits(model, samples.to(device)) if opts.loss == "kl" and cache_fits else None
    try:
        with gated(model, context.adapter, context.group_sets) as gates, warnings.catch_warnings():
            # a graphed backward notes its autograd streams at every step: benign, nothing for the user to act on
            warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream")
            objective = gated_objective(model, gates, flat.split, _objective)
            # a graph needs the same inputs every step: no substitutions to refresh, the dense logits cached
            why_eager = ("--hywia-graph off" if opts.graph == "off" else "compensated gates" if grams
                         else "dense logits not cached" if opts.loss == "kl" and dense_cache is None else None)
            can_graph = why_eager is None
            if why_eager and device.type == "cuda":
                step_kind = f"eager ({why_eager})"
            for step in tqdm(range(opts.steps), desc="hywia fusion", disable=not context.progress, leave=False):
                fused = flat.fuse(blend_weights())
                if context.allocation != "uniform" and step and step % opts.realloc_every == 0:
                    keep = context.allocate(flat.split(fused.detach().cpu()))
                if grams and step % SUBSTITUTION_REFRESH == 0:
                    gates.substitutions.update(_substitutions(context, grams, flat.split(fused.detach()), keep))
                rows = torch.randperm(len(samples), generator=generator)[: opts.batch_size]
                batch = samples[rows].to(device)
                dense_logits = None
                if opts.loss == "kl":
                    gates.masks.clear()
                    dense_logits = dense_cache[rows.to(dense_cache.device)] if dense_cache is not None else _dense_logits(model, batch)
                masks = flat.soft_masks(fused, keep, opts.temperature)
                inputs = (batch, masks) if dense_logits is None else (batch, masks, dense_logits)
                if can_graph and step == 0:
                    sample = tuple(t.detach().clone().requires_grad_(t is masks) for t in inputs)
                    objective, step_kind = graph_step(objective, sample, model)
                loss = objective(*inputs)
                if not torch.isfinite(loss):
                    raise HywiaError(f"HyWIA fusion loss became {loss.item()} at step {step}; try --dtype float32")
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(loss.item())
    finally:
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return keep, losses, step_kind


def _substitutions(context, grams: dict, fused: Scores, keep: dict) -> dict:
    """The substitution matrix of every group set around the units the current fused scores keep."""
    sizes = {gs.key: gs.num_units for gs in context.group_sets}
    return {
        key: substitution_matrix(gram, top_units(fused[key].detach(), keep[key]), gram.shape[0] // sizes[key],
                                 context.reconstruct_damping)
        for key, gram in grams.items()
    }


def _cache_budget(model, device: torch.device) -> int:
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = max(DENSE_CACHE_BYTES, int(DENSE_CACHE_WEIGHT_SHARE * weight_bytes))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(budget, int(free * DENSE_CACHE_GPU_SHARE))
    return budget


@torch.no_grad()
def _dense_logits(model, batch: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(input_ids=batch[i : i + 8], use_cache=False).logits.float() for i in range(0, len(batch), 8)])


def _objective(model, batch: torch.Tensor, dense_logits: torch.Tensor | None) -> torch.Tensor:
    """LM loss of the gated model, or, given the dense logits, KL(dense || gated) per token."""
    if dense_logits is None:
        return model(input_ids=batch, labels=batch, use_cache=False).loss
    logits = model(input_ids=batch, use_cache=False).logits.float()
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits, dim=-1), torch.log_softmax(dense_logits, dim=-1),
                                    log_target=True, reduction="sum")
    return kl / (batch.shape[0] * batch.shape[1])


# Defaults chosen on validation data (held-out LAMBADA + ARC-e/ARC-c/OBQA validation splits, 3 calibration
# seeds; BENCHMARKS.md, "Issue 10, round 2"): with the first and last layers left whole (layers 4:28) the same
# widths in every layer beat global widths at 20% and 50%; pruning all layers, global widths with a 10% floor
# won (the first and last layers keep more). ``edges`` picks between the two from the pruned layers.
register_method(MethodSpec("hywia", "grad", "HyWIA: fine Taylor + coarse compensated-removal importance fused by learned attention",
                           score_hywia, default_allocation="edges"))
