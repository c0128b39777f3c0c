"""Baichuan-7B (RoPE) and Baichuan-13B (ALiBi) modules, tiny-model faithful: same names, same W_pack
split (``unflatten(-1, (3, self.hidden_size))``), same per-module ``num_heads`` / ``hidden_size`` /
``head_dim``; no KV cache."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_baichuan import BaiChuanConfig, BaichuanConfig


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(self.weight.dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rotary(head_dim, positions, dtype):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class MLP(nn.Module):
    def __init__(self, hidden_size, intermediate_size, hidden_act):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class RotaryEmbedding(nn.Module):
    """Baichuan-7B's rotary embedding (cos / sin computed per call here)."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x, seq_len):
        return rotary(self.dim, torch.arange(seq_len, device=x.device), x.dtype)


def _split_w_pack(module, hidden_states):
    bsz, q_len, _ = hidden_states.size()
    proj = module.W_pack(hidden_states)
    proj = proj.unflatten(-1, (3, module.hidden_size)).unsqueeze(0).transpose(0, -2).squeeze(-2)
    return [p.view(bsz, q_len, module.num_heads, module.head_dim).transpose(1, 2) for p in proj]


def _attend(module, query, key, value, bias):
    bsz, _, q_len, _ = query.shape
    attn_weights = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(module.head_dim)
    attn_weights = attn_weights + bias
    attn_weights = torch.max(attn_weights, torch.tensor(torch.finfo(attn_weights.dtype).min))
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2)
    return module.o_proj(attn_output.reshape(bsz, q_len, module.hidden_size))


class Attention(nn.Module):
    """Baichuan-7B: W_pack + RoPE."""

    def __init__(self, config):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.W_pack = nn.Linear(self.hidden_size, 3 * self.hidden_size, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=False)
        self.rotary_emb = RotaryEmbedding(self.head_dim)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, **kwargs):
        query, key, value = _split_w_pack(self, hidden_states)
        cos, sin = self.rotary_emb(value, seq_len=key.shape[-2])
        cos, sin = cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)
        query, key = query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin
        return _attend(self, query, key, value, attention_mask), None, None


class BaichuanAttention(nn.Module):
    """Baichuan-13B: W_pack, ALiBi in ``attention_mask`` ([n_head, L, L] or [batch, n_head, L, L])."""

    def __init__(self, config):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.W_pack = nn.Linear(self.hidden_size, 3 * self.hidden_size, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        query, key, value = _split_w_pack(self, hidden_states)
        q_len = query.shape[-2]
        bias = attention_mask[..., :q_len, :q_len]
        if bias.dim() == 3:
            bias = bias.unsqueeze(0)
        return _attend(self, query, key, value, bias), None, None


class DecoderLayer(nn.Module):
    def __init__(self, config, attention_class):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = attention_class(config)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _, _ = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask,
                                             position_ids=position_ids, past_key_value=past_key_value,
                                             output_attentions=output_attentions, use_cache=use_cache)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return (residual + hidden_states,)


def _get_interleave(n):
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + _get_interleave(2 * closest)[0::2][: n - closest]


def _gen_alibi_mask(n_head, max_pos):
    """Baichuan-13B's [n_head, max_pos, max_pos]: slope_h * key position, -inf above the diagonal."""
    slopes = torch.Tensor(_get_interleave(n_head))
    alibi = slopes.unsqueeze(1).unsqueeze(1) * torch.arange(max_pos).unsqueeze(0).unsqueeze(0).expand(n_head, -1, -1)
    alibi = alibi.view(n_head, 1, max_pos)
    future = torch.triu(torch.full([max_pos, max_pos], float("-inf")), 1)
    return future.unsqueeze(0) + alibi


class BaichuanPreTrainedModel(PreTrainedModel):
    config_class = BaichuanConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]


class Model(BaichuanPreTrainedModel):
    use_alibi = False

    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        attention = BaichuanAttention if self.use_alibi else Attention
        self.layers = nn.ModuleList([DecoderLayer(config, attention) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.n_head = config.num_attention_heads
        self.post_init()

    def _mask(self, hidden, attention_mask):
        bsz, length = hidden.shape[:2]
        if self.use_alibi:
            mask = _gen_alibi_mask(self.n_head, length).to(hidden)
            if attention_mask is not None and not bool(attention_mask.all()):
                padding = (1.0 - attention_mask[:, None, None, :].to(hidden)) * torch.finfo(hidden.dtype).min
                mask = mask.unsqueeze(0) + padding
            return mask
        causal = torch.triu(torch.full((length, length), torch.finfo(hidden.dtype).min, device=hidden.device), 1)
        mask = causal[None, None].expand(bsz, 1, length, length)
        if attention_mask is not None:
            mask = mask + (1.0 - attention_mask[:, None, None, :].to(hidden)) * torch.finfo(hidden.dtype).min
        return mask

    def forward(self, input_ids=None, attention_mask=None, use_cache=False, **kwargs):
        hidden_states = self.embed_tokens(input_ids)
        mask = self._mask(hidden_states, attention_mask)
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand(input_ids.shape[0], -1)
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(hidden_states, attention_mask=mask, position_ids=position_ids,
                                          past_key_value=None, output_attentions=False, use_cache=False)[0]
        return self.norm(hidden_states)


class AlibiModel(Model):
    use_alibi = True


class _CausalLM(BaichuanPreTrainedModel, GenerationMixin):  # the hub code defines prepare_inputs_for_generation
    model_class = Model
    _tied_weights_keys = {}

    def __init__(self, config):
        super().__init__(config)
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, labels=None, use_cache=False, **kwargs):
        logits = self.lm_head(self.model(input_ids=input_ids, attention_mask=attention_mask))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)


class BaiChuanForCausalLM(_CausalLM):
    """Baichuan-7B."""

    config_class = BaiChuanConfig
    model_class = Model


class BaichuanForCausalLM(_CausalLM):
    """Baichuan-13B."""

    model_class = AlibiModel
