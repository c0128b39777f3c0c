"""Where a model takes its input: with accelerate's device_map the layers may sit on several devices."""

from __future__ import annotations

import torch
from torch import nn


def input_device(model: nn.Module) -> torch.device:
    """The device of the input embeddings: token ids must go there, whatever the rest of the placement."""
    return model.get_input_embeddings().weight.device
