"""The new families end to end through the command line: prune (with eval) -> save -> reload (eval and
load_model) with the logits the pruned model had; Baichuan's folder code runs only with --trust-remote-code,
and an unsupported architecture is refused from its config before any weight is read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_text, tiny_tokenizer
from tiny_families import REMOTE, build_family
from hywia import load_model, load_pruned
from hywia.cli import main

REMOTE_CODE = Path(__file__).parents[1] / "remote_baichuan"


def save_family(kind: str, folder: Path) -> Path:
    """A tiny model of ``kind`` as a model folder; Baichuan's with its modelling code and auto_map, as on the hub."""
    model = build_family(kind)
    if kind in REMOTE:
        model.config.auto_map = {"AutoConfig": f"configuration_baichuan.{type(model.config).__name__}",
                                 "AutoModelForCausalLM": f"modeling_baichuan.{type(model).__name__}"}
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    if kind in REMOTE:
        for name in ("configuration_baichuan.py", "modeling_baichuan.py"):
            shutil.copy(REMOTE_CODE / name, folder / name)
    return folder


def run(capsys, *argv):
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("hywia: error:")]
    return code, captured.out, "\n".join(errors)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(tiny_text())
    return path


@pytest.mark.parametrize("kind", ["phi3", "bloom", "baichuan-7b", "baichuan-13b", "vicuna"])
def test_prune_eval_save_reload(capsys, tmp_path, text_file, kind):
    dense = save_family(kind, tmp_path / "dense")
    remote = ["--trust-remote-code"] if kind in REMOTE else []
    out = tmp_path / "pruned"
    code, stdout, err = run(capsys, "prune", "--model", str(dense), "--ratio", "0.25", "--method", "wanda-sp",
                            "--calib", str(text_file), "--calib-samples", "8", "--calib-len", "16", "--out", str(out),
                            "--eval", "--eval-text", str(text_file), "--window", "16", "--quiet", *remote)
    assert code == 0, err
    assert "pruned perplexity" in stdout
    report = json.loads((out / "hywia_report.json").read_text())
    code, stdout, err = run(capsys, "eval", "--model", str(out), "--text", str(text_file), "--window", "16", "--quiet",
                            *remote)
    assert code == 0, err
    reloaded_ppl = json.loads(next(line for line in stdout.splitlines() if line.startswith("{")))["perplexity"]
    pruned_ppl = report["evaluation"]["pruned"][0]["perplexity"]
    assert reloaded_ppl == pytest.approx(pruned_ppl, rel=1e-5)
    loaded = load_model(str(out), dtype="float32", trust_remote_code=bool(remote))
    if report["reload_with"] == "hywia.load_pruned":
        direct = load_pruned(out, trust_remote_code=bool(remote))
    else:
        from transformers import AutoModelForCausalLM

        direct = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=bool(remote)).eval()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, direct(ids).logits, atol=0, rtol=0)


def test_baichuan_needs_trust_remote_code_before_any_weight_is_read(capsys, tmp_path):
    dense = save_family("baichuan-13b", tmp_path / "dense")
    for weights in dense.glob("*.safetensors"):
        weights.write_bytes(b"not read")  # would fail the header check if the architecture check passed
    code, _, err = run(capsys, "prune", "--model", str(dense), "--ratio", "0.2", "--method", "l2", "--quiet")
    assert code == 2 and "--trust-remote-code" in err and "Baichuan-13B" in err


def test_unsupported_architecture_is_refused_from_its_config(capsys, tmp_path):
    from transformers import GPT2Config

    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32).to_json_string())
    (folder / "model.safetensors").write_bytes(b"never read")
    code, _, err = run(capsys, "prune", "--model", str(folder), "--ratio", "0.2", "--method", "l2", "--quiet")
    assert code == 2 and "unsupported architecture" in err
    for family in ("Llama", "Vicuna", "Mistral", "Qwen2", "Gemma", "Phi-3", "Bloom", "Baichuan-7B"):
        assert family in err


def test_prune_help_lists_the_families(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for family in ("Llama 1/2/3", "Vicuna", "Mistral", "Qwen2", "Qwen3", "Gemma 1/2/3", "Phi-3", "Bloom",
                   "Baichuan-7B", "Baichuan-13B", "--trust-remote-code"):
        assert family in text


def test_recover_a_pruned_baichuan_with_trust_remote_code(capsys, tmp_path, text_file):
    dense = save_family("baichuan-13b", tmp_path / "dense")
    out, recovered = tmp_path / "pruned", tmp_path / "recovered"
    code, _, err = run(capsys, "prune", "--model", str(dense), "--ratio", "0.25", "--method", "l2", "--calib",
                       str(text_file), "--calib-samples", "4", "--calib-len", "16", "--out", str(out), "--quiet",
                       "--trust-remote-code")
    assert code == 0, err
    recover = ["recover", "--model", str(out), "--out", str(recovered), "--objective", "lm", "--data", str(text_file),
               "--max-steps", "1", "--cutoff", "16", "--batch-size", "2", "--micro-batch-size", "2", "--quiet"]
    code, _, err = run(capsys, *recover)
    assert code == 2 and "--trust-remote-code" in err  # the folder's code does not run without the flag
    code, _, err = run(capsys, *recover, "--trust-remote-code")
    assert code == 0, err
    code, stdout, err = run(capsys, "eval", "--model", str(recovered), "--text", str(text_file), "--window", "16",
                            "--quiet", "--trust-remote-code")
    assert code == 0 and '"perplexity"' in stdout, err
