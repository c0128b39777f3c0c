"""A tiny random Llama and a byte-level tokenizer, built in code: no hub, no files."""

from __future__ import annotations

import torch


def byte_tokenizer():
    """Byte-level BPE without merges: 256 byte tokens + <s>, </s>; encodes any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    vocab["<s>"], vocab["</s>"] = len(vocab), len(vocab) + 1
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def tiny_llama(vocab_size: int = 258, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=2048,
                    bos_token_id=256, eos_token_id=257, pad_token_id=257)
    settings.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()
