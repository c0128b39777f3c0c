"""Pick HyWIA's default recipe from a validation sweep and write the final table's variants.

    python bench/select_default.py sweep.jsonl --out final.json

Selection uses validation data only: held-out LAMBADA perplexity and the validation splits of ARC-e,
ARC-c and OBQA. Rule: for every ratio, rank the variants by mean held-out PPL (ascending) and by mean
validation accuracy (descending) over the seeds; the variant with the smallest sum of ranks over
ratios and both metrics wins (ties: lower summed rank of PPL). The final variants are the winner
("hywia"), the winner with reconstruction switched, the fixed 0.5/0.5, fine-only and coarse-only blends
of the winner's recipe (METHOD.md section 3.4), and every baseline with the winner's calibration, with
and without the winner's reconstruction.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

BASELINES = ["random", "l2", "element1", "element2", "vector", "group", "wanda-sp", "flap"]
WITH_RECONSTRUCTION = ["element1", "vector", "group", "wanda-sp", "flap"]  # cheap enough to add


def select(rows: list[dict]) -> tuple[str, dict]:
    by = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["variant"] != "dense":
            by[row["ratio"]][row["variant"]].append(row)
    ranks = defaultdict(lambda: [0, 0])
    for ratio, variants in by.items():
        ppl = sorted(variants, key=lambda v: statistics.fmean(r["val_ppl"] for r in variants[v]))
        acc = sorted(variants, key=lambda v: -statistics.fmean(r["val_mc_avg"] for r in variants[v]))
        for name in variants:
            ranks[name][0] += ppl.index(name) + acc.index(name)
            ranks[name][1] += ppl.index(name)
    winner = min(ranks, key=lambda v: tuple(ranks[v]))
    return winner, {name: ranks[name] for name in sorted(ranks, key=lambda v: tuple(ranks[v]))}


def final_variants(spec: dict) -> dict:
    calib = {k: spec[k] for k in ("calib", "calib_samples", "calib_len") if k in spec}
    damping = spec.get("damping", 0.1)
    rec = {"reconstruct": True, "damping": damping}
    variants = {"hywia": {**spec, "mc_full": True}}
    other = {**spec, "reconstruct": not spec.get("reconstruct", False), "damping": damping}
    variants["hywia, reconstruction " + ("on" if other["reconstruct"] else "off")] = other
    for label, alpha in (("hywia fixed 0.5/0.5", 0.5), ("hywia fine only", 1.0), ("hywia coarse only", 0.0)):
        variants[label] = {**spec, "options": {**spec.get("options", {}), "fixed_alpha": alpha}}
    for method in BASELINES:
        variants[method] = {"method": method, **calib}
        if method in WITH_RECONSTRUCTION:
            variants[method + " + rec"] = {"method": method, **calib, **rec}
    return variants


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--variants", default="bench/variants/sweep.json")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rows = [json.loads(line) for f in args.files for line in Path(f).read_text().splitlines() if line.strip()]
    winner, ranks = select(rows)
    spec = json.loads(Path(args.variants).read_text())[winner]
    print(f"selected on validation: {winner!r}; summed ranks (all, ppl): {ranks}")
    Path(args.out).write_text(json.dumps(final_variants(spec), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
