"""Save a recovered model: the pruned model's report plus a ``recovery`` section, a loss-curve plot, the
model card, all through the pruning's atomic saver (``models.io.save_pruned``)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from ..models.io import save_pruned

LOSS_PLOT = "recovery_loss.png"


def plot_curves(curves: dict, path: Path, objective: str) -> bool:
    """Train and validation loss per step; False (and a note) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("hywia: note: no loss plot (matplotlib is not installed)", file=sys.stderr)
        return False
    figure, axis = plt.subplots(figsize=(6, 3.5))
    if curves.get("train"):
        axis.plot([e["step"] for e in curves["train"]], [e["loss"] for e in curves["train"]], label="train", alpha=0.7)
    if curves.get("validation"):
        axis.plot([e["step"] for e in curves["validation"]], [e["loss"] for e in curves["validation"]], "o-",
                  label="validation (held out)")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("KL to the dense model" if objective == "distill" else "LM loss (response tokens)")
    axis.set_title("LoRA recovery")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def save_recovered(model, tokenizer, out, pruned_report: dict, recovery: dict, *, overwrite: bool = False,
                   protected: list[Path] | None = None) -> Path:
    """Write the merged model with ``pruned_report`` + ``report["recovery"] = recovery`` and the plot."""
    report = copy.deepcopy(pruned_report)
    report["recovery"] = recovery

    def extras(folder: Path) -> None:
        plot_curves(recovery.get("curves", {}), folder / LOSS_PLOT, recovery.get("objective", ""))

    return save_pruned(model, tokenizer, out, report, overwrite=overwrite, protected=protected, write_extras=extras)
