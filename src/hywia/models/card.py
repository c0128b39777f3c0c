"""The model card (README.md) of every hywia output folder: YAML front matter for the hub, then what was
removed and how, recovery if any, evaluation results stored next to the model if any, and how to reload.

Everything comes from the report (``hywia_report.json``) and ``eval/results.json``; the base model's
license is copied when known (the report's ``license``, the front matter of a local source folder's
README, or a GGUF file's ``general.license``), otherwise left out.
"""

from __future__ import annotations

import json
from pathlib import Path

CARD_NAME = "README.md"
TAGS = ("pruned", "hywia", "structured-pruning")
# the embedded default model (models.io.DEFAULT_GGUF) is a GGUF copy of this hub model
KNOWN_GGUF_BASES = {"SmolLM2-135M-Instruct.Q4_1.gguf": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def _front_matter_of(readme: Path) -> dict:
    """``key: value`` pairs of a README's YAML front matter (flat scalars only; lists are skipped)."""
    if not readme.is_file():
        return {}
    lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    found = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        if ":" in line and not line.startswith((" ", "-")):
            key, value = line.split(":", 1)
            if value.strip():
                found[key.strip()] = value.strip().strip("'\"")
    return found


def _gguf_license(path: Path) -> str | None:
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("general.license")
        return str(field.contents()) if field is not None else None
    except Exception:  # no gguf package, unreadable file: the license is simply unknown
        return None


def base_model_facts(source: str | None) -> dict:
    """``base_model`` (a hub id when known) and ``license`` of the model that was pruned."""
    if not source:
        return {}
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        facts = {"license": _gguf_license(path)}
        if path.name in KNOWN_GGUF_BASES:
            facts["base_model"] = KNOWN_GGUF_BASES[path.name]
        return {k: v for k, v in facts.items() if v}
    if path.is_dir():
        front = _front_matter_of(path / CARD_NAME)
        facts = {k: front[k] for k in ("license", "base_model") if k in front}
        config = path / "config.json"
        if "base_model" not in facts and config.is_file():
            name = json.loads(config.read_text()).get("_name_or_path")
            if name and not Path(name).is_absolute() and "/" in name:
                facts["base_model"] = name
        return facts
    return {"base_model": source} if "/" in source and not source.startswith((".", "/", "~")) else {}


def _yaml_scalar(value: str) -> str:
    return json.dumps(str(value))  # a JSON string is a valid YAML double-quoted scalar


def front_matter(report: dict) -> str:
    facts = base_model_facts(report.get("model_source"))
    license_ = report.get("license") or facts.get("license")
    lines = ["---"]
    if facts.get("base_model"):
        lines.append(f"base_model: {_yaml_scalar(facts['base_model'])}")
    lines.append("library_name: transformers")
    if license_:
        lines.append(f"license: {_yaml_scalar(license_)}")
    lines.append("tags:")
    lines += [f"- {tag}" for tag in TAGS]
    lines.append("---")
    return "\n".join(lines)


def _widths_summary(report: dict) -> list[str]:
    layers = [e for e in report.get("layers", []) if e.get("pruned")]
    if not layers:
        return []
    before, after = layers[0]["before"], layers[0]["after"]
    kinds = {tuple(sorted(e["after"].items())) for e in layers}
    lines = [f"- pruned layers: {layers[0]['layer']}..{layers[-1]['layer']} ({len(layers)} of {len(report['layers'])})"]
    if len(kinds) == 1:
        lines.append(f"- every pruned layer: query heads {before['num_heads']} → {after['num_heads']}, KV heads "
                     f"{before['num_kv_heads']} → {after['num_kv_heads']}, MLP channels "
                     f"{before['intermediate_size']} → {after['intermediate_size']}")
    else:
        mlp = [e["after"]["intermediate_size"] for e in layers]
        kv = [e["after"]["num_kv_heads"] for e in layers]
        lines.append(f"- per-layer widths: MLP channels {min(mlp)}..{max(mlp)} of {before['intermediate_size']}, "
                     f"KV heads {min(kv)}..{max(kv)} of {before['num_kv_heads']} (table in hywia_report.md)")
    return lines


def _evaluation(folder: Path, report: dict) -> list[str]:
    lines = []
    for entry in (report.get("evaluation") or {}).get("pruned", []):
        lines.append(f"- perplexity {entry['perplexity']:.2f} on {entry['text']} ({entry['window']}-token windows; at pruning time)")
    results = folder / "eval" / "results.json"
    if results.is_file():
        try:
            stored = json.loads(results.read_text())
        except json.JSONDecodeError:
            stored = {}
        for name, entry in (stored.get("perplexity") or {}).items():
            if isinstance(entry, dict) and "perplexity" in entry:
                lines.append(f"- perplexity {entry['perplexity']:.2f} on {name} (eval/results.json)")
        zeroshot = stored.get("zeroshot") or {}
        if zeroshot.get("average") is not None:
            lines.append(f"- 7-task zero-shot average {100 * zeroshot['average']:.2f} (eval/results.json)")
    return lines


def model_card(folder: str | Path, report: dict) -> str:
    folder = Path(folder)
    recipe = report.get("recipe") or {}
    params = report.get("parameters") or {}
    source = report.get("model_source", "the base model")
    parts = [front_matter(report), "", "# Structurally pruned model (hywia)", ""]
    if params:
        parts.append(f"Made with hywia (structured pruning) from `{source}`: whole attention heads (KV groups with "
                     f"their query heads) and MLP channels removed, so this is a smaller dense model, not a masked one.")
        parts += ["", "## What was removed and how", "",
                  f"- method: `{recipe.get('method')}`, allocation `{recipe.get('allocation')}`, reconstruction "
                  f"{'on' if recipe.get('reconstruct') else 'off'}",
                  f"- parameters: {params['before']:,} → {params['after']:,} ({params['achieved_ratio']:.2%} removed; "
                  f"target {params['target_ratio']:.2%})",
                  f"- calibration: {recipe.get('calibration') or 'mixed (default)'}, {recipe.get('num_samples')} × "
                  f"{recipe.get('seq_len')} tokens, seed {recipe.get('seed')}"]
        parts += _widths_summary(report)
    recovery = report.get("recovery")
    if recovery:
        data = recovery.get("data", {})
        r = recovery.get("recipe", {})
        parts += ["", "## Recovery", "",
                  f"- recipe `{r.get('recipe', 'llm-pruner')}`: LoRA r={r.get('rank')}, alpha={r.get('alpha')}, dropout "
                  f"{r.get('dropout')}, lr {r.get('lr')}, {r.get('batch_size')} examples per update, {r.get('epochs')} "
                  f"epochs on "
                  f"{', '.join(r.get('targets', []))}; merged into the weights",
                  f"- objective: {recovery.get('objective')}"
                  + (f" (teacher `{recovery['teacher']}`)" if recovery.get("teacher") else ""),
                  f"- data: {data.get('source')} ({data.get('train_examples')} examples of up to {data.get('cutoff')} "
                  f"tokens, {data.get('train_tokens'):,} tokens; {recovery.get('tokens_trained_this_run', 0):,} "
                  f"trained on); validation: {data.get('validation_split')}",
                  f"- {recovery.get('steps_done')} steps; validation loss {recovery.get('validation_loss_before'):.4f} → "
                  f"{recovery.get('best_validation_loss'):.4f} (adapters kept: {recovery.get('kept_adapters')}, step "
                  f"{recovery.get('best_step')})"]
    evaluation = _evaluation(folder, report)
    if evaluation:
        parts += ["", "## Evaluation", ""] + evaluation
    reload_with = report.get("reload_with", "AutoModelForCausalLM.from_pretrained")
    call = ('import hywia\nmodel = hywia.load_pruned("PATH")' if reload_with == "hywia.load_pruned" else
            'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("PATH")')
    parts += ["", "## Reload", "", f"`{reload_with}`"
              + (" (per-layer widths or recorded output biases: plain `from_pretrained` cannot rebuild it)"
                 if reload_with == "hywia.load_pruned" else " (a stock config)") + ":", "", "```python", call, "```",
              "", "Details: `hywia_report.json` (every removed unit with its score, the full recipe, versions).", ""]
    return "\n".join(parts)


def write_model_card(folder: str | Path, report: dict) -> Path:
    path = Path(folder) / CARD_NAME
    path.write_text(model_card(folder, report), encoding="utf-8")
    return path
