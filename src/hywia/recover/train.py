"""LoRA recovery through peft: language-model loss on instructions, or distillation from the dense teacher.

Named recipes (``RECIPES``; ``resolve_recipe``): ``llm-pruner`` for instruction data (the protocol of the
published tables) and ``passages`` for the offline reading passages, chosen on validation data only.
``RecoverConfig``'s defaults are LLM-Pruner's (METHOD.md section 5): LoRA r=8, alpha=16, dropout 0.05 on every prunable
projection (``adapter.lora_targets()``), AdamW lr 1e-4 with linear warmup (``warmup_steps``) and linear
decay, 2 epochs, cutoff 256 tokens, ``batch_size`` examples per update as ``micro_batch_size``-sized
micro-batches with gradient accumulation (4 on the CPU, as LLM-Pruner; on a GPU as large as a quarter of the
free memory allows: the same update with fewer kernel launches). bf16 on GPUs that support it, fp32 on the CPU; fp16 is refused.

A *step* is one optimizer update. Checkpoints (``checkpoint_dir``) hold the LoRA weights, the optimizer,
the RNG states, the step and the data position (epoch, index into that epoch's seeded order), so a
resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration.gradients import activation_shape
from ..errors import HywiaError
from ..models.adapters import get_adapter

OBJECTIVES = ("distill", "lm")
# LLM-Pruner's recipe (the dataclass defaults) is made for Alpaca's ~50k examples: 2 epochs at 128 examples
# per update are ~800 updates. On the ~1.6k offline reading passages the same recipe makes 24 updates and
# closes 6% of the perplexity gap of SmolLM2 at 20%; ``passages`` was chosen among five recipes on held-out
# LAMBADA perplexity and the ARC/OBQA validation splits (BENCHMARKS.md, issue 12): 200 updates, 45%.
RECIPES = {
    "llm-pruner": {},
    "passages": {"rank": 32, "alpha": 64, "lr": 1e-3, "batch_size": 32, "epochs": 4.0},
}
RECIPE_FIELDS = ("rank", "alpha", "lr", "batch_size", "epochs")


def resolve_recipe(name: str, source: str, given: dict) -> tuple[str, dict]:
    """The recipe's name (``auto``: ``passages`` for the offline reading passages, else ``llm-pruner``) and its
    ``RECIPE_FIELDS`` values; a value in ``given`` that is not None overrides the recipe's."""
    from .data import DEFAULT_OFFLINE_DATA

    if name == "auto":
        name = "passages" if source == DEFAULT_OFFLINE_DATA else "llm-pruner"
    if name not in RECIPES:
        raise HywiaError(f"--recipe must be auto or one of {', '.join(RECIPES)}, got {name!r}")
    defaults = RecoverConfig()
    values = {key: getattr(defaults, key) for key in RECIPE_FIELDS}
    values.update(RECIPES[name])
    values.update({key: value for key, value in given.items() if key in RECIPE_FIELDS and value is not None})
    return name, values
CHECKPOINT_STATE = "state.json"
CHECKPOINT_ADAPTER = "adapter.safetensors"
CHECKPOINT_BEST = "best_adapter.safetensors"
CHECKPOINT_TENSORS = "optimizer.pt"


@dataclass
class RecoverConfig:
    objective: str = "distill"  # "distill" (KL to the dense teacher, no labels) or "lm" (masked LM loss)
    recipe: str = "llm-pruner"  # the name of the RECIPES entry these values came from (recorded in the report)
    data: str | None = None  # file, "reading-passages", "alpaca-cleaned"; None: the objective's default
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    lr: float = 1e-4
    epochs: float = 2.0
    max_steps: int | None = None
    cutoff: int = 256
    batch_size: int = 128  # examples per optimizer step
    micro_batch_size: int | None = None  # examples per forward/backward; None: ``micro_batch_for`` (4 on the CPU)
    warmup_steps: int = 100  # capped at 10% of the steps
    weight_decay: float = 0.0
    val_fraction: float = 0.05
    max_val: int = 200
    max_examples: int | None = None
    eval_every: int = 50
    save_every: int | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    seed: int = 42
    temperature: float = 1.0
    dtype: str = "auto"  # auto: bf16 on a bf16-capable GPU, fp32 on the CPU
    data_mode: str = "auto"  # offline / online / auto (calibration.hub.decide_offline)
    progress: bool = True

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise HywiaError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        for name in ("rank", "alpha", "batch_size", "micro_batch_size", "eval_every", "cutoff"):
            if name == "micro_batch_size" and self.micro_batch_size is None:
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise HywiaError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise HywiaError(f"--batch-size ({self.batch_size}) must be a multiple of --micro-batch-size "
                             f"({self.micro_batch_size})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise HywiaError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.dropout < 1:
            raise HywiaError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not self.epochs > 0:
            raise HywiaError(f"--epochs must be positive, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise HywiaError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.save_every is not None and self.save_every < 1:
            raise HywiaError(f"--save-every must be >= 1, got {self.save_every}")
        if self.resume and not self.checkpoint_dir:
            raise HywiaError("--resume needs a checkpoint folder")

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> dict:
        """What must match between a checkpoint and the run that resumes it."""
        keys = ("objective", "data", "rank", "alpha", "dropout", "lr", "epochs", "max_steps", "cutoff",
                "batch_size", "micro_batch_size", "warmup_steps", "val_fraction", "max_val", "max_examples", "seed")
        return {k: getattr(self, k) for k in keys}


@dataclass
class RecoverResult:
    model: nn.Module  # LoRA merged in: a plain model of the same architecture and widths
    recovery: dict  # recipe, data provenance, curves: the report's "recovery" section
    curves: dict = field(default_factory=dict)


def training_dtype(model: nn.Module, requested: str = "auto") -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 on the CPU; fp16 is refused (LoRA in fp16 overflows to NaN)."""
    current = next(model.parameters()).dtype
    device = next(model.parameters()).device
    if requested == "float16" or (requested == "auto" and current == torch.float16):
        raise HywiaError("fp16 training is not supported (LoRA in fp16 gives NaN losses on Llama-2); "
                         "use --dtype bfloat16 on a GPU or float32")
    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if requested != "auto":
        raise HywiaError(f"--dtype must be auto, float32 or bfloat16 for recovery, got {requested!r}")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


CPU_MICRO_BATCH = 4  # LLM-Pruner's micro-batch
GPU_MEMORY_SHARE = 0.25  # of the free GPU memory one micro-batch's activations may take


def micro_batch_for(batch_size: int, example_bytes: int, budget: int, floor: int = CPU_MICRO_BATCH) -> int:
    """The largest power of two that divides ``batch_size`` and keeps ``size * example_bytes <= budget`` (at
    least 1; at least ``floor`` when that divides ``batch_size``). Micro-batches only split the gradient
    accumulation, so the update is the same; larger ones launch fewer kernels per token."""
    size = 1
    while batch_size % (2 * size) == 0 and (2 * size) * example_bytes <= budget:
        size *= 2
    return max(size, floor) if batch_size % floor == 0 else size


def example_bytes(model: nn.Module, cutoff: int, distill: bool) -> int:
    """Activation bytes of one training example of ``cutoff`` tokens (no checkpointing): float32 logits with
    their log-softmaxes (and the teacher's), plus each layer's hidden and MLP activations."""
    shape = activation_shape(model)
    logits = shape.vocab * 4 * (6 if distill else 3)
    layers = shape.layers * (16 * shape.hidden + 6 * shape.wide) * shape.element
    return cutoff * (logits + layers)


def resolve_micro_batch(model: nn.Module, config: RecoverConfig, device: torch.device) -> int:
    """``config.micro_batch_size``, or on a GPU the largest that fits ``GPU_MEMORY_SHARE`` of its free memory
    (``micro_batch_for``), else ``CPU_MICRO_BATCH``."""
    if config.micro_batch_size is not None:
        return config.micro_batch_size
    if device.type != "cuda":
        return micro_batch_for(config.batch_size, 1, CPU_MICRO_BATCH)
    free, _ = torch.cuda.mem_get_info(device)
    need = example_bytes(model, config.cutoff, config.objective == "distill")
    return micro_batch_for(config.batch_size, need, int(free * GPU_MEMORY_SHARE), floor=1)


def _lora_model(model: nn.Module, config: RecoverConfig):
    from peft import LoraConfig, get_peft_model

    targets = get_adapter(model).lora_targets()
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _lora_state(peft_model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in peft_model.named_parameters() if p.requires_grad}


def _load_lora_state(peft_model, state: dict[str, torch.Tensor]) -> None:
    params = dict(peft_model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing or len(state) != sum(p.requires_grad for p in params.values()):
        raise HywiaError(f"the checkpoint's LoRA weights do not match this model (e.g. {missing[:2]})")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def _batch(rows: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, attention mask and loss mask (the loss mask is 0 on padding)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_mask) in enumerate(rows):
        ids[i, : len(row_ids)] = row_ids
        attention[i, : len(row_ids)] = 1
        loss_mask[i, : len(row_ids)] = row_mask
    return ids.to(device), attention.to(device), loss_mask.to(device)


def token_losses(student_logits: torch.Tensor, ids: torch.Tensor, teacher_logits: torch.Tensor | None,
                 temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position (objective, cross-entropy) for predicting ``ids[:, 1:]``: [B, L-1] each.

    The objective is the cross-entropy (``teacher_logits`` None) or KL(teacher || student) at
    ``temperature`` (scaled by T^2, Hinton et al.), summed over the vocabulary.
    """
    logits = student_logits[:, :-1].float()
    ce = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(ids[:, 1:].shape)
    if teacher_logits is None:
        return ce, ce
    t = temperature
    teacher = F.log_softmax(teacher_logits[:, :-1].float() / t, dim=-1)
    student = F.log_softmax(logits / t, dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(-1) * t * t
    return kl, ce


def _forward_losses(model, teacher, rows, pad_id, device, temperature) -> tuple[torch.Tensor, torch.Tensor, int]:
    ids, attention, loss_mask = _batch(rows, pad_id, device)
    logits = model(input_ids=ids, attention_mask=attention).logits
    teacher_logits = None
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, attention_mask=attention).logits
        if teacher_logits.shape[-1] != logits.shape[-1]:
            raise HywiaError(f"the teacher's vocabulary ({teacher_logits.shape[-1]}) differs from the model's "
                             f"({logits.shape[-1]}); distillation needs the dense model the pruned one came from")
    objective, ce = token_losses(logits, ids, teacher_logits, temperature)
    mask = loss_mask[:, 1:].to(objective.dtype)
    return (objective * mask).sum(), (ce * mask).sum(), int(mask.sum().item())


@torch.no_grad()
def validation_loss(model, teacher, rows, pad_id, device, micro_batch_size, temperature) -> tuple[float, float]:
    """Mean (objective, cross-entropy) per scored token over ``rows``."""
    was_training = model.training
    model.eval()
    total_obj = total_ce = 0.0
    count = 0
    for start in range(0, len(rows), micro_batch_size):
        obj, ce, n = _forward_losses(model, teacher, rows[start : start + micro_batch_size], pad_id, device, temperature)
        total_obj, total_ce, count = total_obj + obj.item(), total_ce + ce.item(), count + n
    model.train(was_training)
    return total_obj / max(count, 1), total_ce / max(count, 1)


def _order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


class _Checkpoints:
    """LoRA weights (safetensors), optimizer + RNG states (tensors only, loaded with weights_only) and a
    JSON state (step, data position, curves, the config fingerprint), replaced atomically."""

    def __init__(self, folder: str | None):
        self.folder = Path(folder) if folder else None

    def save(self, peft_model, optimizer, state: dict, best: dict | None) -> None:
        if self.folder is None:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / ".writing"
        tmp.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in _lora_state(peft_model).items()}, str(tmp / CHECKPOINT_ADAPTER))
        if best is not None:
            save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / CHECKPOINT_BEST))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, tmp / CHECKPOINT_TENSORS)
        (tmp / CHECKPOINT_STATE).write_text(json.dumps(state, indent=1))
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == CHECKPOINT_STATE):  # state.json last
            item.replace(self.folder / item.name)  # each file replaced atomically
        tmp.rmdir()

    def load(self, peft_model, optimizer, fingerprint: dict) -> tuple[dict, dict | None]:
        from safetensors.torch import load_file

        if self.folder is None or not (self.folder / CHECKPOINT_STATE).is_file():
            raise HywiaError(f"--resume: no checkpoint in {self.folder} (save one with --save-every N)")
        state = json.loads((self.folder / CHECKPOINT_STATE).read_text())
        if state.get("fingerprint") != fingerprint:
            changed = [k for k in fingerprint if state.get("fingerprint", {}).get(k) != fingerprint[k]]
            raise HywiaError(f"--resume: the checkpoint in {self.folder} was made with other settings ({', '.join(changed)}); "
                             "resume with the same options or start afresh without --resume")
        _load_lora_state(peft_model, load_file(str(self.folder / CHECKPOINT_ADAPTER)))
        tensors = torch.load(self.folder / CHECKPOINT_TENSORS, weights_only=True)
        optimizer.load_state_dict(tensors["optimizer"])
        torch.set_rng_state(tensors["rng"]["cpu"])
        if "cuda" in tensors["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(tensors["rng"]["cuda"])
        best_path = self.folder / CHECKPOINT_BEST
        best = load_file(str(best_path)) if best_path.is_file() else None
        return state, best


def recover(model: nn.Module, tokenizer, config: RecoverConfig, teacher: nn.Module | None = None, *,
            data=None) -> RecoverResult:
    """Train LoRA adapters on ``model`` (a pruned model, changed in place), keep the adapters with the
    lowest validation loss, merge them and return the merged model with the report's ``recovery`` section.

    ``teacher``: the dense model, needed for ``objective="distill"``; it is moved to the model's device and
    training dtype in place and frozen (a 7B teacher is not copied): pass a copy to keep the original. ``data``: a prepared
    ``RecoveryData`` (default: built from ``config.data``, see ``recover.data``).
    """
    from .data import build_data, resolve_source

    config.validate()
    if config.objective == "distill" and teacher is None:
        raise HywiaError("--objective distill needs the dense teacher model (--teacher, or the input model recorded in "
                         "the pruned model's hywia_report.json)")
    dtype = training_dtype(model, config.dtype)
    device = next(model.parameters()).device
    model.to(dtype=dtype)
    if teacher is not None:
        teacher.to(device=device, dtype=dtype).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    source = resolve_source(config.data, config.objective, config.data_mode) if data is None else \
        data.provenance.get("source", "given")
    if data is None:
        bos = tokenizer.bos_token_id if get_adapter(model).needs_bos else None
        data = build_data(tokenizer, source, cutoff=config.cutoff, val_fraction=config.val_fraction,
                          max_val=config.max_val, max_examples=config.max_examples, bos_id=bos, mode=config.data_mode)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    steps_per_epoch = max(1, len(data.train) // config.batch_size)
    total = max(1, int(round(config.epochs * steps_per_epoch)))
    if config.max_steps is not None:  # as transformers' Trainer: max_steps overrides the epochs
        total = config.max_steps
    warmup = min(config.warmup_steps, total // 10)
    micro = resolve_micro_batch(model, config, device)

    torch.manual_seed(config.seed)
    peft_model = _lora_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    checkpoints = _Checkpoints(config.checkpoint_dir)
    fingerprint = config.fingerprint()
    fingerprint["data"] = source
    step, epoch, position = 0, 0, 0
    curves: dict = {"train": [], "validation": []}
    best: dict | None = None
    best_val = math.inf
    if config.resume:
        state, best = checkpoints.load(peft_model, optimizer, fingerprint)
        step, epoch, position, curves = state["step"], state["epoch"], state["position"], state["curves"]
        best_val = state.get("best_validation", math.inf)
    if not curves["validation"]:
        obj, ce = validation_loss(peft_model, teacher, data.validation, pad_id, device, micro,
                                  config.temperature)
        curves["validation"].append({"step": 0, "loss": obj, "ce": ce})

    def state_now() -> dict:
        return {"step": step, "epoch": epoch, "position": position, "total_steps": total, "curves": curves,
                "best_validation": best_val, "fingerprint": fingerprint}

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, desc="recover", disable=not config.progress, file=sys.stderr)
    started = time.perf_counter()
    tokens_seen = 0
    peft_model.train()
    order = _order(len(data.train), config.seed, epoch)
    try:
        while step < total:
            if position + config.batch_size > len(order):  # next epoch (a partial last batch is dropped)
                epoch, position = epoch + 1, 0
                order = _order(len(data.train), config.seed, epoch)
            factor = _lr_factor(step, warmup, total)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * factor
            batch = [data.train[i] for i in order[position : position + config.batch_size]]
            n_scored = sum(int(mask[1:].sum()) for _, mask in batch)
            loss_total = 0.0
            for start in range(0, len(batch), micro):
                obj, _, _ = _forward_losses(peft_model, teacher, batch[start : start + micro],
                                            pad_id, device, config.temperature)
                (obj / max(n_scored, 1)).backward()  # gradient accumulation: a token-weighted mean per update
                loss_total += obj.item()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, position = step + 1, position + config.batch_size
            tokens_seen += sum(len(ids) for ids, _ in batch)
            train_loss = loss_total / max(n_scored, 1)
            curves["train"].append({"step": step, "loss": train_loss, "lr": config.lr * factor})
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens_seen / max(elapsed, 1e-9):.0f}")
            bar.update(1)
            if step % config.eval_every == 0 or step == total:
                obj, ce = validation_loss(peft_model, teacher, data.validation, pad_id, device,
                                          micro, config.temperature)
                curves["validation"].append({"step": step, "loss": obj, "ce": ce})
                if obj < best_val:
                    best_val, best = obj, _lora_state(peft_model)
                if config.progress:
                    bar.write(f"step {step}/{total}: validation {config.objective} loss {obj:.4f} (ce {ce:.4f})", file=sys.stderr)
            if config.save_every and step % config.save_every == 0:
                checkpoints.save(peft_model, optimizer, state_now(), best)
    except KeyboardInterrupt:
        bar.close()
        if checkpoints.folder is None:
            raise
        checkpoints.save(peft_model, optimizer, state_now(), best)
        raise HywiaError(f"interrupted at step {step}/{total}; checkpoint saved in {checkpoints.folder}: "
                         "run the same command with --resume to continue") from None
    bar.close()
    seconds = time.perf_counter() - started
    if checkpoints.folder is not None and config.save_every:
        checkpoints.save(peft_model, optimizer, state_now(), best)
    initial_val = curves["validation"][0]["loss"]
    if best is not None and best_val <= initial_val:
        _load_lora_state(peft_model, best)
        kept = "best"
    else:  # training never beat the untrained adapters: keep those (zero B: the pruned model unchanged)
        kept = "initial"
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if p.requires_grad and "lora_B" in name:
                    p.zero_()
    best_step = min(curves["validation"], key=lambda e: e["loss"])["step"]
    merged = peft_model.merge_and_unload()
    merged.eval()
    recovery = {
        "recipe": {**config.to_dict(), "method": "LoRA (peft)", "targets": get_adapter(merged).lora_targets(),
                   "training_dtype": str(dtype).replace("torch.", ""), "steps": total, "warmup": warmup,
                   "micro_batch_size_used": micro},
        "data": {**data.provenance, "source": source},
        "teacher": None,
        "objective": config.objective,
        "steps_done": step,
        "tokens_trained_this_run": tokens_seen,
        "seconds_this_run": round(seconds, 1),
        "kept_adapters": kept,
        "best_step": best_step if kept == "best" else 0,
        "best_validation_loss": min(best_val, initial_val),
        "validation_loss_before": initial_val,
        "curves": curves,
    }
    return RecoverResult(merged, recovery, curves)
