"""Checks of a model source made before any weight is loaded: one clear line for every bad input.

``inspect_source`` reads what a folder or a ``.gguf`` file says about itself -- ``config.json`` parsed
and checked (valid JSON, a ``model_type``, an architecture an adapter understands, judged on an empty
model built on the meta device), the safetensors headers against the file sizes (a truncated or corrupt
shard is named), a GGUF header readable -- and returns the layer count, so that a layer range can be
checked before the (slow) load.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import HywiaError
from .adapters import LAYER_WIDTHS_KEY, OUTPUT_BIAS_KEY, REMOTE_CODE_MODEL_TYPES, get_adapter, supported_text


@dataclass
class SourceInfo:
    path: Path
    model_type: str | None
    num_layers: int | None
    skeleton: object = None  # the architecture on the meta device (no weights): shapes for a pruning plan


def read_config(folder: Path) -> dict:
    """``folder/config.json`` parsed, with a ``model_type``; a one-line error otherwise."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise HywiaError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise HywiaError(f"{path} cannot be read ({type(error).__name__})") from None
    if not isinstance(config, dict):
        raise HywiaError(f"{path} is not a model configuration (a JSON object expected)")
    if not config.get("model_type"):
        raise HywiaError(f"{path} has no model_type: not a transformers model configuration")
    return config


def check_architecture(config: dict, where: Path, trust_remote_code: bool = False):
    """Refuse an architecture no adapter understands, from the config alone (an empty meta-device model).

    A model whose modelling code ships with its folder (Baichuan: ``auto_map`` in config.json) is built
    from that code only with ``trust_remote_code``; without it, a one-line error says so.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = config["model_type"]
    remote = bool(config.get("auto_map")) or model_type in REMOTE_CODE_MODEL_TYPES
    if remote and not trust_remote_code and not _known_to_transformers(model_type):
        raise HywiaError(f"{where}: model_type {model_type!r} runs the model folder's own Python code; pass "
                         f"--trust-remote-code if you trust it (hywia supports {supported_text()})")
    try:
        if remote and trust_remote_code:
            hf_config = AutoConfig.from_pretrained(where.parent, trust_remote_code=True)
        else:
            hf_config = AutoConfig.for_model(**config)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)
    except Exception as error:  # unknown model_type, or a config transformers cannot build a causal LM from
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise HywiaError(f"{where}: unsupported architecture (model_type={model_type!r}: {first[:160]}); hywia "
                         f"supports {supported_text()}") from None
    try:
        get_adapter(skeleton)
    except HywiaError as error:
        raise HywiaError(f"{where}: {error}") from None
    return skeleton


def _known_to_transformers(model_type: str) -> bool:
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def check_safetensors(path: Path) -> None:
    """The header of a safetensors file parses and its tensors fit in the file (a truncated download fails)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError("shorter than a header")
            (length,) = struct.unpack("<Q", prefix)
            if length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        if 8 + length + max(ends, default=0) > size:
            raise ValueError(f"truncated: {size:,} bytes, the header needs {8 + length + max(ends):,}")
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as error:
        raise HywiaError(f"{path} is not a valid safetensors file ({error})") from None


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class _Reader:
    def __init__(self, handle):
        self.handle = handle

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.handle.read(size)
        if len(data) < size:
            raise ValueError("truncated header")
        return struct.unpack(fmt, data)[0]

    def string(self) -> bytes:
        length = self.take("<Q")
        if length > 1 << 24:
            raise ValueError("implausible string length")
        data = self.handle.read(length)
        if len(data) < length:
            raise ValueError("truncated header")
        return data

    def value(self, kind: int):
        if kind in _GGUF_SCALARS:
            return self.take(_GGUF_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            inner, count = self.take("<I"), self.take("<Q")
            if inner in _GGUF_SCALARS and inner != 8:  # skip a numeric array in one seek
                self.handle.seek(struct.calcsize(_GGUF_SCALARS[inner]) * count, 1)
                return None
            for _ in range(count):
                self.value(inner)
            return None
        raise ValueError(f"unknown value type {kind}")


def check_gguf(path: Path) -> int | None:
    """The GGUF header parses and the tensors it lists fit in the file (a truncated download fails);
    returns the layer count (``<arch>.block_count``) when it says. Reads the header only, not the weights
    (gguf's own reader maps every tensor: seconds on a 135M model)."""
    try:
        from gguf import GGML_QUANT_SIZES
    except ImportError:
        GGML_QUANT_SIZES = None
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise HywiaError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
            reader = _Reader(handle)
            version = reader.take("<I")
            if version < 2:
                return None  # GGUF v1: left to the loader
            tensors, entries = reader.take("<Q"), reader.take("<Q")
            if tensors > 1 << 24 or entries > 1 << 24:
                raise ValueError("implausible header counts")
            values = {}
            for _ in range(entries):
                key = reader.string().decode("utf-8", "replace")
                values[key] = reader.value(reader.take("<I"))
            needed = 0
            for _ in range(tensors):
                reader.string()
                dims = [reader.take("<Q") for _ in range(reader.take("<I"))]
                kind, offset = reader.take("<I"), reader.take("<Q")
                if GGML_QUANT_SIZES is not None and kind in GGML_QUANT_SIZES:
                    block, block_bytes = GGML_QUANT_SIZES[kind]
                    count = 1
                    for dim in dims:
                        count *= dim
                    needed = max(needed, offset + count // block * block_bytes)
            alignment = values.get("general.alignment") or 32
            start = -(-handle.tell() // alignment) * alignment
            if start + needed > size:
                raise ValueError(f"truncated: {size:,} bytes, the tensors need {start + needed:,}")
    except (ValueError, struct.error, OSError) as error:
        raise HywiaError(f"{path} is not a valid GGUF file ({error})") from None
    arch = values.get("general.architecture")
    count = values.get(f"{arch.decode()}.block_count") if isinstance(arch, bytes) else None
    return int(count) if isinstance(count, int) else None


def inspect_source(path: Path, trust_remote_code: bool = False) -> SourceInfo:
    """Check a local folder or ``.gguf`` file before loading it; the checks above, in that order."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise HywiaError(f"{path} is a file but not a .gguf model; pass a model folder, a .gguf file or a hub id")
        return SourceInfo(path, None, check_gguf(path))
    if not (path / "config.json").is_file():
        raise HywiaError(f"{path} has no config.json: not a HuggingFace model folder")
    config = read_config(path)
    skeleton = check_architecture(config, path / "config.json", trust_remote_code)
    shards = sorted(path.glob("*.safetensors"))
    if not shards and not any(path.glob("*.bin")):
        raise HywiaError(f"{path} has no weights (no .safetensors or .bin files)")
    for shard in shards:
        check_safetensors(shard)
    layers = config.get("num_hidden_layers") or (config.get("text_config") or {}).get("num_hidden_layers")
    if LAYER_WIDTHS_KEY in config or OUTPUT_BIAS_KEY in config:
        skeleton = None  # a hywia output: its layers are narrower than the config alone builds them
    return SourceInfo(path, config["model_type"], int(layers) if layers else None, skeleton)
