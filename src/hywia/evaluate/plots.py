"""Figures people would rather look at than read (matplotlib, optional dependency, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from ..errors import HywiaError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HywiaError("plots need matplotlib: pip install 'hywia[plot]'") from None
    return plt


def _by_layer(mapping: dict[str, float], kind: str) -> tuple[list[int], list[float]]:
    items = sorted((int(key.split(".")[0]), value) for key, value in mapping.items() if key.endswith(kind))
    return [layer for layer, _ in items], [value for _, value in items]


def plot_hywia(details: dict, path: str | Path) -> Path:
    """Per-layer blend weight of the fine score; units kept per layer by fine-only, coarse-only and the
    hybrid scores under the same allocation; and how many of the hybrid's kept units each single
    granularity would keep too (with uniform widths the counts agree and only this panel differs)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 4, figsize=(20, 4))
    for kind, marker in (("attn", "o"), ("mlp", "s")):
        layers, alpha = _by_layer(details["alpha_fine"], kind)
        axes[0].plot(layers, alpha, marker=marker, label=f"{kind}: α fine")
    axes[0].axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    axes[0].set(title="learned blend (α_fine; α_coarse = 1 − α_fine)", xlabel="layer", ylim=(0, 1))
    axes[0].legend()
    for axis, kind, unit in ((axes[1], "attn", "KV groups"), (axes[2], "mlp", "MLP channels")):
        for name, style in (("fine", "--"), ("coarse", ":"), ("hybrid", "-")):
            layers, kept = _by_layer(details["kept_per_layer"][name], kind)
            axis.plot(layers, kept, linestyle=style, marker=".", label=f"{name}-only" if name != "hybrid" else name)
        axis.set(title=f"{unit} kept per layer", xlabel="layer")
        axis.legend()
    for name, style in (("fine", "--"), ("coarse", ":")):
        for kind, marker in (("attn", "o"), ("mlp", "s")):
            layers, shared = _by_layer(details["shared_with_hybrid"][name], kind)
            axes[3].plot(layers, shared, linestyle=style, marker=marker, label=f"{name}-only, {kind}")
    axes[3].set(title="share of the hybrid's kept units also kept by", xlabel="layer", ylim=(0, 1.05))
    axes[3].legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
