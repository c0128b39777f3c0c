"""Fused members (one tensor holding q/k/v or gate/up): the index map by hand, and the importance
scores of a fused layout equal those computed from the same weights kept as separate tensors."""

import pytest
import torch

from tiny_families import build_family
from hywia.importance.weight_methods import score_group_set
from hywia.models.adapters import get_adapter
from hywia.models.groups import ATTN, MLP, Member


def test_index_map_by_hand():
    """Phi-3-like qkv, 4 query heads over 2 KV heads, head_dim 1: rows q0 q1 q2 q3 k0 k1 v0 v1.
    KV group 1 owns q2 q3 k1 v1 = rows 2, 3, 5, 7."""
    member = Member.fused("qkv", "weight", 0, [(0, 2), (4, 1), (6, 1)])
    assert member.unit_size == 4
    assert member.element_indices(torch.tensor([1])).tolist() == [2, 3, 5, 7]
    assert member.element_indices(torch.tensor([0, 1])).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # fused order kept
    assert member.unit_order(2).tolist() == [0, 1, 4, 6, 2, 3, 5, 7]
    tensor = torch.arange(8.0)[:, None].repeat(1, 3)
    assert member.unit_blocks(tensor, 2)[:, 0].tolist() == [0, 1, 4, 6, 2, 3, 5, 7]
    plain = Member("o", "weight", 1, 2)
    assert plain.element_indices(torch.tensor([0, 2])).tolist() == [0, 1, 4, 5]


def test_fused_l1_scores_equal_the_separate_tensors_computation():
    model = build_family("phi3")
    adapter = get_adapter(model)
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    hd, heads, kv = adapter.head_dim, 4, 2
    r = heads // kv
    qkv, o = attn.qkv_proj.weight.detach(), attn.o_proj.weight.detach()
    q, k, v = qkv[: heads * hd], qkv[heads * hd: (heads + kv) * hd], qkv[(heads + kv) * hd:]
    expected_attn = torch.stack([
        q[g * r * hd:(g + 1) * r * hd].abs().sum() + k[g * hd:(g + 1) * hd].abs().sum()
        + v[g * hd:(g + 1) * hd].abs().sum() + o[:, g * r * hd:(g + 1) * r * hd].abs().sum()
        for g in range(kv)])
    gate, up = mlp.gate_up_proj.weight.detach().chunk(2, dim=0)
    down = mlp.down_proj.weight.detach()
    expected_mlp = gate.abs().sum(1) + up.abs().sum(1) + down.abs().sum(0)
    sets = {gs.kind: gs for gs in adapter.group_sets(1)}
    torch.testing.assert_close(score_group_set("l1", model, sets[ATTN]), expected_attn.float())
    torch.testing.assert_close(score_group_set("l1", model, sets[MLP]), expected_mlp.float())
    assert sets[MLP].params_per_unit(model) == 3 * model.config.hidden_size


def llama_twin(fused):
    """The same network as ``fused`` (Phi-3 or Baichuan-7B) written as a Llama: qkv_proj / W_pack split
    into q/k/v, gate_up_proj into gate/up. Separate projections are the plain (unfused) layout, scored
    without any index map."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = fused.config
    twin = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=getattr(cfg, "num_key_value_heads", cfg.num_attention_heads),
        head_dim=cfg.hidden_size // cfg.num_attention_heads, rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})).eval()
    state = {}
    for name, tensor in fused.state_dict().items():
        if "W_pack" in name:
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3)):
                state[name.replace("W_pack", part)] = chunk
        elif "qkv_proj" in name:
            q_rows = cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
            kv_rows = (tensor.shape[0] - q_rows) // 2
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.split([q_rows, kv_rows, kv_rows])):
                state[name.replace("qkv_proj", part)] = chunk
        elif "gate_up_proj" in name:
            gate, up = tensor.chunk(2)
            state[name.replace("gate_up_proj", "gate_proj")], state[name.replace("gate_up_proj", "up_proj")] = gate, up
        else:
            state[name] = tensor
    twin.load_state_dict(state, strict=True)
    return twin


@pytest.mark.parametrize("kind", ["phi3", "baichuan-7b"])
@pytest.mark.parametrize("method", ["l2", "element1", "element2", "vector", "group", "wanda-sp", "flap", "hywia"])
def test_fused_layout_scores_equal_the_separate_layout(kind, method):
    """Every method scores fused tensors (Phi-3's qkv_proj / gate_up_proj, Baichuan's W_pack) exactly as it
    scores the same weights kept separate."""
    from hywia import PruneConfig, prune

    fused = build_family(kind)
    separate = llama_twin(fused)
    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, separate(ids).logits, atol=1e-5, rtol=1e-5)
    config = dict(ratio=0.2, method=method, progress=False, reconstruct=False,
                  method_options={"steps": 2} if method == "hywia" else {})
    reports = [prune(model, None, PruneConfig(**config), calibration_ids=ids).report for model in (fused, separate)]
    for a, b in zip(reports[0]["layers"], reports[1]["layers"]):
        for kind in (ATTN, MLP):
            torch.testing.assert_close(torch.tensor(a[kind]["scores"]), torch.tensor(b[kind]["scores"]),
                                       atol=1e-5, rtol=1e-4)
