"""Stage: reconstruct. Takes the still dense-shaped model, the kept units per (layer, kind) and calibration
samples; refits every pruned output projection (o_proj, down_proj) on the pruned model's own inputs, layer
by layer, so that the kept columns absorb what the removed ones contributed (ridge regression toward the
kept weights, ``ridge``), and zeroes the removed columns. Gives per-projection facts for the report and,
where an intercept was fitted, bias terms to add after the surgery. Works with every importance method.
"""

from .layerwise import ProjectionFacts, Reconstruction, reconstruct, unit_columns
from .ridge import Compensation, check_damping, output_error, relative_errors, solve_compensation

__all__ = ["Compensation", "ProjectionFacts", "Reconstruction", "check_damping", "output_error", "reconstruct",
           "relative_errors", "solve_compensation", "unit_columns"]
