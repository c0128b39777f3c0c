"""Every bad input: exit code 2, exactly one line on stderr, nothing written; checked before any weight loads.

One test per row of the issue's table ("Every target honoured, every bad input one clear line, offline
means offline") plus the checks added with it.
"""

import json
import time

import pytest
import torch

from conftest import build_tiny, tiny_text, tiny_tokenizer
from hywia.cli import main


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def run_cli(capfd, *argv):
    capfd.readouterr()  # drop what fixtures printed
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(capfd, tmp_path, *argv, match):
    before = files_under(tmp_path)
    code, out, err = run_cli(capfd, *argv)
    assert code == 2, (out, err)
    assert len(err) == 1 and err[0].startswith("hywia: error:"), err
    assert match in err[0], err[0]
    assert files_under(tmp_path) == before  # no output folder, no debris
    return err[0]


def prune_args(model, tmp_path, *extra):
    return ["prune", "--model", model, "--method", "l2", "--no-reconstruct", "--quiet", "--out", tmp_path / "out",
            *extra]


# --- the allocation rows: --round-to 256 / 64 / 1000 on SmolLM2 (the exact numbers: tests/test_allocate.py)

def test_unreachable_round_to_warns_once_and_records_it(capfd, tmp_path, tiny_model_dir):
    """The tiny model's MLP has 40 channels: --round-to 32 leaves 32, so 20% lands at 24.1% at best."""
    code, out, err = run_cli(capfd, *prune_args(tiny_model_dir, tmp_path, "--ratio", "0.2", "--round-to", "32"))
    assert code == 0, err
    err = [line for line in err if line.startswith("hywia:")]  # transformers' progress bars aside
    assert len(err) == 1 and err[0].startswith("hywia: warning: removed 24.13%") and "steps of 32" in err[0], err
    report = json.loads((tmp_path / "out" / "hywia_report.json").read_text())
    assert report["parameters"]["allocation_note"] in err[0]
    assert report["parameters"]["achieved_ratio"] == pytest.approx(0.2413, abs=1e-4)


def test_unreachable_round_to_with_strict_is_refused(capfd, tmp_path, tiny_model_dir):
    assert_one_line_error(capfd, tmp_path, *prune_args(tiny_model_dir, tmp_path, "--ratio", "0.2", "--round-to", "32",
                                                       "--strict"), match="(--strict)")


def test_reachable_target_prints_no_warning(capfd, tmp_path, tiny_model_dir):
    code, _, err = run_cli(capfd, *prune_args(tiny_model_dir, tmp_path, "--ratio", "0.2", "--strict"))
    assert code == 0 and not [line for line in err if line.startswith("hywia:")], err


# --- inputs checked before work

def test_layer_range_beyond_the_model(capfd, tmp_path, tiny_model_dir):
    line = assert_one_line_error(capfd, tmp_path, *prune_args(tiny_model_dir, tmp_path, "--ratio", "0.2",
                                                              "--layers", "0:999"), match="--layers 0:999")
    assert "3 layers" in line


def test_corrupt_config_json(capfd, tmp_path, tiny_model_dir):
    (tiny_model_dir / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    assert_one_line_error(capfd, tmp_path, *prune_args(tiny_model_dir, tmp_path, "--ratio", "0.2"),
                          match="config.json is not valid JSON")


def test_config_without_model_type(capfd, tmp_path, tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    del config["model_type"]
    (tiny_model_dir / "config.json").write_text(json.dumps(config))
    assert_one_line_error(capfd, tmp_path, *prune_args(tiny_model_dir, tmp_path, "--ratio", "0.2"),
                          match="has no model_type")


@pytest.mark.parametrize("kind", ["gpt2", "opt"])
def test_unsupported_architecture_before_any_weight(capfd, tmp_path, kind):
    from transformers import GPT2Config, OPTConfig

    folder = tmp_path / kind
    folder.mkdir()
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4) if kind == "gpt2" else OPTConfig(num_hidden_layers=2,
                                                                                         hidden_size=32)
    config.to_json_file(folder / "config.json")
    # Not weights at all: reading them would fail with another message.
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    line = assert_one_line_error(capfd, tmp_path, *prune_args(folder, tmp_path, "--ratio", "0.2"),
                                 match="unsupported architecture")
    assert "llama" in line and "mistral" in line  # names the supported ones


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_names_the_file(capfd, tmp_path, tiny_model_dir, damage):
    weights = tiny_model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 100)
    assert_one_line_error(capfd, tmp_path, *prune_args(tiny_model_dir, tmp_path, "--ratio", "0.2"),
                          match=f"{weights} is not a valid safetensors file")


@pytest.mark.parametrize("content", [b"GGUF\x03\x00\x00\x00" + b"\x07" * 40, b"not a gguf at all"])
def test_corrupt_gguf_names_the_file(capfd, tmp_path, content):
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    assert_one_line_error(capfd, tmp_path, *prune_args(path, tmp_path, "--ratio", "0.2"), match=str(path))


def test_eval_checks_the_model_too(capfd, tmp_path, tiny_model_dir):
    (tiny_model_dir / "config.json").write_text("[1, 2")
    assert_one_line_error(capfd, tmp_path, "eval", "--model", tiny_model_dir, "--quiet", match="not valid JSON")


# --- offline means offline

@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "probe"])
def test_hub_name_offline_fails_at_once(capfd, tmp_path, monkeypatch, how):
    from hywia.calibration import hub

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    line = assert_one_line_error(capfd, tmp_path, *prune_args("no_such_model_xyz", tmp_path, "--ratio", "0.2"),
                                 match="'no_such_model_xyz' is not a local path")
    assert time.perf_counter() - started < 5
    assert ("HF_HUB_OFFLINE=1" if how == "HF_HUB_OFFLINE" else "hub not reachable") in line


# --- eval of a .gguf: results where the user says, or a line saying they were not saved

@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """Stand-in for a .gguf model (loading a real one takes a while): the tiny model, reported as a file."""
    import hywia.cli.evaluate as evaluate_cli
    import hywia.models.io as io

    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    loaded = io.LoadedModel(build_tiny("llama-gqa"), tiny_tokenizer(), str(path), path)
    monkeypatch.setattr(io, "load_model", lambda *a, **k: loaded)
    monkeypatch.setattr(evaluate_cli, "check_source", lambda spec, *rest, **options: (None, None))
    text = tmp_path / "text.txt"
    text.write_text(tiny_text(400))
    return path, text


def test_eval_of_a_gguf_saves_in_results_dir(capfd, tmp_path, fake_gguf):
    path, text = fake_gguf
    code, out, err = run_cli(capfd, "eval", "--model", path, "--text", text, "--window", "16", "--quiet",
                             "--results", tmp_path / "res")
    assert code == 0, err
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert saved["model"] == str(path) and f"results saved to {tmp_path / 'res'}" in out
    assert (tmp_path / "res" / "results.md").is_file()


def test_eval_of_a_gguf_without_results_dir_says_so(capfd, tmp_path, fake_gguf):
    path, text = fake_gguf
    code, out, _ = run_cli(capfd, "eval", "--model", path, "--text", text, "--window", "16", "--quiet")
    assert code == 0 and "results not saved" in out and "--results DIR" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "text.txt"]


def test_results_dir_that_is_a_file(capfd, tmp_path, fake_gguf):
    path, text = fake_gguf
    assert_one_line_error(capfd, tmp_path, "eval", "--model", path, "--text", text, "--results", text,
                          match="is not a folder")


def test_tiny_model_dir_is_loadable_after_checks(tiny_model_dir):
    """The checks accept what save_pretrained writes (sanity for the tests above)."""
    from hywia.models.checks import inspect_source

    info = inspect_source(tiny_model_dir)
    assert info.model_type == "llama" and info.num_layers == 3
    assert torch.is_tensor(torch.zeros(1))


def test_lm_eval_git_hash_is_silent_outside_a_repository(capfd, tmp_path, monkeypatch):
    """lm-eval runs ``git describe`` to log a commit; outside a repository git says "fatal: not a git
    repository" on stderr. Inside ``quiet_git_hash`` that call is silent, and lm-eval is restored after."""
    pytest.importorskip("lm_eval")
    import shutil

    from lm_eval.loggers import utils as logger_utils

    from hywia.evaluate.zeroshot import quiet_git_hash

    if shutil.which("git") is None:
        pytest.skip("no git on this machine")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    original = logger_utils.get_git_commit_hash
    capfd.readouterr()
    original()
    assert "not a git repository" in capfd.readouterr().err  # the noise this guards against
    with quiet_git_hash():
        logger_utils.get_git_commit_hash()
    assert capfd.readouterr().err == ""
    assert logger_utils.get_git_commit_hash is original


@pytest.mark.parametrize("method", ["element1", "element2", "vector", "group", "hywia"])
def test_gradient_methods_refuse_float16(capfd, tmp_path, tiny_model_dir, method):
    assert_one_line_error(capfd, tmp_path, "prune", "--model", tiny_model_dir, "--method", method, "--ratio", "0.2",
                          "--dtype", "float16", "--quiet", "--out", tmp_path / "out", match="float16")


def test_float16_refused_by_the_library_too():
    from hywia import PruneConfig, prune
    from hywia.errors import HywiaError

    model = build_tiny("llama-gqa").half()
    with pytest.raises(HywiaError, match="float16"):
        prune(model, None, PruneConfig(ratio=0.2, method="element1", reconstruct=False, progress=False),
              calibration_ids=torch.zeros(2, 8, dtype=torch.long))


def test_truncated_gguf_is_caught_from_its_header(tmp_path):
    """A GGUF file written by the gguf package, whole (accepted, layer count read) and cut short (refused)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from hywia.errors import HywiaError
    from hywia.models.checks import check_gguf

    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(5)
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(50)])
    writer.add_tensor("a", np.ones((64, 32), dtype=np.float32))
    writer.add_tensor("b", np.ones((16,), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert check_gguf(path) == 5
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(HywiaError, match=f"{path} is not a valid GGUF file \\(truncated"):
        check_gguf(path)


def test_bad_hywia_switch_and_round_to(capfd, tmp_path, tiny_model_dir):
    assert_one_line_error(capfd, tmp_path, "prune", "--model", tiny_model_dir, "--ratio", "0.2", "--quiet",
                          "--out", tmp_path / "out", "--hywia-intercept", "maybe", match="expected yes or no")
    assert_one_line_error(capfd, tmp_path, *prune_args(tiny_model_dir, tmp_path, "--ratio", "0.2", "--round-to", "wide"),
                          match="--round-to must be a positive integer or auto")
