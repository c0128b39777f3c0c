"""Tiny models of every supported family, for the shared adapter suite (tests/models/test_adapter_suite.py).

Families transformers ships are built from their config classes (conftest's ``tiny_config`` for the Llama
family); Baichuan's remote code is re-created in ``remote_baichuan`` and built from its classes directly.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, BloomConfig, LlamaConfig, Phi3Config

from conftest import COMMON, VOCAB, build_from_config, tiny_config
from remote_baichuan.configuration_baichuan import BaiChuanConfig, BaichuanConfig
from remote_baichuan.modeling_baichuan import BaiChuanForCausalLM, BaichuanForCausalLM

LLAMA_FAMILY = ("llama-mha", "llama-gqa", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")
NEW_FAMILIES = ("vicuna", "phi3", "phi3-mha", "bloom", "baichuan-7b", "baichuan-13b")
FAMILIES = LLAMA_FAMILY + NEW_FAMILIES
REMOTE = {"baichuan-7b": BaiChuanForCausalLM, "baichuan-13b": BaichuanForCausalLM}
SMALL = dict(vocab_size=VOCAB, num_hidden_layers=3, tie_word_embeddings=False)


def family_config(kind: str):
    if kind == "vicuna":  # Vicuna-7B is a Llama (MHA, untied embeddings): a tiny Llama config of that shape
        return LlamaConfig(num_attention_heads=4, num_key_value_heads=4, **COMMON)
    if kind == "phi3":  # fused qkv_proj / gate_up_proj, GQA
        return Phi3Config(hidden_size=32, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, **SMALL)
    if kind == "phi3-mha":
        return Phi3Config(hidden_size=32, intermediate_size=40, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, **SMALL)
    if kind == "bloom":  # 6 heads: ALiBi slopes of a non-power-of-two head count (the interleaved extension)
        return BloomConfig(hidden_size=48, n_head=6, n_layer=3, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, tie_word_embeddings=False)
    if kind == "baichuan-7b":
        return BaiChuanConfig(hidden_size=32, intermediate_size=40, num_attention_heads=4, max_position_embeddings=64,
                              architectures=["BaiChuanForCausalLM"], **SMALL)
    if kind == "baichuan-13b":
        return BaichuanConfig(hidden_size=48, intermediate_size=40, num_attention_heads=6, model_max_length=64,
                              architectures=["BaichuanForCausalLM"], **SMALL)
    return tiny_config(kind)


def build_family(kind: str, seed: int = 0, attn: str | None = None):
    """A random tiny model of ``kind`` with non-zero biases (float32, eval mode)."""
    config = family_config(kind)
    if kind not in REMOTE:
        return build_from_config(config, seed, attn)
    torch.manual_seed(seed)
    model = REMOTE[kind](config)
    return model.eval()


__all__ = ["FAMILIES", "NEW_FAMILIES", "REMOTE", "AutoModelForCausalLM", "build_family", "family_config"]
