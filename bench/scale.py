"""Time and peak GPU memory of every pruning stage at 7B-13B scale, on random bf16 weights.

For each shape (LLaMA-7B, LLaMA-13B, Llama-3-8B), a model with random weights is written to a scratch
folder once (not timed); then for each method and ratio: load it (``hywia.load_model``), prune it
(``hywia.prune`` on random calibration token ids) and save it (``hywia.save_pruned``), timing each stage
and reading ``torch.cuda.max_memory_allocated`` per stage. One markdown row per run on stdout.

Stages (``pipeline.py`` reports only the total time, so the stages are timed here by wrapping the functions
the pipeline calls, without changing it):

* load: ``load_model`` from the scratch folder onto the GPU
* gradients: ``collect_gradients`` (element1, hywia)
* fusion: HyWIA's learned fusion (``importance.hywia.method._learn``)
* scoring, other: the rest of the scoring (FLAP's and HyWIA's compensated coarse score: layer-wise passes)
* reconstruction: ``reconstruct`` (refit of o_proj / down_proj)
* surgery: ``apply_keep``
* save: ``save_pruned`` (safetensors shards, atomic rename)

Examples:
    python bench/scale.py                                   # all shapes, hywia/element1/flap, 20% and 50%
    python bench/scale.py --shapes llama-7b --methods element1 --ratios 0.2
    python bench/scale.py --tiny                            # a tiny shape on the CPU: checks the script
    python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 --peak-trace   # what is alive at the peak
    python bench/scale.py --device auto --shapes llama-13b --check-reload   # over all GPUs, outputs reloaded

``--device auto`` spreads each model over all visible GPUs (accelerate, as ``hywia prune --device auto``): the
memory cells are then the largest GPU's, and a line per GPU gives its weights and its peak over them.
``--check-reload`` reloads each output (``hywia.load_model``, same device) and prints the largest difference of
its logits on a fixed batch from the pruned model's before saving.

``--profile`` times the compensated coarse score's calls apart (inside "scoring, other") and prints the prune's
most expensive operators by GPU and by CPU time (``torch.profiler``) to stderr.

``--peak-trace`` records the CUDA allocator's history during the prune (``torch.cuda.memory``) and prints,
for the moment the prune's allocations peaked, the live tensors grouped by the line of hywia that
allocated them (``peak_allocations``): where the memory above the weights goes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048),
    "llama-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                      num_key_value_heads=40, vocab_size=32000, max_position_embeddings=2048),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, max_position_embeddings=256)
STAGES = ("load", "gradients", "fusion", "scoring, other", "reconstruction", "surgery", "save")


class StageClock:
    """Seconds and peak allocated CUDA memory per stage, per GPU; stages may nest (an outer stage's peak includes
    its inner stages', its time too: ``scoring`` minus ``gradients`` and ``fusion`` is ``scoring, other``).
    ``device_peaks[stage][i]`` is the peak on ``devices[i]``."""

    def __init__(self, devices: list[torch.device]):
        self.devices = [d for d in devices if d.type == "cuda"]
        self.cuda = bool(self.devices)
        self.seconds: dict[str, float] = {}
        self.device_peaks: dict[str, list[int]] = {}
        self.open: list[str] = []

    def _sync(self) -> None:
        for device in self.devices:
            torch.cuda.synchronize(device)

    def _record(self, stages, peaks: list[int]) -> None:
        for stage in stages:
            old = self.device_peaks.get(stage, [0] * len(peaks))
            self.device_peaks[stage] = [max(a, b) for a, b in zip(old, peaks)]

    @contextlib.contextmanager
    def stage(self, name: str):
        self._sync()
        if self.cuda:  # what the enclosing stages reached so far, then a fresh peak for this one
            self._record(self.open, [torch.cuda.max_memory_allocated(d) for d in self.devices])
            for device in self.devices:
                torch.cuda.reset_peak_memory_stats(device)
        self.open.append(name)
        started = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.open.pop()
            if self.cuda:
                self._record((name, *self.open), [torch.cuda.max_memory_allocated(d) for d in self.devices])

    def wrap(self, module, attribute: str, name: str):
        """Time every call of ``module.attribute`` as stage ``name`` (until ``restore``)."""
        original = getattr(module, attribute)

        def timed(*args, **kwargs):
            with self.stage(name):
                return original(*args, **kwargs)

        setattr(module, attribute, timed)
        return module, attribute, original


@contextlib.contextmanager
def timed_pipeline(clock: StageClock):
    """Wrap the functions the pipeline calls for each stage (module docstring)."""
    import hywia.importance.hywia.method as hywia_method
    import hywia.importance.weight_methods as weight_methods
    import hywia.pipeline as pipeline

    wrapped = [clock.wrap(weight_methods, "collect_gradients", "gradients"),
               clock.wrap(hywia_method, "_learn", "fusion"),
               clock.wrap(pipeline, "score", "scoring"),
               clock.wrap(pipeline, "reconstruct", "reconstruction"),
               clock.wrap(pipeline, "apply_keep", "surgery")]
    try:
        yield
    finally:
        for module, attribute, original in reversed(wrapped):
            setattr(module, attribute, original)


def placeholder_tokenizer(vocab_size: int):
    """A word-level tokenizer over ``vocab_size`` made-up words (calibration uses random token ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def write_random_model(shape: dict, folder: Path, dtype: torch.dtype, device: torch.device) -> None:
    """A Llama of ``shape`` with transformers' random initialisation (N(0, 0.02)), built on ``device``, saved."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape, tie_word_embeddings=False), dtype=dtype)
    model.save_pretrained(folder, max_shard_size="5GB")
    placeholder_tokenizer(shape["vocab_size"]).save_pretrained(folder)  # load_model wants one; unused
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _frame(frames: list[dict]) -> str:
    """The innermost frame inside hywia (else the innermost frame at all) of an allocation's stack."""
    inside = [f for f in frames if "/hywia/" in f.get("filename", "")] or frames[:1]
    if not inside:
        return "?"
    frame = inside[0]
    return f"{frame['filename'].split('/hywia/')[-1]}:{frame['line']} {frame['name']}"


def peak_allocations(trace: list[dict], top: int = 12) -> dict:
    """From one device's allocator trace (``torch.cuda.memory._snapshot()["device_traces"][i]``): the peak of
    the allocated bytes over their level at the start of the trace (frees of tensors allocated before it
    count too, so the surgery's replaced weights are not mistaken for growth) and the tensors allocated
    during the trace that were live at that peak, summed by allocating line, largest first."""
    sizes: dict[int, int] = {}
    current = peak = peak_index = 0
    for index, event in enumerate(trace):  # first pass: when the peak happened
        if event.get("action") == "alloc":
            sizes[event["addr"]] = event["size"]
            current += event["size"]
            if current > peak:
                peak, peak_index = current, index
        elif event.get("action") == "free_completed":  # also tensors from before the trace (e.g. replaced weights)
            current -= sizes.pop(event.get("addr"), event.get("size", 0))
    at_peak: dict[int, tuple[int, str]] = {}
    for event in trace[: peak_index + 1]:  # second pass: what was live then
        if event.get("action") == "alloc":
            at_peak[event["addr"]] = (event["size"], _frame(event.get("frames", [])))
        elif event.get("action") == "free_completed":
            at_peak.pop(event.get("addr"), None)
    by_line: dict[str, int] = {}
    for size, where in at_peak.values():
        by_line[where] = by_line.get(where, 0) + size
    ranked = sorted(by_line.items(), key=lambda item: -item[1])[:top]
    return {"peak_over_start_bytes": peak, "live_at_peak": [{"where": w, "bytes": b} for w, b in ranked]}


@contextlib.contextmanager
def profiled(clock: StageClock, enabled: bool):
    """With ``enabled``: the compensated coarse scores timed as their own stage, and a ``torch.profiler`` run
    whose top operators are printed to stderr at the end."""
    if not enabled:
        yield
        return
    import hywia.importance.hywia.method as hywia_method

    scores = hywia_method.COMPENSATED_SCORES
    originals = dict(scores)
    for name, function in originals.items():
        def timed(*args, _function=function, **kwargs):
            with clock.stage("coarse score"):
                return _function(*args, **kwargs)
        scores[name] = timed
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if clock.cuda else [])
    try:
        with torch.profiler.profile(activities=activities) as profiler:
            yield
    finally:
        scores.update(originals)
    table = profiler.key_averages()
    for key in (["self_cuda_time_total"] if clock.cuda else []) + ["self_cpu_time_total"]:
        print(table.table(sort_by=key, row_limit=20, max_name_column_width=60), file=sys.stderr, flush=True)
    print(f"  coarse score: {clock.seconds.get('coarse score', 0.0):.1f} s", file=sys.stderr, flush=True)


def clock_devices(device: str) -> list[torch.device]:
    """The GPUs a run may use: all visible ones for ``auto``, else the one named (none on the CPU)."""
    if device == "auto":
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device(device if ":" in device or device == "cpu" else f"{device}:0")]


def weight_bytes_per_device(model, devices: list[torch.device]) -> list[int]:
    """Parameter bytes on each of ``devices``; without devices (the CPU run) one entry: all of them."""
    sizes = [(p.device, p.numel() * p.element_size()) for p in model.parameters()]
    if not devices:
        return [sum(size for _, size in sizes)]
    return [sum(size for where, size in sizes if where == device) for device in devices]


@torch.no_grad()
def check_logits(model, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Logits on ``ids`` (on the CPU, float32) and their mean next-token loss, wherever the model sits."""
    from hywia.models.placement import input_device

    logits = model(input_ids=ids.to(input_device(model))).logits.float().cpu()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    return logits, float(loss)


def run_one(folder: Path, out: Path, method: str, ratio: float, samples: torch.Tensor, *, device: str, dtype: str,
            options: dict, peak_trace: bool = False, profile: bool = False, check_reload: bool = False) -> dict:
    from hywia import PruneConfig, load_model, prune, save_pruned
    from hywia.models.placement import describe_placement

    clock = StageClock(clock_devices(device))
    with clock.stage("load"):
        loaded = load_model(str(folder), dtype=dtype, device=device)
    weights = weight_bytes_per_device(loaded.model, clock.devices)
    config = PruneConfig(ratio=ratio, method=method, progress=False, num_samples=len(samples),
                         seq_len=samples.shape[1], method_options=options.get(method, {}))
    tracing = peak_trace and clock.cuda
    if tracing:
        torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    with timed_pipeline(clock), profiled(clock, profile):
        result = prune(loaded.model, None, config, calibration_ids=samples)
    fusion_step = (result.report.get("method_details") or {}).get("fusion_step")
    if fusion_step:
        print(f"  fusion step: {fusion_step}", file=sys.stderr, flush=True)
    trace = None
    if tracing:
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        trace = peak_allocations(snapshot["device_traces"][clock.devices[0].index or 0])
    reload = None
    if check_reload:  # a fixed batch through the pruned model in memory, then through its reloaded copy
        ids = torch.randint(0, loaded.model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1))
        before, loss = check_logits(loaded.model, ids)
        reload = {"placement": describe_placement(loaded.model), "loss": loss}
    with clock.stage("save"):
        save_pruned(loaded.model, loaded.tokenizer, out, result.report, overwrite=True)
    del loaded, result
    gc.collect()
    if clock.cuda:
        torch.cuda.empty_cache()
    if check_reload:
        started = time.perf_counter()
        reloaded = load_model(str(out), dtype=dtype, device=device).model
        reload["seconds"] = time.perf_counter() - started
        after, reload["reloaded_loss"] = check_logits(reloaded, ids)
        reload["reloaded_placement"] = describe_placement(reloaded)
        reload["max_abs_logit_diff"] = float((after - before).abs().max())
        del reloaded
        gc.collect()
        if clock.cuda:
            torch.cuda.empty_cache()
    seconds = dict(clock.seconds)
    seconds["scoring, other"] = seconds.pop("scoring", 0.0) - seconds.get("gradients", 0.0) - seconds.get("fusion", 0.0)
    seconds.pop("coarse score", None)  # inside "scoring, other"; printed by ``profiled``
    device_peaks = {stage: peaks for stage, peaks in clock.device_peaks.items() if stage != "coarse score"}
    device_peaks["scoring, other"] = device_peaks.pop("scoring", [0] * len(weights))
    return {"seconds": seconds, "device_peaks": device_peaks, "weight_bytes": weights,
            "devices": [str(d) for d in clock.devices], "trace": trace, "reload": reload}


def header() -> str:
    cells = ["shape", "method", "ratio"] + [f"{s} s (GB)" for s in STAGES] + ["total s", "peak GB", "peak / weights",
                                                                              "prune s", "prune peak / weights"]
    return "| " + " | ".join(cells) + " |\n|" + "---|" * len(cells)


def _worst_ratio(timing: dict, stages) -> float:
    """The largest per-GPU peak over that GPU's own weight bytes, over ``stages``."""
    ratios = [peak / weights for stage in stages for peak, weights in
              zip(timing["device_peaks"].get(stage, []), timing["weight_bytes"]) if weights]
    return max(ratios, default=0.0)


def row(shape: str, method: str, ratio: float, timing: dict, cuda: bool) -> str:
    """One markdown row; on several GPUs the memory cells are the largest GPU's (``device_lines`` has each)."""
    cells = [shape, method, f"{ratio:.0%}"]
    peaks = {stage: max(values) for stage, values in timing["device_peaks"].items()}
    for stage in STAGES:
        if stage not in timing["seconds"] or timing["seconds"][stage] < 0:
            cells.append("-")
            continue
        memory = f" ({peaks.get(stage, 0) / 2**30:.1f})" if cuda else ""
        cells.append(f"{timing['seconds'][stage]:.1f}{memory}")
    cells.append(f"{sum(v for v in timing['seconds'].values() if v > 0):.1f}")
    pruning = [stage for stage in STAGES if stage not in ("load", "save") and timing["seconds"].get(stage, -1) >= 0]
    cells.append(f"{max(peaks.values(), default=0) / 2**30:.1f}" if cuda else "-")
    cells.append(f"{_worst_ratio(timing, list(peaks)):.2f}x" if cuda else "-")
    cells.append(f"{sum(timing['seconds'][stage] for stage in pruning):.1f}")
    cells.append(f"{_worst_ratio(timing, pruning):.2f}x" if cuda else "-")
    return "| " + " | ".join(cells) + " |"


def device_lines(timing: dict) -> list[str]:
    """Per GPU (several GPUs only): its weights, its peak while pruning and over the whole run, and the ratios."""
    if len(timing["devices"]) < 2:
        return []
    pruning = [stage for stage in STAGES if stage not in ("load", "save") and timing["seconds"].get(stage, -1) >= 0]
    lines = []
    for i, (device, weights) in enumerate(zip(timing["devices"], timing["weight_bytes"])):
        prune_peak = max((timing["device_peaks"].get(stage, [0] * (i + 1))[i] for stage in pruning), default=0)
        run_peak = max(values[i] for values in timing["device_peaks"].values())
        ratio = f"{prune_peak / weights:.2f}x" if weights else "-"
        lines.append(f"  {device}: weights {weights / 2**30:.1f} GB, prune peak {prune_peak / 2**30:.1f} GB ({ratio}), "
                     f"run peak {run_peak / 2**30:.1f} GB")
    return lines


def reload_line(reload: dict | None) -> str:
    if not reload:
        return ""
    return (f"  reload ({reload['seconds']:.1f} s, {reload['reloaded_placement']}; pruned in memory: "
            f"{reload['placement']}): max |logit difference| {reload['max_abs_logit_diff']:.2e}, mean loss on "
            f"2 x 64 random ids {reload['loss']:.4f} -> {reload['reloaded_loss']:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=["hywia", "element1", "flap"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.5])
    parser.add_argument("--samples", type=int, default=128, help="calibration samples (default 128)")
    parser.add_argument("--seq-len", type=int, default=128, help="calibration length in tokens (default 128)")
    parser.add_argument("--hywia-steps", type=int, default=None, help="HyWIA's fusion steps (default: its own)")
    parser.add_argument("--hywia-graph", choices=("auto", "off"), default=None,
                        help="HyWIA's fusion step as CUDA graphs (auto, its default) or eager (off)")
    parser.add_argument("--scratch", default=None, help="folder for the random models (default: a temp folder)")
    parser.add_argument("--keep", default=None,
                        help="keep the dense and pruned folders here (DIR/SHAPE, DIR/SHAPE-METHOD-RATIO) for bench-speed")
    parser.add_argument("--tiny", action="store_true", help="one tiny shape on the CPU, 4 samples of 16 tokens")
    parser.add_argument("--peak-trace", action="store_true",
                        help="CUDA: print the tensors live at the prune's memory peak, by allocating line")
    parser.add_argument("--device", choices=("cuda", "auto"), default="cuda",
                        help="one GPU (cuda, default) or all visible GPUs through accelerate (auto); "
                             "per-GPU peaks are printed under each row")
    parser.add_argument("--check-reload", action="store_true",
                        help="reload each output (hywia.load_model, same device) and compare logits on a fixed batch")
    parser.add_argument("--profile", action="store_true",
                        help="time the coarse score apart and print the prune's top operators (stderr)")
    args = parser.parse_args(argv)

    if args.tiny:
        shapes, device, dtype = {"tiny": TINY}, "cpu", "float32"
        args.samples, args.seq_len = min(args.samples, 4), min(args.seq_len, 16)
        args.hywia_steps = 2 if args.hywia_steps is None else args.hywia_steps
    else:
        if not torch.cuda.is_available():
            print("bench/scale.py needs a CUDA GPU (or --tiny)", file=sys.stderr)
            return 2
        shapes, device, dtype = {name: SHAPES[name] for name in args.shapes}, args.device, "bfloat16"
    hywia = {"steps": args.hywia_steps} if args.hywia_steps is not None else {}
    hywia.update({"graph": args.hywia_graph} if args.hywia_graph is not None else {})
    options = {"hywia": hywia} if hywia else {}
    cuda = device != "cpu"
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="hywia-scale-"))
    print(header(), flush=True)
    try:
        for shape_name, shape in shapes.items():
            folder = Path(args.keep) / shape_name if args.keep else scratch / shape_name
            if not (folder / "config.json").is_file():
                write_random_model(shape, folder, getattr(torch, dtype), torch.device("cuda" if cuda else "cpu"))
            samples = torch.randint(0, shape["vocab_size"], (args.samples, args.seq_len),
                                    generator=torch.Generator().manual_seed(0))
            for method in args.methods:
                for ratio in args.ratios:
                    out = Path(args.keep) / f"{shape_name}-{method}-{ratio:g}" if args.keep else scratch / "out"
                    timing = run_one(folder, out, method, ratio, samples, device=device, dtype=dtype, options=options,
                                     peak_trace=args.peak_trace, profile=args.profile, check_reload=args.check_reload)
                    print(row(shape_name, method, ratio, timing, cuda), flush=True)
                    for line in device_lines(timing) + [reload_line(timing["reload"])]:
                        if line:
                            print(line, flush=True)
                    if timing["trace"]:
                        trace = timing["trace"]
                        print(f"  peak over the loaded model: {trace['peak_over_start_bytes'] / 2**30:.2f} GiB; live then:")
                        for item in trace["live_at_peak"]:
                            print(f"    {item['bytes'] / 2**30:7.3f} GiB  {item['where']}", flush=True)
            shutil.rmtree(scratch / "out", ignore_errors=True)
            if args.scratch is None and args.keep is None:  # 13B in bf16 is 26 GB: one shape on disk at a time
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{args.samples} calibration samples x {args.seq_len} tokens, {dtype} on {device}"
          + (f" ({torch.cuda.device_count() if device == 'auto' else 1} x {torch.cuda.get_device_name()})"
             if cuda else "")
          + "; seconds per stage (peak allocated GB during the stage; on several GPUs the largest GPU's); '-': the "
          "method has no such stage; 'prune': the stages between load and save; '/ weights': over the loaded "
          "model's weight bytes (on several GPUs: each GPU's peak over its own weights, the largest shown).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
