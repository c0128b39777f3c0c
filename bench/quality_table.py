"""Mean +- spread over calibration seeds of the rows ``bench/quality.py`` wrote.

    python bench/quality_table.py results.jsonl [...] [--title T] [--command "how it was run"] [--write BENCHMARKS.md]

Spread = the sample standard deviation over seeds (n-1); "n" is the number of seeds. Rows are ordered
by (model, ratio) and then by the mean of the column named by --sort (default val_ppl: the selection
column; the reported columns never decide the order of the selection tables).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def load(paths):
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return rows


def mean_spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values, digits=2):
    mean, spread = mean_spread(values)
    return "" if mean is None else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def table(rows, sort="val_ppl") -> str:
    dense = {r["model"]: r for r in rows if r["variant"] == "dense"}
    groups = defaultdict(list)
    for row in rows:
        if row["variant"] != "dense":
            groups[(row["model"], row["ratio"], row["variant"])].append(row)
    lines = []
    for model in sorted({key[0] for key in groups}):
        d = dense.get(model, {})
        lines += [f"**{model}** — dense: BoolQ-passages PPL {d.get('ppl', '')}, held-out LAMBADA PPL {d.get('val_ppl', '')}"
                  + (f", validation MC avg {d['val_mc_avg']}" if "val_mc_avg" in d else "")
                  + (f", 7-task avg {d['mc_avg']}" + (f" (first {d['mc_limit']} docs/task)" if d.get('mc_limit') else " (full sets)")
                     if "mc_avg" in d else "") + ".", "",
                  "| ratio | variant | seeds | removed | held-out LAMBADA PPL | validation MC avg | BoolQ-passages PPL "
                  "| 7-task avg | 7-task docs/task | prune s |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        keys = sorted((k for k in groups if k[0] == model),
                      key=lambda k: (k[1], mean_spread([r.get(sort) for r in groups[k]])[0] or 0))
        for key in keys:
            g = groups[key]
            limits = {r.get("mc_limit") for r in g if "mc_avg" in r}
            docs = "full" if limits == {None} else ",".join(str(x) for x in sorted(x for x in limits if x)) if limits else ""
            lines.append(f"| {key[1]:.0%} | {key[2]} | {len(g)} | {statistics.fmean(r['achieved'] for r in g):.2%} | "
                         f"{cell([r['val_ppl'] for r in g])} | {cell([r.get('val_mc_avg') for r in g])} | "
                         f"{cell([r['ppl'] for r in g])} | {cell([r.get('mc_avg') for r in g])} | {docs} | "
                         f"{cell([r['seconds'] for r in g], 1)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--title", default="Quality over calibration seeds")
    parser.add_argument("--command", default=None, help="the command that produced the files")
    parser.add_argument("--sort", default="val_ppl")
    parser.add_argument("--write", default=None)
    args = parser.parse_args(argv)
    rows = load(args.files)
    machine = next((r.get("machine") for r in rows if r.get("machine")), "")
    text = f"### {args.title}\n\n" + (f"Command: `{args.command}`  \n" if args.command else "") + \
        f"Machine: {machine}\n\n" + table(rows, args.sort)
    print(text)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
