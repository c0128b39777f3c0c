"""Zero-shot accuracy of one model on the paper's 7 tasks (lm-eval, 0-shot) and on the 3 validation-split
selection tasks, with the wall time of each run -> BENCHMARKS.md.

Timings printed: building the task objects (once per process), the 7-task run, the selection run, and with
--repeat a second 7-task run of the same model (what each further model of a sweep costs: tasks and
requests are cached). Target: the full 7-task run of a 135M model within 60 s on one H200.

Example (GPU, full sets):
    python bench/zeroshot.py --device cuda --label smol-h200
    python bench/zeroshot.py --model /path/pruned --device cuda --repeat 2 --compare-hflm
CPU check (both engines, same docs, identical acc / acc_norm required):
    python bench/zeroshot.py --limit 50 --compare-hflm --no-write
"""

from __future__ import annotations

import argparse
import time

from benchlib import record

from hywia.calibration.hub import decide_offline
from hywia.models import count_parameters
from hywia.models.io import load_model
from hywia.evaluate.zeroshot import (
    SELECTION_TASKS, evaluate_zeroshot, markdown_table, prepare_tasks, resolve_tasks,
)


def timed_run(loaded, tasks, args, engine: str, what: str):
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    start = time.perf_counter()
    result = evaluate_zeroshot(loaded.model, loaded.tokenizer, tasks, limit=args.limit, batch_size=batch_size,
                               mode=args.mode, engine=engine, max_batch_tokens=args.max_batch_tokens,
                               log=lambda line: print("  " + line) if line.startswith("zero-shot:") else None)
    seconds = time.perf_counter() - start
    print(f"TIME {what} ({engine}, {len(tasks)} tasks{', limit ' + str(args.limit) if args.limit else ''}): "
          f"{seconds:.1f} s", flush=True)
    return result, seconds


def compare(reference, ours) -> list[str]:
    """Tasks whose acc or acc_norm differ between two results (same docs)."""
    differ = []
    for task, score in reference.scores.items():
        other = ours.scores[task]
        if (score.acc, score.acc_norm, score.docs) != (other.acc, other.acc_norm, other.docs):
            differ.append(f"{task}: hflm acc {score.acc} / acc_norm {score.acc_norm} vs fast "
                          f"{other.acc} / {other.acc_norm}")
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="folder, .gguf, hub id (default: embedded SmolLM2-135M)")
    parser.add_argument("--tasks", default="paper")
    parser.add_argument("--no-selection", action="store_true", help="skip the validation-split selection tasks")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--engine", default="fast", choices=("fast", "hflm"))
    parser.add_argument("--batch-size", default="64", help="HFLM batch size (engine hflm)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="fast engine: tokens per forward pass")
    parser.add_argument("--repeat", type=int, default=1, help="run the 7 tasks this many times (warm timing)")
    parser.add_argument("--compare-hflm", action="store_true",
                        help="also run HFLM on the same docs and require identical acc / acc_norm per task")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--offline", dest="mode", action="store_const", const="offline")
    data.add_argument("--online", dest="mode", action="store_const", const="online")
    parser.set_defaults(mode="auto")
    parser.add_argument("--label", default=None, help="section key in BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    start = time.time()
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    print(f"TIME load model: {time.time() - start:.1f} s", flush=True)
    tasks = resolve_tasks(args.tasks)
    offline, why = decide_offline(args.mode)
    timings = []
    for name, task_list in (("paper", tasks), ("selection", [] if args.no_selection else list(SELECTION_TASKS))):
        if task_list:
            t0 = time.perf_counter()
            prepare_tasks(task_list, offline, why)
            timings.append(f"build {name} task objects (once per process): {time.perf_counter() - t0:.1f} s")
            print("TIME " + timings[-1], flush=True)

    result, seconds = timed_run(loaded, tasks, args, args.engine, "7-task run" if tasks else "run")
    timings.append(f"{len(tasks)}-task run ({args.engine}): {seconds:.1f} s")
    for i in range(1, args.repeat):
        _, again = timed_run(loaded, tasks, args, args.engine, f"7-task run, repeat {i + 1}")
        timings.append(f"{len(tasks)}-task run again (same process, cached tasks): {again:.1f} s")
    selection = None
    if not args.no_selection:
        selection, sel_seconds = timed_run(loaded, list(SELECTION_TASKS), args, args.engine, "selection run")
        timings.append(f"selection run ({len(SELECTION_TASKS)} validation tasks, {args.engine}): {sel_seconds:.1f} s")
    if args.compare_hflm:
        other = "hflm" if args.engine == "fast" else "fast"
        reference, ref_seconds = timed_run(loaded, tasks, args, other, "7-task run")
        timings.append(f"{len(tasks)}-task run ({other}): {ref_seconds:.1f} s")
        hflm, fast = (reference, result) if other == "hflm" else (result, reference)
        differ = compare(hflm, fast)
        verdict = "identical acc / acc_norm on every task" if not differ else "DIFFERENT: " + "; ".join(differ)
        timings.append(f"fast vs hflm: {verdict}")
        print("COMPARE " + verdict, flush=True)

    table = markdown_table(result.to_dict())
    if selection is not None:
        table += "\n\nSelection tasks (validation splits; for choosing settings only):\n\n"
        table += markdown_table(selection.to_dict())
    table += "\n\nWall times:\n" + "".join(f"\n- {line}" for line in timings)
    label = args.label or f"{loaded.source.rstrip('/').split('/')[-1]}-{args.device}" + (
        f"-limit{args.limit}" if args.limit else "")
    dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    details = (f"model {loaded.source} ({count_parameters(loaded.model):,} parameters, {dtype}); lm-eval "
               f"{result.lm_eval_version}, 0-shot, engine {args.engine} ({result.batch_size}), "
               f"{'first ' + str(args.limit) + ' documents per task' if args.limit else 'full sets'}; "
               f"{'; '.join(result.notes)}.")
    record("zeroshot", label, "Zero-shot", start, details, table, write=not args.no_write)


if __name__ == "__main__":
    main()
