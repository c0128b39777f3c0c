"""Command line: ``hywia prune``, ``hywia recover``, ``hywia eval``, ``hywia report`` and ``hywia bench-speed``.

Each subcommand lives in its own module with ``add_parser(sub)`` and ``run(args)``; errors the user can
fix arrive as ``HywiaError`` and are printed as one line (exit code 2).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import HywiaError
from . import bench_speed, evaluate, prune, recover, report

SUBCOMMANDS = {"prune": prune, "recover": recover, "eval": evaluate, "report": report, "bench-speed": bench_speed}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hywia", description="Structured pruning of LLMs with HyWIA")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return SUBCOMMANDS[args.command].run(args)
    except HywiaError as error:
        print(f"hywia: error: {error}", file=sys.stderr)
        return 2
