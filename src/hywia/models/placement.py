"""Where a model takes its input: with accelerate's device_map the layers may sit on several devices; and which
attention kernels the pruning passes run on a GPU."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def input_device(model: nn.Module) -> torch.device:
    """The device of the input embeddings: token ids must go there, whatever the rest of the placement."""
    return model.get_input_embeddings().weight.device


def spread_over_gpus(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Place an already built model over all visible GPUs, as ``device_map="auto"`` does when loading.

    Needed for hywia outputs with per-layer widths: they are rebuilt from their config (no device_map
    at load time), then dispatched here with accelerate's balanced plan, decoder layers kept whole.
    """
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    max_memory = get_balanced_memory(model, no_split_module_classes=no_split, dtype=dtype)
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    model = dispatch_model(model, device_map=device_map)
    model.hf_device_map = device_map
    return model


def describe_placement(model: nn.Module) -> str:
    """Where the model is: ``"cpu"``, ``"cuda:0"``, or ``"spread over cuda:0 (17 modules), cuda:1 (16 modules)"``."""
    device_map = getattr(model, "hf_device_map", None)
    devices = sorted({str(d) for d in device_map.values()}) if device_map else []
    if len(devices) <= 1:
        return str(input_device(model))
    modules_per_device = {d: sum(1 for v in device_map.values() if str(v) == d) for d in devices}
    return "spread over " + ", ".join(f"{_device_name(d)} ({n} modules)" for d, n in modules_per_device.items())


def _device_name(device: str) -> str:
    return f"cuda:{device}" if device.isdigit() else device


def pruning_attention(device: torch.device | str):
    """Context for the pruning passes (gradients, fusion, layer-wise statistics, reconstruction): on CUDA, SDPA
    picks among the flash, memory-efficient and math kernels, not cuDNN's; elsewhere nothing changes.

    cuDNN's attention, torch's first choice on Hopper GPUs, builds an execution plan on the CPU for each new
    shape and direction (hundreds of milliseconds each, paid again in every fresh process) and costs CPU time
    per call; these passes run few calls, of a few shapes, once per process (torchtune #1652 reports the same
    first-call overhead on H100)."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
