"""hywia: structured pruning of LLMs with Hybrid-grained Weight Importance Assessment."""

from . import hywia_method  # noqa: F401  (registers --method hywia)
from .errors import HywiaError
from .io import load_model, load_pruned, save_pruned
from .pipeline import PruneConfig, PruneResult, count_parameters, prune
from . import forward_methods as _forward_methods  # noqa: F401  registers wanda-sp and flap

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
