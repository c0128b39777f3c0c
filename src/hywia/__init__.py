"""hywia: structured pruning of LLMs with Hybrid-grained Weight Importance Assessment."""

from .errors import HywiaError
from .models import count_parameters
from .models.io import load_model, load_pruned, save_pruned
from .pipeline import PruneConfig, PruneResult, prune

__all__ = [
    "HywiaError",
    "PruneConfig",
    "PruneResult",
    "count_parameters",
    "load_model",
    "load_pruned",
    "prune",
    "save_pruned",
]
__version__ = "0.1.0"
