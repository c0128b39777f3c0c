"""Wanda-sp and FLAP on the embedded SmolLM2-135M: perplexity after pruning (BENCHMARKS.md, issue 5).

Same protocol as ``hywia prune --method M --allocation A --ratio R --eval``: LAMBADA calibration
(``--samples`` x 128 tokens, seed 42), perplexity on the first 16384 tokens of the BoolQ passages in
128-token windows, fp32 on CPU. The model is loaded and the texts tokenized once; each run prunes a
fresh copy. One JSON line per run.

    PYTHONPATH=src python bench/forward_baselines.py --samples 10 --runs wanda-sp:uniform:0.2 flap:global-score:0.5
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch

from hywia import PruneConfig, load_model, prune
from hywia.calibration.texts import DEFAULT_EVALUATION, calibration_samples, load_text, tokenize
from hywia.evaluate.perplexity import perplexity


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--dense", action="store_true", help="also measure the dense model")
    parser.add_argument("--runs", nargs="+", required=True, help="method:allocation:ratio")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    loaded = load_model(None)
    calib = calibration_samples(loaded.tokenizer, load_text(None, "lambada"), args.samples, args.seq_len, 42)
    eval_ids = tokenize(loaded.tokenizer, load_text(None, DEFAULT_EVALUATION), args.eval_tokens)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads"
    if args.dense:
        started = time.perf_counter()
        ppl = perplexity(loaded.model, eval_ids, window=128, batch_size=8, progress=False)
        print(json.dumps({"run": "dense", "ppl": ppl.perplexity, "eval_s": time.perf_counter() - started}), flush=True)
    for run in args.runs:
        method, allocation, ratio = run.split(":")
        model = copy.deepcopy(loaded.model)
        started = time.perf_counter()
        result = prune(model, loaded.tokenizer, PruneConfig(ratio=float(ratio), method=method, allocation=allocation,
                                                            progress=False), calibration_ids=calib)
        prune_s = time.perf_counter() - started
        started = time.perf_counter()
        ppl = perplexity(model, eval_ids, window=128, batch_size=8, progress=False)
        p = result.report["parameters"]
        print(json.dumps({
            "run": run, "samples": args.samples, "ppl": ppl.perplexity, "achieved_ratio": p["achieved_ratio"],
            "params_after": p["after"], "prune_s": prune_s, "eval_s": time.perf_counter() - started,
            "bias_parameters_added": result.report["method_details"].get("bias_parameters_added"),
            "widths": sorted({(w["after"]["num_kv_heads"], w["after"]["intermediate_size"]) for w in result.report["layers"]}),
            "windows": ppl.windows, "machine": machine,
        }), flush=True)
        del model


if __name__ == "__main__":
    main()
