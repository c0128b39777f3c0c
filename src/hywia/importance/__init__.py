"""Stage: importance. Takes the model, its group sets and calibration samples; gives one score per
removable unit (higher = kept first), from the method named in the one registry (``registry.METHODS``).

Pure formulas live in ``magnitude``, ``taylor`` and ``activation``; the modules imported below wire
them to the model and register their methods; ``hywia/`` is the HyWIA method itself.
"""

from .registry import METHODS, MethodSpec, ScoreResult, Scores, ScoringContext, check_method, needs_calibration, register_method, score
from . import weight_methods, forward_methods, hywia  # noqa: E402,F401  (each registers its methods)

__all__ = ["METHODS", "MethodSpec", "ScoreResult", "Scores", "ScoringContext", "check_method", "needs_calibration",
           "register_method", "score"]
