"""Analytic MAC count vs torch's FlopCounterMode, and the throughput / memory measurement."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from hywia.evaluate.speed import SpeedConfig, count_macs, measure, speed_table


def test_linear_macs_match_flop_counter():
    from tiny import tiny_llama

    model = tiny_llama()
    ids = torch.randint(0, 256, (1, 16))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(input_ids=ids)
    matmul_macs = sum(v for k, v in counter.get_flop_counts()["Global"].items()
                      if "mm" in str(k)) // 2
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
    assert all(run["decode_tokens_per_s"] > 0 and run["prefill_tokens_per_s"] > 0 for run in result["runs"].values())
    entry = {"label": "dense", "model": "tiny", "device": "cpu", "dtype": "float32", "parameters": 1000,
             "weight_bytes": 4000, "macs": count_macs(model, 8), **result}
    table = speed_table([entry, {**entry, "label": "pruned", "parameters": 800}])
    assert "(0.80x)" in table and "decode tok/s b=2" in table
