"""The command line: clear one-line errors, and outputs are never overwritten without --overwrite."""

import pytest

from conftest import tiny_text
from hywia.cli import main


@pytest.fixture
def calib_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(tiny_text())
    return path


def run(capsys, *argv):
    capsys.readouterr()  # drop what fixtures printed
    code = main(list(argv))
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("hywia: error:")]
    assert len(errors) <= 1
    return code, captured.out, "\n".join(errors)


def test_prune_save_and_eval(capsys, tmp_path, tiny_model_dir, calib_file):
    out = tmp_path / "pruned"
    code, stdout, _ = run(capsys, "prune", "--model", str(tiny_model_dir), "--ratio", "0.2", "--calib", str(calib_file),
                          "--calib-len", "16", "--out", str(out), "--eval", "--eval-text", str(calib_file),
                          "--window", "16", "--quiet")
    assert code == 0, stdout
    assert "pruned perplexity" in stdout and (out / "hywia_report.json").is_file()
    assert (out / "hywia_blend.png").stat().st_size > 10_000  # the default method, HyWIA, plots its blend
    code, stdout, _ = run(capsys, "eval", "--model", str(out), "--text", str(calib_file), "--window", "16", "--quiet")
    assert code == 0 and '"perplexity"' in stdout


def test_existing_output_is_untouched(capsys, tmp_path, tiny_model_dir, calib_file):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _, err = run(capsys, "prune", "--model", str(tiny_model_dir), "--ratio", "0.2", "--method", "l2",
                       "--out", str(out), "--quiet")
    assert code == 2 and "already exists; pass --overwrite" in err
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    code, _, err = run(capsys, "prune", "--model", str(tiny_model_dir), "--ratio", "0.2", "--method", "l2",
                       "--out", str(out), "--overwrite", "--quiet")
    assert code == 0 and (out / "config.json").is_file() and not (out / "precious.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".taken")]


def test_input_model_is_never_overwritten(capsys, tiny_model_dir):
    code, _, err = run(capsys, "prune", "--model", str(tiny_model_dir), "--ratio", "0.2", "--method", "l2",
                       "--out", str(tiny_model_dir), "--overwrite", "--quiet")
    assert code == 2 and "overlaps the input model" in err


def test_output_next_to_a_single_file_model_is_allowed_but_not_over_it(tmp_path):
    from hywia.errors import HywiaError
    from hywia.models.io import check_output_path

    model_file = tmp_path / "models" / "m.gguf"
    model_file.parent.mkdir()
    model_file.write_bytes(b"GGUF")
    assert check_output_path(tmp_path / "models" / "pruned", overwrite=False, protected=[model_file])
    for bad in (model_file, model_file.parent, tmp_path):
        with pytest.raises(HywiaError, match="overlaps the input model"):
            check_output_path(bad, overwrite=True, protected=[model_file])


@pytest.mark.parametrize("argv,message", [
    (["--ratio", "1.2"], "--ratio must be"),
    (["--ratio", "0"], "--ratio must be"),
    (["--ratio", "0.2", "--model", "./no/such/model"], "model not found"),
    (["--ratio", "0.2", "--calib", "/no/such/file.txt"], "neither a file"),
    (["--ratio", "0.2", "--layers", "2:1"], "--layers 2:1 selects no layer"),
    (["--ratio", "0.2", "--layers", "5:9"], "--layers 5:9 is outside the model: it has 3 layers"),
    (["--ratio", "0.2", "--round-to", "0"], "--round-to must be"),
    (["--ratio", "0.95", "--layers", "1:2"], "cannot remove 95.0%"),
])
def test_bad_input_gives_one_line_error(capsys, tiny_model_dir, argv, message):
    if "--model" not in argv:
        argv = [*argv, "--model", str(tiny_model_dir)]
    code, _, err = run(capsys, "prune", "--method", "element1", "--quiet", *argv)
    assert code == 2
    assert message in err, err
