"""``hywia report``: evaluated models side by side, as a markdown table and a bar chart."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    report = sub.add_parser("report", help="several evaluated models side by side (table + bar chart)")
    report.add_argument("models", nargs="+", help="model folders holding eval/results.json")
    report.add_argument("--out", default=None, help="write the markdown table here (the chart goes next to it as .png)")
    report.add_argument("--plot", default=None, help="bar chart path (default: next to --out, else none)")


def run(args) -> int:
    from ..evaluate.compare import collect, markdown_comparison, plot_comparison

    rows = collect(args.models)
    table = markdown_comparison(rows)
    print(table)
    plot = args.plot or (str(Path(args.out).with_suffix(".png")) if args.out else None)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
        print(f"table written to {args.out}")
    if plot:
        plot_comparison(rows, plot)
        print(f"chart written to {plot}")
    return 0
