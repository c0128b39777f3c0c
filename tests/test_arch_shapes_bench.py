"""bench/arch_shapes.py at its tiny shape on the CPU: it builds both shapes, prunes them and prints the table."""

import importlib.util
from pathlib import Path


def test_arch_shapes_tiny(capsys):
    path = Path(__file__).parents[1] / "bench" / "arch_shapes.py"
    spec = importlib.util.spec_from_file_location("arch_shapes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--tiny", "--device", "cpu", "--methods", "wanda-sp", "l2"]) == 0
    out = capsys.readouterr().out
    assert "| bloom-7b1 (tiny) |" in out and "| baichuan-7b (tiny) |" in out
    rows = [line for line in out.splitlines() if line.startswith("| b")]
    assert len(rows) == 4 and all(abs(float(row.split("|")[7]) - 0.2) < 0.01 for row in rows)
