"""Models that need BOS (Gemma) get it at the start of every calibration sample and perplexity window."""

import torch

from conftest import build_tiny, tiny_text, tiny_tokenizer
from hywia.calibration.texts import calibration_samples, sequence_bos
from hywia.evaluate.perplexity import perplexity


def test_only_gemma_family_asks_for_bos():
    tokenizer = tiny_tokenizer()
    assert sequence_bos(build_tiny("gemma3"), tokenizer) == tokenizer.bos_token_id == 1
    assert sequence_bos(build_tiny("gemma"), tokenizer) == 1
    assert sequence_bos(build_tiny("llama-gqa"), tokenizer) is None  # the literature's convention
    assert sequence_bos(build_tiny("gemma2"), None) is None


def test_calibration_samples_start_with_bos_and_keep_their_length():
    tokenizer = tiny_tokenizer()
    plain = calibration_samples(tokenizer, tiny_text(), 4, 16, seed=3)
    with_bos = calibration_samples(tokenizer, tiny_text(), 4, 16, seed=3, bos_id=1)
    assert plain.shape == with_bos.shape == (4, 16)
    assert (with_bos[:, 0] == 1).all() and not (plain[:, 0] == 1).all()


def test_perplexity_windows_with_bos_score_window_minus_one_text_tokens():
    model = build_tiny("gemma3")
    ids = torch.randint(3, 96, (100,), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, ids, window=16, batch_size=3, progress=False, bos_id=1)
    assert result.bos_per_window and result.windows == 100 // 15 and result.tokens_scored == (100 // 15) * 15
    plain = perplexity(model, ids, window=16, batch_size=3, progress=False)
    assert not plain.bos_per_window and plain.windows == 100 // 16
    by_hand = torch.cat([torch.ones(6, 1, dtype=torch.long), ids[:90].view(6, 15)], dim=1)
    with torch.no_grad():
        logits = model(by_hand).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), by_hand[:, 1:].reshape(-1))
    assert abs(result.mean_nll - nll.item()) < 1e-5
