"""HyWIA (Liu et al., AAAI 2025): fine- and coarse-grained importance blended by learned attention.

``fusion``: the attention fusion and the soft masks (pure tensors and one nn.Module); ``gates``: soft
unit gates by forward pre-hooks; ``method``: the end-to-end fitting and the ``--method hywia`` scorer.
"""

from . import method  # noqa: F401  (registers --method hywia)
