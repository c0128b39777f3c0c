"""LoRA recovery: it learns, merging is exact, the output reloads, resume is exact, errors are one line."""

import copy
import json

import pytest
import torch
import yaml

from conftest import build_tiny, tiny_text, tiny_tokenizer
from hywia import HywiaError, load_pruned
from hywia.cli import main
from hywia.pipeline import PruneConfig, prune
from hywia.recover import RecoverConfig, RecoveryData, build_data, recover, save_recovered, training_dtype
from hywia.recover.train import _lora_model


def text_data(n_train=10, n_val=2, length=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rows = [(torch.randint(3, 96, (length,), generator=generator), torch.ones(length, dtype=torch.long))
            for _ in range(n_train + n_val)]
    return RecoveryData(rows[:n_train], rows[n_train:], {"source": "test", "train_examples": n_train,
                                                          "train_tokens": n_train * length})


def quick(**overrides):
    settings = dict(objective="lm", batch_size=4, micro_batch_size=2, eval_every=1, progress=False, cutoff=16,
                    warmup_steps=0)
    settings.update(overrides)
    return RecoverConfig(**settings)


def mean_ce(model, rows):
    ids = torch.stack([r[0] for r in rows])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()


def pruned_tiny():
    """A tiny GQA Llama pruned in layers 1..2 only: per-layer widths, reloads with load_pruned."""
    model = build_tiny("llama-gqa")
    calib = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(1))
    result = prune(model, None, PruneConfig(ratio=0.2, method="l1", layers="1:3", reconstruct=False, progress=False),
                   calibration_ids=calib)
    result.report["model_source"] = "dense-test"
    return result.model, result.report


def test_one_step_lowers_the_training_loss():
    data = text_data()
    data = RecoveryData(data.train[:4], data.train[:4], data.provenance)  # validate on the batch itself
    model = build_tiny("llama-mha")
    before = mean_ce(model, data.train)
    result = recover(model, tiny_tokenizer(), quick(max_steps=1, lr=1e-2, dropout=0.0), data=data)
    assert result.recovery["steps_done"] == 1 and result.recovery["kept_adapters"] == "best"
    assert mean_ce(result.model, data.train) < before - 1e-3


def test_distillation_lowers_the_kl_to_the_teacher():
    data = text_data()
    teacher = build_tiny("llama-mha", seed=1)
    student = build_tiny("llama-mha", seed=0)
    result = recover(student, tiny_tokenizer(), quick(objective="distill", max_steps=3, lr=1e-2, dropout=0.0),
                     teacher=teacher, data=data)
    validation = result.curves["validation"]
    assert result.recovery["best_validation_loss"] < validation[0]["loss"]


def test_merged_logits_equal_base_plus_adapter():
    model = build_tiny("llama-gqa")
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    peft_model = _lora_model(model, quick(dropout=0.0))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
        peft_model.eval()
        unmerged = peft_model(input_ids=ids).logits
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
        merged = peft_model.merge_and_unload()(input_ids=ids).logits
    assert not torch.allclose(unmerged, plain, atol=1e-4)  # the adapters do change the output
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert base is not None


def test_recovered_model_reloads_with_identical_logits_and_has_a_card(tmp_path):
    model, report = pruned_tiny()
    result = recover(model, tiny_tokenizer(), quick(max_steps=2, lr=1e-2), data=text_data())
    out = save_recovered(result.model, tiny_tokenizer(), tmp_path / "rec", report, result.recovery)
    assert report["reload_with"] == "hywia.load_pruned"
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = result.model(input_ids=ids).logits
        reloaded = load_pruned(out)(input_ids=ids).logits
    torch.testing.assert_close(reloaded, expected, atol=1e-5, rtol=1e-5)
    saved = json.loads((out / "hywia_report.json").read_text())
    assert saved["recovery"]["steps_done"] == 2 and saved["layers"] == report["layers"]
    assert len(saved["recovery"]["curves"]["train"]) == 2
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and {"pruned", "hywia", "structured-pruning"} <= set(front["tags"])
    assert "## Recovery" in card and "hywia.load_pruned" in card
    assert (out / "recovery_loss.png").is_file()


class InterruptAt(list):
    """Training rows whose ``k``-th read raises KeyboardInterrupt (Ctrl-C in the middle of a step)."""

    def __init__(self, rows, k):
        super().__init__(rows)
        self.reads, self.k = 0, k

    def __getitem__(self, index):
        self.reads += 1
        if self.reads == self.k:
            raise KeyboardInterrupt
        return super().__getitem__(index)


def test_resume_continues_at_the_same_step_and_data_position(tmp_path):
    data = text_data(n_train=10)  # 2 steps of 4 per epoch: step 3 starts the second epoch
    config = dict(max_steps=4, lr=1e-2, save_every=1)
    straight = recover(build_tiny("llama-mha"), tiny_tokenizer(), quick(checkpoint_dir=str(tmp_path / "a"), **config),
                       data=copy.deepcopy(data))
    interrupted = RecoveryData(InterruptAt(data.train, k=4 * 2 + 2), data.validation, data.provenance)  # in step 3
    with pytest.raises(HywiaError, match="interrupted at step 2/4.*--resume"):
        recover(build_tiny("llama-mha"), tiny_tokenizer(), quick(checkpoint_dir=str(tmp_path / "b"), **config),
                data=interrupted)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert (state["step"], state["epoch"], state["position"]) == (2, 1, 0)  # the second epoch's start
    resumed = recover(build_tiny("llama-mha"), tiny_tokenizer(),
                      quick(checkpoint_dir=str(tmp_path / "b"), resume=True, **config), data=copy.deepcopy(data))
    assert resumed.recovery["steps_done"] == 4
    assert [e["loss"] for e in resumed.curves["train"]] == pytest.approx([e["loss"] for e in straight.curves["train"]])
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    final = json.loads((tmp_path / "b" / "state.json").read_text())
    assert (final["step"], final["epoch"], final["position"]) == (4, 1, 8)


def test_resume_with_other_settings_is_refused(tmp_path):
    data = text_data()
    recover(build_tiny("llama-mha"), tiny_tokenizer(), quick(max_steps=1, save_every=1, checkpoint_dir=str(tmp_path)),
            data=data)
    with pytest.raises(HywiaError, match="other settings \\(lr\\)"):
        recover(build_tiny("llama-mha"), tiny_tokenizer(),
                quick(max_steps=1, lr=5e-4, resume=True, checkpoint_dir=str(tmp_path)), data=data)


def test_alpaca_rows_mask_the_prompt(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": "w1 w2", "input": "w3" if i % 2 else "", "output": "w4 w5 w6"} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = build_data(tiny_tokenizer(), str(path), cutoff=256, val_fraction=0.3, max_val=10)
    assert data.provenance["format"] == "alpaca" and len(data.validation) == 1 and len(data.train) == 5
    ids, mask = data.train[0]
    assert mask.tolist()[-4:] == [1, 1, 1, 1] and mask.sum() == 4  # "w4 w5 w6" + EOS, nothing of the prompt
    assert ids[-1].item() == tiny_tokenizer().eos_token_id


@pytest.mark.parametrize("content, message", [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a",\n', "alpaca.jsonl:2 is not valid JSON"),
    ('{"instruction": "a", "output": 3}\n', "needs string fields 'instruction' and 'output'"),
    ('{"question": 1}\n', "expected Alpaca fields"),
])
def test_bad_data_file_gives_one_clear_line(tmp_path, content, message):
    path = tmp_path / "alpaca.jsonl"
    path.write_text(content)
    with pytest.raises(HywiaError, match=message) as error:
        build_data(tiny_tokenizer(), str(path), cutoff=64, val_fraction=0.1, max_val=10)
    assert "\n" not in str(error.value)


def test_fp16_training_is_refused():
    with pytest.raises(HywiaError, match="fp16 training is not supported"):
        training_dtype(build_tiny("llama-mha").half())


def test_cli_prune_then_recover_by_distillation(capsys, tmp_path, tiny_model_dir):
    text = tmp_path / "text.txt"
    text.write_text(tiny_text(words=3000))
    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_model_dir), "--ratio", "0.2", "--method", "l1", "--calib", str(text),
                 "--calib-samples", "4", "--calib-len", "16", "--out", str(pruned), "--quiet"]) == 0
    assert yaml.safe_load((pruned / "README.md").read_text().split("---")[1])["library_name"] == "transformers"
    capsys.readouterr()
    out = tmp_path / "rec"
    code = main(["recover", "--model", str(pruned), "--out", str(out), "--data", str(text), "--max-steps", "2",
                 "--batch-size", "4", "--micro-batch-size", "2", "--cutoff", "32", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "teacher: " + str(tiny_model_dir.resolve()) in captured.out
    report = json.loads((out / "hywia_report.json").read_text())
    assert report["recovery"]["objective"] == "distill" and report["recovery"]["teacher"] == str(tiny_model_dir.resolve())
    recipe = report["recovery"]["recipe"]  # a local .txt is not the offline passages: LLM-Pruner's, batch size given
    assert (recipe["recipe"], recipe["rank"], recipe["lr"], recipe["batch_size"]) == ("llm-pruner", 8, 1e-4, 4)
    assert report["recovery"]["data"]["validation_examples"] >= 1
    assert "## Evaluation" not in (out / "README.md").read_text()
    assert main(["eval", "--model", str(out), "--text", str(text), "--window", "16", "--quiet"]) == 0
    assert "## Evaluation" in (out / "README.md").read_text()  # the card lists the stored results
    capsys.readouterr()
    code = main(["recover", "--model", str(pruned), "--out", str(tmp_path / "bad"), "--data", str(tmp_path / "none.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("hywia: error:") == 1 and "neither a file" in err


def test_offline_default_text_is_disjoint_from_evaluation_and_validation_text():
    from hywia.calibration.texts import boolq_passages_text, lambada_text, recovery_passages

    passages = recovery_passages()
    assert len(passages) > 1000
    assert not set(passages) & set(boolq_passages_text().split("\n\n"))
    assert not set(passages) & set(lambada_text().split("\n\n"))


def test_prune_recover_needs_out(capsys):
    assert main(["prune", "--ratio", "0.2", "--recover"]) == 2
    assert "--recover needs --out" in capsys.readouterr().err


def test_card_copies_license_and_base_model_of_the_embedded_model():
    from hywia.models.card import base_model_facts, front_matter
    from hywia.models.io import default_model_path

    facts = base_model_facts(str(default_model_path()))
    assert facts == {"license": "apache-2.0", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    front = yaml.safe_load(front_matter({"model_source": str(default_model_path())}).strip("-\n"))
    assert front["license"] == "apache-2.0" and front["tags"] == ["pruned", "hywia", "structured-pruning"]


def test_micro_batch_is_the_largest_power_of_two_that_divides_the_batch_and_fits():
    from hywia.recover.train import micro_batch_for

    assert micro_batch_for(128, 10, 10**9, floor=1) == 128
    assert micro_batch_for(128, 10, 335, floor=1) == 32  # 64 * 10 > 335
    assert micro_batch_for(96, 1, 10**9, floor=1) == 32  # powers of two dividing 96
    assert micro_batch_for(128, 10**12, 1, floor=1) == 1
    assert micro_batch_for(128, 1, 4) == 4 and micro_batch_for(6, 1, 4) == 2  # the CPU's 4 when it divides


def test_default_micro_batch_on_the_cpu_is_llm_pruners():
    from hywia.recover.train import RecoverConfig, resolve_micro_batch

    model = torch.nn.Linear(2, 2)
    assert resolve_micro_batch(model, RecoverConfig(), torch.device("cpu")) == 4
    assert resolve_micro_batch(model, RecoverConfig(micro_batch_size=8), torch.device("cpu")) == 8


def test_recipe_follows_the_data_and_explicit_values_win():
    from hywia.recover import DEFAULT_OFFLINE_DATA, resolve_recipe

    name, values = resolve_recipe("auto", DEFAULT_OFFLINE_DATA, {"lr": None, "rank": None})
    assert name == "passages" and values == {"rank": 32, "alpha": 64, "lr": 1e-3, "batch_size": 32, "epochs": 4.0}
    name, values = resolve_recipe("auto", "alpaca-cleaned", {})
    assert name == "llm-pruner" and values == {"rank": 8, "alpha": 16, "lr": 1e-4, "batch_size": 128, "epochs": 2.0}
    name, values = resolve_recipe("passages", "my.jsonl", {"lr": 5e-4, "epochs": 1.0})
    assert name == "passages" and values["lr"] == 5e-4 and values["epochs"] == 1.0 and values["rank"] == 32
    with pytest.raises(HywiaError, match="--recipe"):
        resolve_recipe("fast", DEFAULT_OFFLINE_DATA, {})
