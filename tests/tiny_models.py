"""Tiny random causal LMs built from config objects (no network) for the forward-only method tests."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=3, head_dim=8,
              max_position_embeddings=64, tie_word_embeddings=False)
KINDS = ("llama-mha", "llama-gqa", "qwen2", "mistral")


def tiny_config(kind: str):
    # hidden sizes divisible by every pruned head count: transformers 5 validates hidden % heads on load
    if kind == "llama-mha":
        return LlamaConfig(num_attention_heads=4, num_key_value_heads=4, **{**COMMON, "hidden_size": 48, "head_dim": 12})
    if kind == "llama-gqa":
        return LlamaConfig(num_attention_heads=6, num_key_value_heads=3, **{**COMMON, "hidden_size": 48, "tie_word_embeddings": True})
    if kind == "qwen2":  # q/k/v biases, no config flag for o_proj / down_proj biases
        return Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **COMMON)
    if kind == "mistral":
        return MistralConfig(num_attention_heads=4, num_key_value_heads=2, sliding_window=None, **COMMON)
    raise KeyError(kind)


def build_tiny(kind: str, seed: int = 0, attn: str = "eager"):
    torch.manual_seed(seed)
    config = tiny_config(kind)
    config._attn_implementation = attn
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # biases are zero at init: make them matter
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    return model.eval()


def token_ids(rows: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(VOCAB - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
