"""The pruning report: what was removed, why (the scores), the resolved recipe, and versions."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import sys

import torch

from .models.adapters import LayerWidths
from .models.groups import ATTN, MLP

PACKAGES = ("hywia", "torch", "transformers", "safetensors", "accelerate", "peft", "gguf", "lm_eval")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _rounded(values: torch.Tensor) -> list[float]:
    return [float(f"{v:.6g}") for v in values.tolist()]


def build_report(
    *,
    config: dict,
    layers: list[int],
    widths_before: list[LayerWidths],
    widths_after: list[LayerWidths],
    keep: dict[tuple[int, str], torch.Tensor],
    scores: dict[tuple[int, str], torch.Tensor],
    params_before: int,
    params_after: int,
    method_details: dict,
    seconds: float,
    stock_config: bool,
) -> dict:
    per_layer = []
    for layer, (before, after) in enumerate(zip(widths_before, widths_after)):
        entry = {"layer": layer, "pruned": layer in layers, "before": before.to_dict(), "after": after.to_dict()}
        for kind in (ATTN, MLP):
            if (layer, kind) in keep:
                kept = keep[(layer, kind)].tolist()
                total = before.num_kv_heads if kind == ATTN else before.intermediate_size
                entry[kind] = {
                    "kept": kept,
                    "removed": sorted(set(range(total)) - set(kept)),
                    "scores": _rounded(scores[(layer, kind)]),
                }
        per_layer.append(entry)
    return {
        "format": "hywia-report/1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "recipe": config,
        "parameters": {
            "before": params_before,
            "after": params_after,
            "removed": params_before - params_after,
            "target_ratio": config["ratio"],
            "achieved_ratio": (params_before - params_after) / params_before,
        },
        "uniform_widths": len(set(widths_after)) == 1,
        "stock_config": stock_config,
        "reload_with": "AutoModelForCausalLM.from_pretrained" if stock_config else "hywia.load_pruned",
        "layers": per_layer,
        "method_details": method_details,
        "seconds": round(seconds, 2),
        "versions": package_versions(),
    }


def layer_table(report: dict) -> str:
    """A markdown table of widths per layer, before -> after."""
    rows = ["| layer | query heads | KV heads | MLP channels |", "|---:|---:|---:|---:|"]
    for entry in report["layers"]:
        b, a = entry["before"], entry["after"]
        mark = "" if entry["pruned"] else " (kept whole)"
        rows.append(
            f"| {entry['layer']}{mark} | {b['num_heads']} → {a['num_heads']} | {b['num_kv_heads']} → "
            f"{a['num_kv_heads']} | {b['intermediate_size']} → {a['intermediate_size']} |"
        )
    return "\n".join(rows)


def summary(report: dict) -> str:
    p = report["parameters"]
    return (
        f"parameters: {p['before']:,} -> {p['after']:,} (removed {p['removed']:,} = "
        f"{p['achieved_ratio']:.2%}, target {p['target_ratio']:.2%}); method {report['recipe']['method']}, "
        f"{report['recipe']['allocation']} allocation, {report['seconds']:.1f} s"
    )


def markdown(report: dict) -> str:
    return f"# hywia pruning report\n\n{summary(report)}\n\n{layer_table(report)}\n"
