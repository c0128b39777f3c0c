"""``hywia recover``: LoRA recovery of a pruned model (distillation from the dense model, or LM loss on
instructions), merged and saved with the pruning report plus a ``recovery`` section."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import HywiaError


def add_parser(sub) -> None:
    from ..recover import DEFAULT_OFFLINE_DATA, RECIPES, RecoverConfig
    from .common import add_remote_code_arg

    d = RecoverConfig()
    parser = sub.add_parser("recover", help="LoRA recovery of a pruned model (distill or LM loss), merged and saved")
    parser.add_argument("--model", required=True, help="the pruned model folder (a hywia prune output)")
    parser.add_argument("--out", required=True, help="output folder for the recovered (merged) model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_remote_code_arg(parser)
    parser.add_argument("--data", default=None,
                        help="an Alpaca .jsonl (instruction/input/output; loss on the response only), a .jsonl of "
                             f"'text' rows or a .txt file, {DEFAULT_OFFLINE_DATA} (SQuAD/CoQA/DROP passages, offline), "
                             "or alpaca-cleaned (yahma/alpaca-cleaned, hub only) (default: alpaca-cleaned for "
                             f"--objective lm when the hub is usable, else {DEFAULT_OFFLINE_DATA})")
    parser.add_argument("--objective", choices=("distill", "lm"), default=d.objective,
                        help="distill: KL to the dense teacher's next-token distribution (no labels needed); lm: "
                             "language-model loss (default distill)")
    parser.add_argument("--teacher", default=None,
                        help="the dense model for --objective distill (default: the input model recorded in "
                             "MODEL/hywia_report.json)")
    parser.add_argument("--recipe", default="auto", choices=("auto", *RECIPES),
                        help="named hyper-parameters: llm-pruner (r=8, alpha=16, lr 1e-4, 128 examples per update, 2 "
                             "epochs: for instruction data such as Alpaca) or passages (r=32, alpha=64, lr 1e-3, 32 per "
                             f"update, 4 epochs: chosen on validation data for the small offline {DEFAULT_OFFLINE_DATA}); "
                             "auto picks by the data (default); --rank/--alpha/--lr/--batch-size/--epochs override it")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank")
    parser.add_argument("--alpha", type=int, default=None, help="LoRA alpha")
    parser.add_argument("--dropout", type=float, default=d.dropout, help="LoRA dropout")
    parser.add_argument("--cutoff", type=int, default=d.cutoff, help="tokens per example")
    parser.add_argument("--batch-size", type=int, default=None, help="examples per optimizer step")
    parser.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size,
                        help="examples per forward pass (gradient accumulation up to --batch-size); default: 4 on "
                             "the CPU, on a GPU the largest power of two dividing --batch-size whose activations "
                             "fit in a quarter of its free memory")
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warmup (at most 10%% of the steps)")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction, help="held-out validation share")
    parser.add_argument("--max-val", type=int, default=d.max_val, help="at most N validation examples")
    parser.add_argument("--max-examples", type=int, default=None, help="use only the first N examples of the data")
    parser.add_argument("--eval-every", type=int, default=d.eval_every, help="validation loss every N steps")
    parser.add_argument("--save-every", type=int, default=None, help="write a resumable checkpoint every N steps")
    parser.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default: OUT.checkpoint next to OUT)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint folder")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on a bf16 GPU, else fp32), float32, bfloat16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--offline", dest="data_mode", action="store_const", const="offline")
    data.add_argument("--online", dest="data_mode", action="store_const", const="online")
    parser.set_defaults(data_mode="auto")


def run(args) -> int:
    from ..models.io import check_output_path, load_model, read_report
    from ..recover import RecoverConfig, recover, resolve_recipe, resolve_source, save_recovered
    from ..recover.train import RECIPE_FIELDS

    out = check_output_path(args.out, overwrite=args.overwrite, protected=[])
    checkpoint_dir = args.checkpoint_dir or str(out.parent / f"{out.name}.checkpoint")
    recipe, values = resolve_recipe(args.recipe, resolve_source(args.data, args.objective, args.data_mode),
                                    {key: getattr(args, key) for key in RECIPE_FIELDS})
    config = RecoverConfig(
        objective=args.objective, data=args.data, recipe=recipe, dropout=args.dropout, **values,
        max_steps=args.max_steps, cutoff=args.cutoff,
        micro_batch_size=args.micro_batch_size, warmup_steps=args.warmup_steps, val_fraction=args.val_fraction,
        max_val=args.max_val, max_examples=args.max_examples, eval_every=args.eval_every, save_every=args.save_every,
        checkpoint_dir=checkpoint_dir, resume=args.resume, seed=args.seed, dtype=args.dtype,
        data_mode=args.data_mode, progress=not args.quiet,
    )
    config.validate()
    if args.dtype == "float16":
        raise HywiaError("fp16 training is not supported (LoRA in fp16 gives NaN losses on Llama-2); "
                         "use --dtype bfloat16 on a GPU or float32")
    load_dtype = "float32" if args.dtype == "auto" and args.device == "cpu" else args.dtype
    loaded = load_model(args.model, dtype=load_dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    if loaded.local_path is None or not loaded.local_path.is_dir():
        raise HywiaError(f"--model must be a pruned model folder, got {args.model!r}")
    protected = [loaded.local_path]
    check_output_path(out, overwrite=args.overwrite, protected=protected)
    report = read_report(loaded.local_path)
    if not report:
        print(f"hywia: note: {loaded.local_path} has no hywia_report.json; the output's report holds recovery only",
              file=sys.stderr)
    teacher = None
    teacher_source = None
    if args.objective == "distill":
        teacher_source = args.teacher or report.get("model_source")
        if not teacher_source:
            raise HywiaError("--objective distill needs the dense model: pass --teacher (the model that was pruned)")
        teacher_loaded = load_model(teacher_source, dtype=load_dtype, device=args.device,
                                    trust_remote_code=args.trust_remote_code)
        teacher = teacher_loaded.model
        teacher_source = teacher_loaded.source
    print(f"model: {loaded.source}" + (f"; teacher: {teacher_source}" if teacher_source else ""))
    result = recover(loaded.model, loaded.tokenizer, config, teacher)
    result.recovery["teacher"] = teacher_source
    result.recovery["input_model"] = loaded.source
    result.recovery["checkpoint_dir"] = checkpoint_dir if config.save_every else None
    rec = result.recovery
    data = rec["data"]
    print(f"recovery: {rec['steps_done']} steps on {data['source']} ({data['train_examples']} examples, "
          f"{data['train_tokens']:,} tokens; validation {data['validation_examples']} examples held out), "
          f"validation {rec['objective']} loss {rec['validation_loss_before']:.4f} -> {rec['best_validation_loss']:.4f} "
          f"(kept: {rec['kept_adapters']}, step {rec['best_step']}), {rec['seconds_this_run']:.1f} s")
    del teacher
    saved = save_recovered(result.model, loaded.tokenizer, out, report, rec, overwrite=args.overwrite,
                           protected=protected)
    print(f"saved to {saved} (reload with {report.get('reload_with', 'hywia.load_pruned')})")
    return 0
