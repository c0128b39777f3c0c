"""Efficiency of a (pruned) model: parameters, MACs, peak memory, prefill and decode throughput.

* MACs are counted **analytically**: every ``nn.Linear`` costs ``in x out`` per token (lm_head included,
  embeddings are lookups and cost 0), and attention costs ``2 x heads x head_dim x L x L`` per layer for a
  prefill of L tokens (QK^T and AV over the full L x L score matrix, as dense kernels compute it), with
  the per-layer head counts read through the adapter. One decode step at context length T costs the
  Linear MACs of one token plus ``2 x heads x head_dim x T`` per layer. Norms, RoPE, softmax and
  activations are left out (< 1 % here). The Linear part equals what
  ``torch.utils.flop_counter.FlopCounterMode`` counts (checked in the tests); that counter is not used
  for the total because on CPU it does not see the attention inside ``scaled_dot_product_attention``.
* Peak memory, in one extra untimed run per batch size: on CUDA ``torch.cuda.max_memory_allocated``
  (weights included); on CPU the peak resident-set size (RSS, psutil, sampled every 2 ms by a thread)
  above the RSS before the run, i.e. activations + KV cache only; the weights' size is reported
  separately (parameter + buffer bytes). The sampling thread is kept out of the timed runs.
* Throughput: greedy, random prompt ids (seeded), after ``warmup`` untimed runs, median of ``repeats``.
  Prefill = one forward over ``batch x prompt_len`` tokens with the cache on; decode = ``new_tokens``
  single-token steps on that cache, tokens/s = batch x new_tokens / time. "eager": transformers' dynamic
  cache, one plain forward per token (what ``generate`` does, without its logits processors).
* Compiled decode (``compile_modes`` given, one measurement per mode): a static KV cache (``StaticCache``, preallocated for
  prompt_len + new_tokens; per-layer pruned widths are fine, its layers size themselves on first use) and
  the decode step -- forward + greedy argmax -- through ``torch.compile`` (``reduce-overhead``: CUDA
  graphs over cuBLAS products; ``max-autotune``: CUDA graphs over products autotuned per shape, Triton
  templates included, a minute or more of compiling per model and batch size); its prefill is an eager
  forward into the static cache. Which mode is faster depends on the shapes and the batch (on an H200 at
  the LLaMA-7B shape: max-autotune at batch 1, reduce-overhead at batch 32; BENCHMARKS.md, issue 13),
  hence several at once. The greedy tokens are checked against
  the eager run's. A failure to compile is recorded in the results (``error``), not raised.
* Ideal speed-up of a pruned model: the ratio of *non-embedding* parameters (all but the input embedding
  table, which is a lookup; a tied LM head is counted), what a memory-bound decode reads per token.
"""

from __future__ import annotations

import gc
import inspect
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import HywiaError
from ..models import count_parameters
from ..models.placement import input_device


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def split_modes(spec: str | None) -> list[str]:
    """``--compile``'s value (``reduce-overhead,max-autotune``) as a list; none when not given."""
    return [mode.strip() for mode in spec.split(",") if mode.strip()] if spec else []


@dataclass
class SpeedConfig:
    prompt_len: int = 128
    new_tokens: int = 32
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    repeats: int = 5
    warmup: int = 2
    seed: int = 0
    compile_modes: list[str] = field(default_factory=list)  # e.g. ["reduce-overhead"]: also the compiled decode
    compile_backend: str = "inductor"  # "eager" checks the code path quickly (tests, CPUs without a compiler)

    def validate(self) -> None:
        if self.prompt_len < 1 or self.new_tokens < 1 or self.repeats < 1 or self.warmup < 0:
            raise HywiaError("--prompt-len, --new-tokens and --repeats must be >= 1, --warmup >= 0")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise HywiaError(f"--batch-sizes must be positive integers, got {self.batch_sizes}")
        for mode in self.compile_modes:
            if mode not in COMPILE_MODES:
                raise HywiaError(f"--compile takes modes among {', '.join(COMPILE_MODES)} (comma-separated), "
                                 f"got {mode!r}")
        if len(set(self.compile_modes)) != len(self.compile_modes):
            raise HywiaError(f"--compile names a mode twice: {','.join(self.compile_modes)}")

    def to_dict(self) -> dict:
        return asdict(self)


def weight_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters a decode step reads: all but the input embedding table (a tied LM head counts)."""
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return count_parameters(model) - (0 if tied else embedding.numel())


def linear_macs_per_token(model: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def attention_macs(model: nn.Module, query_tokens: int, context_tokens: int) -> int:
    """``2 x heads x head_dim x query_tokens x context_tokens`` summed over the layers (QK^T and AV)."""
    from ..models.adapters import get_adapter

    adapter = get_adapter(model)
    heads = sum(w.num_heads for w in adapter.all_widths())
    return 2 * heads * adapter.head_dim * query_tokens * context_tokens


def count_macs(model: nn.Module, seq_len: int) -> dict:
    linear = linear_macs_per_token(model)
    return {
        "method": "analytic (Linear shapes + full LxL attention)",
        "prefill": linear * seq_len + attention_macs(model, seq_len, seq_len),
        "prefill_linear": linear * seq_len,
        "decode_step": linear + attention_macs(model, 1, seq_len),
        "seq_len": seq_len,
    }


class _PeakRSS:
    """Peak resident-set size above the level at entry, sampled by a background thread."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        gc.collect()
        self.base = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def delta(self) -> int:
        return self.peak - self.base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_argument(model: nn.Module) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier), as the model's forward names it."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def _prefill_then_decode(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, float, float]:
    """Seconds for the prefill forward and for ``new_tokens`` greedy decode steps on its cache, and the seconds
    the decode loop took before its final synchronisation (the CPU's time to issue the steps)."""
    device = ids.device
    cache_name = _cache_argument(model)
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    next_ids = out.logits[:, -1:].argmax(-1)
    _sync(device)
    prefill = time.perf_counter() - start
    past = getattr(out, cache_name)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=next_ids, use_cache=True, **{cache_name: past})
        past, next_ids = getattr(out, cache_name), out.logits[:, -1:].argmax(-1)
    issued = time.perf_counter() - start
    _sync(device)
    return prefill, time.perf_counter() - start, issued


class CompiledDecoder:
    """Greedy decode on a static KV cache with the step compiled (module docstring); one per batch size."""

    def __init__(self, model: nn.Module, batch: int, config: SpeedConfig, mode: str = "reduce-overhead"):
        from transformers import StaticCache

        self.model, self.prompt_len = model, config.prompt_len
        self.cache_name = _cache_argument(model)
        self.cache = StaticCache(config=model.config, max_cache_len=config.prompt_len + config.new_tokens)
        torch._dynamo.reset()  # compile afresh for each model and batch size (no stale guards or caches)
        mode = mode if config.compile_backend == "inductor" else None  # modes are inductor's
        self.step = torch.compile(self._step, mode=mode, backend=config.compile_backend, dynamic=False)
        self.batch = batch

    def _step(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, position_ids=positions, use_cache=True, **{self.cache_name: self.cache})
        return out.logits[:, -1:].argmax(-1)

    @torch.inference_mode()
    def run(self, ids: torch.Tensor, new_tokens: int) -> tuple[float, float, torch.Tensor]:
        """Seconds of the prefill and of ``new_tokens`` compiled steps, and the greedy tokens."""
        device = ids.device
        self.cache.reset()
        _sync(device)
        start = time.perf_counter()
        out = self.model(input_ids=ids, use_cache=True, **{self.cache_name: self.cache})
        next_ids = out.logits[:, -1:].argmax(-1)
        _sync(device)
        prefill = time.perf_counter() - start
        tokens = [next_ids]
        start = time.perf_counter()
        for step in range(new_tokens):
            positions = torch.full((ids.shape[0], 1), self.prompt_len + step, dtype=torch.long, device=device)
            next_ids = self.step(next_ids, positions).clone()  # a CUDA graph's output is overwritten next replay
            tokens.append(next_ids)
        _sync(device)
        return prefill, time.perf_counter() - start, torch.cat(tokens, dim=1)


@torch.inference_mode()
def _greedy_tokens(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The eager loop's greedy tokens (first from the prefill, then one per decode step but the last's)."""
    cache_name = _cache_argument(model)
    out = model(input_ids=ids, use_cache=True)
    tokens = [out.logits[:, -1:].argmax(-1)]
    for _ in range(new_tokens):
        out = model(input_ids=tokens[-1], use_cache=True, **{cache_name: getattr(out, cache_name)})
        tokens.append(out.logits[:, -1:].argmax(-1))
    return torch.cat(tokens, dim=1)


def measure_compiled(model: nn.Module, ids: torch.Tensor, config: SpeedConfig, mode: str) -> dict:
    """Prefill and compiled-decode rates for one batch (median of ``repeats`` after at least one warm-up,
    which compiles), with ``matches_eager``: the greedy tokens equal the eager loop's."""
    batch = ids.shape[0]
    try:
        decoder = CompiledDecoder(model, batch, config, mode)
        for _ in range(max(1, config.warmup)):
            _, _, tokens = decoder.run(ids, config.new_tokens)
        times = [decoder.run(ids, config.new_tokens)[:2] for _ in range(config.repeats)]
    except Exception as error:  # no compiler, unsupported backend or model: the eager numbers still stand
        text = str(error).strip().splitlines()
        return {"error": f"{type(error).__name__}: {text[0][:200] if text else ''}"}
    prefill = statistics.median(t[0] for t in times)
    decode = statistics.median(t[1] for t in times)
    return {
        "mode": mode, "backend": config.compile_backend, "cache": "static",
        "prefill_s": prefill, "decode_s": decode,
        "prefill_tokens_per_s": batch * config.prompt_len / prefill,
        "decode_tokens_per_s": batch * config.new_tokens / decode,
        "matches_eager": bool(torch.equal(tokens, _greedy_tokens(model, ids, config.new_tokens))),
    }


def measure(model: nn.Module, config: SpeedConfig) -> dict:
    """Throughput and peak memory of ``model`` (already on its device, in eval mode)."""
    config.validate()
    device = input_device(model)
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(config.seed)
    runs = {}
    peak_memory, memory_method = 0, ""
    for batch in config.batch_sizes:
        ids = torch.randint(0, vocab, (batch, config.prompt_len), generator=generator).to(device)
        for _ in range(config.warmup):
            _prefill_then_decode(model, ids, config.new_tokens)
        times = [_prefill_then_decode(model, ids, config.new_tokens) for _ in range(config.repeats)]
        if device.type == "cuda":  # one more, untimed run for the memory peak
            torch.cuda.reset_peak_memory_stats(device)
            _prefill_then_decode(model, ids, config.new_tokens)
            peak_memory = max(peak_memory, torch.cuda.max_memory_allocated(device))
            memory_method = "torch.cuda.max_memory_allocated (weights + activations + KV cache)"
        else:  # separate, untimed run: the sampling thread stays out of the timing
            with _PeakRSS() as rss:
                _prefill_then_decode(model, ids, config.new_tokens)
            peak_memory = max(peak_memory, rss.delta)
            memory_method = "CPU peak RSS above the pre-run level (activations + KV cache; weights excluded)"
        prefill = statistics.median(t[0] for t in times)
        decode = statistics.median(t[1] for t in times)
        runs[str(batch)] = {
            "prefill_s": prefill, "decode_s": decode,
            "prefill_tokens_per_s": batch * config.prompt_len / prefill,
            "decode_tokens_per_s": batch * config.new_tokens / decode,
        }
        if config.compile_modes:
            runs[str(batch)]["compiled"] = {mode: measure_compiled(model, ids, config, mode)
                                            for mode in config.compile_modes}
    return {"runs": runs, "peak_memory_bytes": peak_memory, "peak_memory_method": memory_method}


def bench_models(specs: list[tuple[str, str | None]], config: SpeedConfig, *, dtype: str, device: str) -> list[dict]:
    """Load each ``(label, model spec)`` in turn, measure it, free it; one dict per model."""
    from ..models.io import load_model

    config.validate()
    if device == "auto":
        raise HywiaError("bench-speed needs one device: --device cpu or cuda[:N]")
    results = []
    for label, spec in specs:
        loaded = load_model(spec, dtype=dtype, device=device)
        model = loaded.model
        print(f"measuring {label}: {loaded.source} on {device}")
        entry = {
            "label": label, "model": loaded.source, "device": device,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "parameters": count_parameters(model), "non_embedding_parameters": non_embedding_parameters(model),
            "weight_bytes": weight_bytes(model),
            "macs": count_macs(model, config.prompt_len),
            "compile_modes": list(config.compile_modes), "compile_backend": config.compile_backend,
            **measure(model, config),
        }
        results.append(entry)
        del loaded, model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return results


def _ratio(value: float, base: float | None) -> str:
    return "" if not base else f" ({value / base:.2f}x)"


def _compiled_cell(run: dict, other_run: dict | None, mode: str) -> str:
    compiled = run.get("compiled", {}).get(mode, {})
    if "error" in compiled:
        return "failed"
    if not compiled:
        return ""
    base = (other_run or {}).get("compiled", {}).get(mode, {}).get("decode_tokens_per_s")
    mark = "" if compiled.get("matches_eager", True) else " (tokens differ)"
    return f"{compiled['decode_tokens_per_s']:,.0f}" + _ratio(compiled["decode_tokens_per_s"], base) + mark


def speed_table(results: list[dict]) -> str:
    """Markdown table; the first entry is the baseline when there are several (ratios in brackets), with
    the ideal speed-up (non-embedding parameter ratio) of the others and, when measured, the compiled decode."""
    base = results[0] if len(results) > 1 else None
    batches = list(results[0]["runs"])
    modes = list(dict.fromkeys(mode for r in results for b in batches for mode in r["runs"][b].get("compiled", {})))
    header = ["model", "params (M)", "GMACs prefill", "weights (MB)", "peak mem (MB)"]
    header += ["ideal speed-up"] if base is not None else []
    header += [f"prefill tok/s b={b}" for b in batches] + [f"decode tok/s b={b}" for b in batches]
    header += [f"compiled decode tok/s b={b}" + (f" ({mode})" if len(modes) > 1 else "")
               for mode in modes for b in batches]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        other = base if base is not None and r is not base else None
        cells = [
            f"{r['label']}: {r['model'].split('/')[-1]}",
            f"{r['parameters'] / 1e6:.1f}" + _ratio(r["parameters"], other and other["parameters"]),
            f"{r['macs']['prefill'] / 1e9:.2f}" + _ratio(r["macs"]["prefill"], other and other["macs"]["prefill"]),
            f"{r['weight_bytes'] / 2**20:.0f}",
            f"{r['peak_memory_bytes'] / 2**20:.0f}",
        ]
        if base is not None:
            ours, theirs = r.get("non_embedding_parameters"), base.get("non_embedding_parameters")
            cells.append(f"{theirs / ours:.2f}x" if ours and theirs else "")
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            for b in batches:
                value = r["runs"][b][key]
                cells.append(f"{value:,.0f}" + _ratio(value, other and other["runs"][b][key]))
        cells += [_compiled_cell(r["runs"][b], other and other["runs"][b], mode) for mode in modes for b in batches]
        lines.append("| " + " | ".join(cells) + " |")
    first = results[0]
    lines += ["", f"MACs: {first['macs']['method']} at {first['macs']['seq_len']} tokens. "
              f"Peak memory: {first['peak_memory_method']}. Device {first['device']}, dtype {first['dtype']}."]
    if base is not None:
        lines.append("Ideal speed-up: the dense model's non-embedding parameters over the model's (a memory-bound "
                     "decode reads each of them once per step).")
    if modes:
        failures = dict.fromkeys(f"{mode}: {compiled['error']}" for r in results for b in batches
                                 for mode, compiled in r["runs"][b].get("compiled", {}).items() if "error" in compiled)
        lines.append(f"Compiled decode: static KV cache + torch.compile (mode {', '.join(modes)}, backend "
                     f"{first.get('compile_backend')}); eager: dynamic cache, plain forwards."
                     + (f" Failed: {'; '.join(failures)}" if failures else ""))
    return "\n".join(lines)
