"""Zero-shot accuracy of one model on the paper's 7 tasks (lm-eval, 0-shot) -> BENCHMARKS.md.

Example (GPU, full sets):
    python bench/zeroshot.py --model /path/pruned --device cuda --batch-size 64
CPU check:
    python bench/zeroshot.py --model /tmp/smol20 --limit 20 --label smol20-cpu-limit20
"""

from __future__ import annotations

import argparse
import time

from benchlib import record

from hywia.models.io import load_model
from hywia.models import count_parameters
from hywia.evaluate.zeroshot import evaluate_zeroshot, markdown_table, resolve_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="folder, .gguf, hub id (default: embedded SmolLM2-135M)")
    parser.add_argument("--tasks", default="paper")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", default="8")
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
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    result = evaluate_zeroshot(loaded.model, loaded.tokenizer, resolve_tasks(args.tasks), limit=args.limit,
                               batch_size=batch_size, mode=args.mode).to_dict()
    label = args.label or f"{loaded.source.rstrip('/').split('/')[-1]}-{args.device}" + (
        f"-limit{args.limit}" if args.limit else "")
    dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    details = (f"model {loaded.source} ({count_parameters(loaded.model):,} parameters, {dtype}); lm-eval "
               f"{result['lm_eval_version']}, 0-shot, "
               f"{'first ' + str(args.limit) + ' documents per task' if args.limit else 'full sets'}; "
               f"{'; '.join(result['notes'])}.")
    record("zeroshot", label, "Zero-shot", start, details, markdown_table(result), write=not args.no_write)

if __name__ == "__main__":
    main()
