"""Tiny models built from config objects (no network), shared by the unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # helpers in tests/ (conftest, tiny.py)

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

# Tiny models: thread synchronisation costs more than the arithmetic (25x slower with 2 threads here).
torch.set_num_threads(1)

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=3, head_dim=8,
              max_position_embeddings=64, tie_word_embeddings=False)


def tiny_config(kind: str):
    if kind == "llama-mha":
        return LlamaConfig(num_attention_heads=4, num_key_value_heads=4, **COMMON)
    if kind == "llama-gqa":
        return LlamaConfig(num_attention_heads=6, num_key_value_heads=3,
                           **{**COMMON, "hidden_size": 48, "tie_word_embeddings": True})
    if kind == "mistral":
        return MistralConfig(num_attention_heads=4, num_key_value_heads=2, sliding_window=None, **COMMON)
    if kind == "qwen2":
        return Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **COMMON)
    if kind == "qwen3":  # per-head q_norm / k_norm
        return Qwen3Config(num_attention_heads=4, num_key_value_heads=2, **COMMON)
    if kind == "gemma":  # GeGLU, scaled embeddings, (1 + w) RMSNorm
        return GemmaConfig(num_attention_heads=4, num_key_value_heads=2, **COMMON)
    if kind == "gemma2":  # logit soft-capping, pre/post feed-forward norms, sliding-window layers
        return Gemma2Config(num_attention_heads=4, num_key_value_heads=2, sliding_window=16,
                            query_pre_attn_scalar=8, **COMMON)
    if kind == "gemma3":  # q_norm / k_norm, local/global attention pattern
        return Gemma3TextConfig(num_attention_heads=4, num_key_value_heads=2, sliding_window=16,
                                query_pre_attn_scalar=8, **COMMON)
    raise KeyError(kind)


TINY_KINDS = ("llama-mha", "llama-gqa", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")


def build_from_config(config, seed: int = 0, attn: str | None = None):
    """A random model of ``config`` with non-zero biases (they are zero at init: make them matter)."""
    torch.manual_seed(seed)
    if attn is not None:
        config._attn_implementation = attn
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    return model.eval()


def count_unique_storage(model) -> int:
    """Parameters counted independently of hywia's count_parameters: the numel of the state dict's tensors,
    each storage once (tied embeddings share one); rotary buffers are not persistent, so not counted."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            total += tensor.numel()
    return total


def build_tiny(kind: str, seed: int = 0):
    return build_from_config(tiny_config(kind), seed)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(VOCAB - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def tiny_text(words: int = 4000, seed: int = 0) -> str:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (words,), generator=generator).tolist()
    return " ".join(f"w{i - 3}" for i in ids)


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A tiny GQA Llama and its tokenizer saved as a model folder."""
    path = tmp_path / "dense"
    build_tiny("llama-gqa").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(params=TINY_KINDS)
def tiny_kind(request):
    return request.param


@pytest.fixture
def calib_ids():
    return torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def probe_ids():
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
