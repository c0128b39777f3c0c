"""Stage: recover. Takes a pruned model (and, for distillation, the dense model it came from) and recovery
data; trains LoRA adapters (peft) on every prunable projection (LLM-Pruner's recipe, or the validated
``passages`` recipe on the offline passages), keeps those with
the lowest held-out validation loss, merges them, and gives a model of the same widths plus the
``recovery`` section of the report (recipe, data provenance, loss curves): ``recover()``,
``save_recovered()``."""

from .data import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, DEFAULT_OFFLINE_DATA, RecoveryData, build_data, resolve_source
from .output import save_recovered
from .train import OBJECTIVES, RECIPES, RecoverConfig, RecoverResult, recover, resolve_recipe, training_dtype

__all__ = ["ALPACA_PROMPT", "ALPACA_PROMPT_NO_INPUT", "DEFAULT_OFFLINE_DATA", "OBJECTIVES", "RECIPES", "RecoverConfig",
           "RecoverResult", "RecoveryData", "build_data", "recover", "resolve_recipe", "resolve_source", "save_recovered",
           "training_dtype"]
