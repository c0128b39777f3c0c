"""A save that fails or is killed (SIGTERM) at any point leaves no output folder and no temporary debris;
an interrupted prune leaves its input untouched."""

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import build_tiny, tiny_tokenizer
from hywia.cli import main
from hywia.models.io import save_pruned

TESTS = Path(__file__).resolve().parents[1]


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("stage", ["model", "tokenizer", "extras"])
def test_failure_mid_save_leaves_nothing(tmp_path, monkeypatch, stage):
    model, tokenizer = build_tiny("llama-gqa"), tiny_tokenizer()

    def fail(*args, **kwargs):
        raise Boom(stage)

    if stage == "model":  # after the first shard is written
        original = type(model).save_pretrained

        def half(self, folder, **kwargs):
            original(self, folder, **kwargs)
            raise Boom(stage)
        monkeypatch.setattr(type(model), "save_pretrained", half)
    elif stage == "tokenizer":
        monkeypatch.setattr(type(tokenizer), "save_pretrained", fail)
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(Boom):
        save_pruned(model, tokenizer, out, {"x": 1}, write_extras=fail if stage == "extras" else None)
    assert list(tmp_path.iterdir()) == []  # no output, no partial folder, not even the parents it made


def test_failed_overwrite_keeps_the_old_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous result")
    model, tokenizer = build_tiny("llama-gqa"), tiny_tokenizer()
    original_rename = Path.rename

    def rename(self, target):  # the second rename (staging -> out) fails after out was moved aside
        if self.name.startswith(".out.partial-"):
            raise Boom("rename")
        return original_rename(self, target)
    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(Boom):
        save_pruned(model, tokenizer, out, {"x": 1}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "old.txt").read_text() == "previous result"


SAVER = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import build_tiny, tiny_tokenizer
from hywia.models.io import save_pruned
from pathlib import Path

def stall(folder):
    Path({ready!r}).write_text(str(sorted(p.name for p in folder.iterdir())))
    time.sleep(60)

save_pruned(build_tiny("llama-gqa"), tiny_tokenizer(), {out!r}, {{"x": 1}}, write_extras=stall)
"""


def test_sigterm_mid_save_leaves_nothing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    ready = tmp_path / "ready"
    script = SAVER.format(tests=str(TESTS), ready=str(ready), out=str(work / "out"))
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not ready.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert ready.exists(), process.stderr.read().decode()[-2000:]
        assert "model.safetensors" in ready.read_text()  # the weights were written when the signal came
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
    assert list(work.iterdir()) == []


def test_interrupted_prune_leaves_the_input_untouched(tmp_path, tiny_model_dir, monkeypatch, capsys):
    before = tree(tiny_model_dir)
    tokenizer_class = type(tiny_tokenizer())

    def fail(*args, **kwargs):
        raise Boom("tokenizer")
    monkeypatch.setattr(tokenizer_class, "save_pretrained", fail)
    with pytest.raises(Boom):
        main(["prune", "--model", str(tiny_model_dir), "--method", "l2", "--ratio", "0.2", "--quiet",
              "--out", str(tmp_path / "out")])
    assert tree(tiny_model_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]
