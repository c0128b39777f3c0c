"""Analytic MAC count vs torch's FlopCounterMode, and the throughput / memory measurement."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hywia.evaluate.speed import SpeedConfig, count_macs, measure, speed_table


def test_linear_macs_match_flop_counter():
    from tiny import tiny_llama

    model = tiny_llama()
    ids = torch.randint(0, 256, (1, 16))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(input_ids=ids)
    # the products inside the Linear modules only: transformers versions differ in whether the rotary
    # embedding's angles come from a matmul (5.17: a bmm of inv_freq and the positions) or not
    linears = {f"{type(model).__name__}.{name}" for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear)}
    matmul_macs = sum(flops for name, counts in counter.get_flop_counts().items() if name in linears
                      for op, flops in counts.items() if "mm" in str(op)) // 2
    assert len(linears) == 2 * 7 + 1  # 2 layers x (q, k, v, o, gate, up, down) + lm_head
    macs = count_macs(model, 16)
    assert macs["prefill_linear"] == matmul_macs
    # attention: 2 layers x 4 heads x head_dim 16 x 16 x 16 x 2 (QK^T and AV)
    assert macs["prefill"] - macs["prefill_linear"] == 2 * 4 * 16 * 16 * 16 * 2


def test_measure_and_table():
    from tiny import tiny_llama

    model = tiny_llama()
    config = SpeedConfig(prompt_len=8, new_tokens=3, batch_sizes=[1, 2], repeats=2, warmup=1)
    result = measure(model, config)
    assert set(result["runs"]) == {"1", "2"}
    for batch, run in result["runs"].items():  # the rates are the tokens over the times reported with them
        assert run["prefill_tokens_per_s"] * run["prefill_s"] == pytest.approx(int(batch) * 8)
        assert run["decode_tokens_per_s"] * run["decode_s"] == pytest.approx(int(batch) * 3)
    entry = {"label": "dense", "model": "tiny", "device": "cpu", "dtype": "float32", "parameters": 1000,
             "weight_bytes": 4000, "macs": count_macs(model, 8), **result}
    table = speed_table([entry, {**entry, "label": "pruned", "parameters": 800}])
    assert "(0.80x)" in table and "decode tok/s b=2" in table


def test_measure_takes_the_median_of_the_timed_runs_only(monkeypatch):
    """A scripted clock: warm-up runs are slow and must not count; the median of the timed repeats does."""
    from tiny import tiny_llama

    import hywia.evaluate.speed as speed

    script = iter([(9.0, 90.0),  # warm-up: ignored
                   (0.4, 4.0), (0.1, 1.0), (0.2, 2.0),  # timed: medians 0.2 s / 2.0 s
                   (7.0, 70.0)])  # the untimed memory run
    monkeypatch.setattr(speed, "_prefill_then_decode", lambda model, ids, new_tokens: next(script))
    config = SpeedConfig(prompt_len=8, new_tokens=5, batch_sizes=[4], repeats=3, warmup=1)
    run = speed.measure(tiny_llama(), config)["runs"]["4"]
    assert (run["prefill_s"], run["decode_s"]) == (0.2, 2.0)
    assert run["prefill_tokens_per_s"] == pytest.approx(4 * 8 / 0.2)
    assert run["decode_tokens_per_s"] == pytest.approx(4 * 5 / 2.0)
