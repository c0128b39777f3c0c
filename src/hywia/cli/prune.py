"""``hywia prune``: load, score, remove, save with its report (and perplexity before/after with --eval)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import HywiaError
from .common import (add_eval_args, add_model_args, add_remote_code_arg, check_source, describe_model, describe_ppl,
                     eval_texts, perplexities, quiet_libraries)

HYWIA_OPTION_HELP = {
    "fine": "fine-grained saliency: element1 (default), element2 or wanda-sp",
    "coarse": "whole-group score: sequential (output error of removing the units, the rest compensating, as they "
              "leave together, greedy), compensated (the same error for each unit alone) or taylor",
    "coarse_damping": "relative ridge of the compensated coarse score",
    "intercept": "compensated coarse score and reconstruction with a bias for the removed inputs' means (yes/no)",
    "normalisation": "per-layer normalisation: mean, rank or zscore",
    "blend": "one blend per layer (layer) or per group (group)",
    "steps": "optimisation steps of the fusion (0 = untrained 0.5/0.5 start)",
    "lr": "learning rate of the fusion parameters",
    "temperature": "soft-mask temperature (in std of the fused scores)",
    "loss": "lm (language-model loss) or kl (to the dense model)",
    "batch_size": "calibration samples per fusion step",
    "fixed_alpha": "fixed weight of the fine score instead of learning (e.g. 0.5)",
    "gates": "what a gated-off unit passes on while the fusion learns: plain (zero), compensated (its ridge stand-in "
             "from the kept units, as the reconstruction will make it) or auto (compensated when it fits)",
    "graph": "auto (on CUDA, replay the fusion's forward and backward as CUDA graphs when every step has the same "
             "inputs; eager if the capture fails) or off",
}


def add_parser(sub) -> None:
    from ..allocate import ALLOCATIONS
    from ..importance import METHODS

    from ..models.adapters import supported_text

    prune = sub.add_parser("prune", help="prune a model and save it in HuggingFace format",
                           description=f"Prune a model and save it in HuggingFace format. Supported architectures: "
                                       f"{supported_text()}; Baichuan needs --trust-remote-code.")
    add_model_args(prune)
    add_remote_code_arg(prune)
    prune.add_argument("--ratio", type=float, required=True, help="fraction of ALL parameters to remove, e.g. 0.2")
    prune.add_argument("--ratio-base", choices=("all", "non-embedding"), default="all",
                       help="what --ratio is a fraction of: all parameters (the papers' convention) or those outside "
                            "the embeddings and LM head (large-vocabulary models such as Gemma)")
    prune.add_argument("--method", default="hywia", choices=sorted(METHODS), help="importance method (default hywia)")
    prune.add_argument("--allocation", default=None, choices=ALLOCATIONS,
                       help="uniform: same widths in every pruned layer (stock HF config); global: per-layer "
                            "widths by score per parameter; global-score: per-layer widths by score alone "
                            "(FLAP's rule); edges: uniform unless the first or last layer is pruned, then global with a 10%% floor "
                            "(default: the method's own choice: edges for hywia, global-score for flap, uniform otherwise)")
    prune.add_argument("--layers", default=None, help="prune only layers A..B-1, e.g. 4:28 (default: all)")
    prune.add_argument("--round-to", default="auto",
                       help="keep MLP widths multiples of N; auto (default): 64 or 128 on GPUs (matrix tiles, "
                            "chosen from the model's MLP width and recorded in the report), 1 on CPU")
    prune.add_argument("--strict", action="store_true",
                       help="refuse when the closest achievable ratio is further than 0.5 points of all parameters "
                            "from --ratio (default: warn and record it in the report)")
    prune.add_argument("--uniform", dest="allocation", action="store_const", const="uniform",
                       help="same widths in every pruned layer: a stock config that plain from_pretrained reloads "
                            "(= --allocation uniform)")
    prune.add_argument("--min-width", type=float, default=None,
                       help="every pruned layer keeps at least this fraction of its KV groups and MLP channels "
                            "(a floor for global / global-score, which may otherwise strip a layer almost bare; "
                            "default 0: one KV group and one --round-to step)")
    prune.add_argument("--calib", default=None,
                       help="calibration text: mixed (default: LAMBADA + SQuAD/CoQA/DROP passages), lambada, a file "
                            "(txt/jsonl), wikitext2-train")
    prune.add_argument("--calib-samples", type=int, default=128)
    prune.add_argument("--calib-len", type=int, default=128)
    prune.add_argument("--seed", type=int, default=42)
    prune.add_argument("--batch-size", type=int, default=4, help="calibration batch size for gradients")
    prune.add_argument("--out", default=None, help="output folder (nothing is saved without it)")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    prune.add_argument("--recover", action="store_true",
                       help="then run `hywia recover` with its defaults on OUT (LoRA, distillation from this dense "
                            "model, offline reading passages) and save the recovered model to OUT-recovered")
    prune.add_argument("--eval", action="store_true", help="print dense and pruned perplexity")
    prune.add_argument("--quiet", action="store_true", help="no progress bars")
    add_eval_args(prune, "--eval-text", "boolq-passages")
    _add_reconstruct_args(prune)
    _add_hywia_args(prune)


def _add_reconstruct_args(parser: argparse.ArgumentParser) -> None:
    from ..pipeline import PruneConfig

    group = parser.add_argument_group("reconstruction (any --method)")
    group.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None,
                       help="before removing the units, refit each pruned o_proj / down_proj on the pruned model's "
                            "own calibration inputs, layer by layer (ridge toward the kept weights; no new "
                            "parameters unless the method compensates with biases, as FLAP, or the projection "
                            f"already has a bias) (default: {'on' if PruneConfig.reconstruct else 'off'})")
    group.add_argument("--reconstruct-damping", type=float, default=None,
                       help="ridge strength relative to the mean diagonal of the kept inputs' Gram matrix: larger "
                            "stays closer to plain removal, inf = no update "
                            f"(default {PruneConfig.reconstruct_damping}, to be chosen on validation text)")
    group.add_argument("--reconstruct-samples", type=int, default=None,
                       help="calibration samples for the reconstruction, drawn from --calib with --seed "
                            "(default: reuse the scoring samples, --calib-samples)")
    group.add_argument("--reconstruct-len", type=int, default=None,
                       help="tokens per reconstruction sample (default: --calib-len)")


def _reconstruct_options(args) -> dict:
    names = {"reconstruct": "reconstruct", "reconstruct_damping": "reconstruct_damping",
             "reconstruct_samples": "reconstruct_samples", "reconstruct_len": "reconstruct_seq_len"}
    return {field: getattr(args, name) for name, field in names.items() if getattr(args, name) is not None}


def _add_hywia_args(parser: argparse.ArgumentParser) -> None:
    from ..importance.hywia.method import HybridOptions

    group = parser.add_argument_group("HyWIA fusion (--method hywia)")
    defaults = HybridOptions()
    for name, text in HYWIA_OPTION_HELP.items():
        value = getattr(defaults, name)
        kind = (str if isinstance(value, bool) else float if name in ("lr", "temperature", "fixed_alpha", "coarse_damping")
                else int if isinstance(value, int) else str)
        group.add_argument(f"--hywia-{name.replace('_', '-')}", type=kind, default=None, dest=f"hywia_{name}",
                           help=f"{text} (default {value})")


def _yes_no(name: str, text: str) -> bool:
    if text.lower() in ("yes", "true", "1", "on"):
        return True
    if text.lower() in ("no", "false", "0", "off"):
        return False
    raise HywiaError(f"--hywia-{name.replace('_', '-')}: expected yes or no, got {text!r}")


def _hywia_options(args) -> dict:
    from ..importance.hywia.method import HybridOptions

    switches = {name for name, value in vars(HybridOptions()).items() if isinstance(value, bool)}
    options = {key[len("hywia_"):]: value for key, value in vars(args).items()
               if key.startswith("hywia_") and value is not None}
    return {name: _yes_no(name, value) if name in switches else value for name, value in options.items()}


def _plot_writer(report: dict):
    """Write HyWIA's blend plot next to the model when matplotlib is there (it is optional)."""
    details = report.get("method_details") or {}
    if "alpha_fine" not in details:
        return None

    def write(folder: Path) -> None:
        from ..evaluate.plots import plot_hywia

        try:
            plot_hywia(details, folder / "hywia_blend.png")
        except HywiaError as error:
            print(f"hywia: note: no plot ({error})", file=sys.stderr)

    return write


def run(args) -> int:
    from ..allocate import parse_layer_range
    from ..models.io import check_output_path, load_model, resolve_dtype, save_pruned
    from ..pipeline import PruneConfig, check_dtype, check_plan, prune
    from ..report import layer_table, markdown, summary

    config = PruneConfig(
        ratio=args.ratio, ratio_base=args.ratio_base, method=args.method, allocation=args.allocation, layers=args.layers,
        round_to=args.round_to, min_width=args.min_width, calibration=args.calib, num_samples=args.calib_samples,
        seq_len=args.calib_len, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
        method_options=_hywia_options(args) if args.method == "hywia" else {}, strict=args.strict,
        **_reconstruct_options(args),
    )
    if args.method != "hywia" and _hywia_options(args):
        raise HywiaError("--hywia-* options only apply to --method hywia")
    config.validate()
    if getattr(args, "recover", False) and not args.out:
        raise HywiaError("--recover needs --out (the pruned model is saved, then recovered into OUT-recovered)")
    if args.out:  # fail before the (slow) model load; checked again below against the loaded model's path
        check_output_path(args.out, overwrite=args.overwrite, protected=[])
    check_dtype(config.method, resolve_dtype(args.dtype, args.device))
    if args.quiet:
        quiet_libraries()
    # config, architecture, weight files: before any weight is read
    source, offline = check_source(args.model, args.trust_remote_code)
    if source is not None and source.num_layers:
        parse_layer_range(config.layers, source.num_layers)
    if source is not None and source.skeleton is not None:
        check_plan(source.skeleton, config, device=args.device)  # layer range, feasibility, --strict: on shapes alone
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, offline=offline,
                        trust_remote_code=args.trust_remote_code)
    protected = [loaded.local_path] if loaded.local_path else []
    if args.out:
        check_output_path(args.out, overwrite=args.overwrite, protected=protected)
    print(describe_model(loaded))
    texts = eval_texts(args, "boolq-passages") if args.eval else []
    dense_ppl = perplexities(loaded.model, loaded.tokenizer, args, texts)
    for entry in dense_ppl:
        print(describe_ppl("dense ", entry))
    result = prune(loaded.model, loaded.tokenizer, config)
    report = result.report
    report["model_source"] = loaded.source
    if report["parameters"].get("allocation_note"):
        print(f"hywia: warning: {report['parameters']['allocation_note']}", file=sys.stderr)
    if args.eval:
        pruned_ppl = perplexities(result.model, loaded.tokenizer, args, texts)
        report["evaluation"] = {"dense": dense_ppl, "pruned": pruned_ppl}
    print(layer_table(report) if not args.quiet else "")
    print(summary(report))
    if report.get("reconstruction"):
        rec = report["reconstruction"]
        print(f"reconstruction: {rec['projections_refitted']} output projections refitted on {rec['tokens']:,} tokens "
              f"(damping {rec['damping']:g}), mean relative output error {rec['mean_error_before']:.4f} -> "
              f"{rec['mean_error_after']:.4f}, {rec['seconds']:.1f} s")
    for dense, pruned in zip(dense_ppl, report.get("evaluation", {}).get("pruned", [])):
        print(describe_ppl("dense ", dense))
        print(describe_ppl("pruned", pruned))
    if args.out:
        out = save_pruned(result.model, loaded.tokenizer, args.out, report, overwrite=args.overwrite,
                          protected=protected, extra_files={"hywia_report.md": markdown(report)},
                          write_extras=_plot_writer(report))
        print(f"saved to {out} (reload with {report['reload_with']})")
        if getattr(args, "recover", False):
            _recover_saved(out, args)
    else:
        print("nothing saved (no --out)")
    return 0


def _recover_saved(out: Path, args) -> None:
    """``--recover``: ``hywia recover --model OUT --out OUT-recovered`` with recover's defaults."""
    from . import build_parser, recover

    argv = ["recover", "--model", str(out), "--out", str(out.parent / f"{out.name}-recovered"),
            "--device", args.device, "--dtype", args.dtype if args.dtype != "float16" else "auto"]
    argv += ["--overwrite"] if args.overwrite else []
    argv += ["--quiet"] if args.quiet else []
    argv += ["--trust-remote-code"] if args.trust_remote_code else []
    recover.run(build_parser().parse_args(argv))
