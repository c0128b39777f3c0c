"""Shared by the bench scripts: machine description and the BENCHMARKS.md section writer."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "BENCHMARKS.md"


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def machine() -> str:
    import torch

    from hywia.report import package_versions

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} logical CPUs (torch threads {torch.get_num_threads()})"]
    if torch.cuda.is_available():
        parts.append(", ".join(sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}))
                     + f" x{torch.cuda.device_count()}")
    versions = package_versions()
    parts.append(", ".join(f"{k} {v}" for k, v in versions.items()))
    return "; ".join(parts)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_section(key: str, title: str, body: str, path: Path = BENCHMARKS) -> Path:
    """Replace the section marked ``key`` in BENCHMARKS.md, or append it; other sections are kept."""
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{begin}\n## {title}\n\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.is_file() else "# Benchmarks\n\nWritten by the scripts in bench/; each section records its command.\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _: block, text, count=1) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
    return path


def record(kind: str, label: str, title: str, started: float, details: str, table: str, *, write: bool = True) -> None:
    """Print ``table`` and, unless ``write`` is False, store it in BENCHMARKS.md under ``kind:label`` with
    the command, machine, date, wall time since ``started`` and ``details``."""
    print(table)
    if not write:
        return
    body = (f"Command: `{command_line()}`\n\nMachine: {machine()}\n\nDate: {now()}; wall time "
            f"{time.time() - started:.0f} s; {details}\n\n{table}\n")
    print(f"section {kind}:{label} written to {write_section(f'{kind}:{label}', f'{title}: {label}', body)}")


def graph_replay_seconds(run, warmups: int = 2, replays: int = 20) -> float:
    """Median wall seconds of one replay of ``run()`` (GPU work, no host syncs) captured as a CUDA graph,
    after ``warmups`` eager calls on a side stream (what capture needs; Triton compiles and autotunes there)."""
    import statistics

    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmups):
            outputs = run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = run()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    del outputs, graph
    return statistics.median(times)
