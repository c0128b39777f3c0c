"""A fast lm-eval ``LM`` for log-likelihood tasks on an already loaded Hugging Face causal LM.

``lm_eval.models.huggingface.HFLM`` scores one request at a time after each padded batch: two tokenizer
calls per request, a full-vocabulary log-softmax over every position of the batch, and several small
device operations and host synchronisations per request. :class:`FastLM` computes the same numbers
(HFLM's ``_encode_pair`` tokenisation, its left truncation, the summed continuation log-probability and
"is greedy") with far less work:

* every distinct string is tokenised once, in batched tokenizer calls;
* identical requests are scored once, and a request whose model input ``(context + continuation)[:-1]``
  is a prefix of another request's input is read from that longer row (causal attention makes the
  logits identical; this generalises HFLM's one-token-continuation cache, e.g. BoolQ's " yes"/" no");
* rows are sorted by length and batched under a token budget (right padding, no attention mask: with
  causal attention the padding after a row cannot change its logits; HFLM does the same);
* the LM head runs only on the positions that score a continuation token, and the log-softmax is taken
  there in float32; results stay on the device until the end (one transfer);
* the tokenisation and batch plan of a request list are cached per process (keyed by the tokenizer's
  content, the settings and the requests): the next model with the same tokenizer only runs the model.

In float32 the results equal HFLM's up to float rounding (the same acc / acc_norm on all 7 tasks, full sets,
checked on SmolLM2-135M on an H200). In bfloat16 HFLM takes its log-softmax in bfloat16 while FastLM uses
float32, so a few near-tied documents can flip (measured: at most 0.4 points per task).

The task side (prompts, choices, targets, metrics) stays lm-eval's: this is only the model backend.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import torch

try:
    from lm_eval.api.model import LM
except ImportError as error:  # pragma: no cover - the caller reports the missing extra
    raise ImportError("hywia.evaluate.loglikelihood needs lm-eval: pip install 'hywia[eval]'") from error

DEFAULT_MAX_LENGTH = 2048  # HFLM._DEFAULT_MAX_LENGTH
# config attributes that change logits after the LM head: the sliced-head path is not used with them
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class ScoreStats:
    """What the last :meth:`FastLM.loglikelihood` call did (for benchmarks and logs)."""

    requests: int = 0
    unique_requests: int = 0
    rows: int = 0  # model input rows after prefix sharing
    tokens: int = 0  # real tokens fed to the model
    padded_tokens: int = 0  # tokens including right padding
    scored_positions: int = 0  # positions that went through the LM head
    batches: int = 0
    sliced_head: bool = False
    plan_cached: bool = False  # tokenisation and batches reused from an earlier call
    seconds: dict = field(default_factory=dict)


@dataclass
class _Batch:
    ids: torch.Tensor  # [rows, width] right-padded model input
    positions: torch.Tensor  # flat (row * width + position) indices whose logits score a token, sorted
    inverse: torch.Tensor  # per scored token: its index into positions (ascending)
    req: torch.Tensor  # per scored token: its distinct request
    target: torch.Tensor  # per scored token: the continuation token
    edges: list[int]  # scored-token slice of each head chunk


@dataclass
class ScorePlan:
    """Tokenised, de-duplicated and batched requests: everything but the model's own work."""

    request_of: np.ndarray  # request -> distinct request
    n_unique: int
    batches: list[_Batch]
    stats: ScoreStats


_PLANS: OrderedDict = OrderedDict()  # (tokenizer, settings, requests) -> ScorePlan
_MAX_PLANS = 4


def clear_plan_cache() -> None:
    _PLANS.clear()


def _tokenizer_key(tokenizer) -> tuple | None:
    """Identifies what a fast tokenizer does (its serialised backend: content, not identity); None otherwise."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        content = hashlib.sha1(backend.to_str().encode()).hexdigest()
    except (AttributeError, TypeError, ValueError):
        return None  # slow tokenizer: not cached
    return (type(tokenizer).__name__, content, tokenizer.bos_token_id, tokenizer.eos_token_id,
            getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None))


def resolve_max_length(model, tokenizer, max_length: int | None) -> int:
    """HFLM's rule: the explicit value, else the model config's context length, else the tokenizer's."""
    if max_length:
        return int(max_length)
    try:
        from lm_eval.models.utils import resolve_max_length as lm_eval_rule

        return lm_eval_rule(model.config, tokenizer, default=DEFAULT_MAX_LENGTH)
    except ImportError:  # older lm-eval: the same lookup by hand
        config = getattr(model.config, "text_config", None) or model.config
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            if getattr(config, attr, None) is not None:
                return int(getattr(config, attr))
        limit = getattr(tokenizer, "model_max_length", None)
        return int(limit) if limit is not None and limit < 10**12 else DEFAULT_MAX_LENGTH


class FastLM(LM):
    """lm-eval model backend for ``loglikelihood`` requests (multiple-choice tasks).

    ``model``: a loaded causal LM (any device / dtype); ``tokenizer``: its tokenizer. ``max_length`` as
    HFLM's (default: the model's context length). ``max_batch_tokens`` bounds rows x padded length per
    forward pass (default 65536 on CUDA, 4096 on CPU); a row shorter than ``min_fill`` times its batch's
    longest row starts a new batch. ``add_special_tokens`` as HFLM's
    ``add_bos_token``: None keeps the tokenizer's default (what ``HFLM(tokenizer=...)`` does).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_length: int | None = None,
        max_batch_tokens: int | None = None,
        max_batch_rows: int = 4096,
        min_fill: float = 0.75,
        head_chunk_rows: int | None = None,
        add_special_tokens: bool | None = None,
        slice_head: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self._device = next(model.parameters()).device
        self._max_length = resolve_max_length(model, tokenizer, max_length)
        self.max_batch_tokens = int(max_batch_tokens or (65536 if self.device.type == "cuda" else 4096))
        self.max_batch_rows = max(1, int(max_batch_rows))
        self.min_fill = float(min_fill)
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 1 << 16)
        # float32 log-probs of at most ~1 GiB per chunk on CUDA, ~128 MiB on CPU
        budget = 2**28 if self.device.type == "cuda" else 2**25
        self.head_chunk_rows = int(head_chunk_rows or max(64, budget // max(vocab, 1)))
        self.add_special_tokens = add_special_tokens
        self._slice_head = slice_head
        self._head_checked = False
        self._head = None
        self.stats = ScoreStats()

    # ------------------------------------------------------------------ lm-eval API

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """HFLM's: BOS, else EOS; the context of a request whose context is empty."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [request.args for request in requests]
        results = self.score_pairs(pairs)
        for pair, answer in zip(pairs, results):
            self.cache_hook.add_partial("loglikelihood", pair, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "FastLM scores multiple-choice (loglikelihood) requests only; for perplexity use "
            "hywia.evaluate.perplexity, or evaluate_zeroshot(..., engine='hflm') for rolling tasks")

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "FastLM does not generate text; use evaluate_zeroshot(..., engine='hflm') for generative tasks")

    # ------------------------------------------------------------------ tokenisation (HFLM's rules)

    def _encode_many(self, strings: list[str], add_special_tokens: bool | None) -> dict[str, list[int]]:
        """Token ids of each distinct string, in batched tokenizer calls, as ``HFLM.tok_encode`` does them:
        ``add_special_tokens`` given -> used; else the LM's setting; else the tokenizer default, except that a
        string starting with the prefix (BOS) token's text is encoded without special tokens."""
        unique = list(dict.fromkeys(strings))
        out: dict[str, list[int]] = {}
        if add_special_tokens is not None:
            groups = [(unique, {"add_special_tokens": add_special_tokens})]
        else:
            default = {} if self.add_special_tokens is None else {"add_special_tokens": self.add_special_tokens}
            bos_text = self.tokenizer.decode(self.prefix_token_id) if self.prefix_token_id is not None else None
            with_bos = [s for s in unique if bos_text and s.startswith(bos_text)]
            plain = [s for s in unique if not (bos_text and s.startswith(bos_text))]
            groups = [(plain, default), (with_bos, {"add_special_tokens": False})]
        for group, kwargs in groups:
            if group:
                ids = self.tokenizer(group, **kwargs)["input_ids"]
                out.update(zip(group, ids))
        return out

    def encode_pairs(self, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """``(context_ids, continuation_ids)`` of each request, exactly as HFLM's ``loglikelihood`` makes them."""
        split: list[tuple[str, str]] = []
        for context, continuation in pairs:
            if context:
                n_spaces = len(context) - len(context.rstrip())
                if n_spaces > 0:  # trailing spaces of the context belong to the continuation
                    continuation = context[-n_spaces:] + continuation
                    context = context[:-n_spaces]
            split.append((context, continuation))
        plain = self._encode_many([c for c, _ in split if c] + [c + x for c, x in split if c], None)
        empty = self._encode_many([x for c, x in split if not c], False)
        encoded = []
        for context, continuation in split:
            if not context:  # HFLM: BOS (or EOS) as the context
                cont = empty[continuation]
                if self.prefix_token_id != cont[0]:
                    encoded.append(([self.prefix_token_id], cont))
                else:
                    encoded.append((cont[:1], cont[1:]))
                continue
            context_ids = plain[context]
            encoded.append((context_ids, plain[context + continuation][len(context_ids):]))
        return encoded

    # ------------------------------------------------------------------ scoring

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Scores of ``(context, continuation)`` strings. The tokenisation and batch plan of a request list
        are cached per process (keyed by the tokenizer's content, the settings and the requests), so
        scoring the same requests with another model of the same tokenizer repeats only the model's work."""
        start = time.perf_counter()
        tokenizer_key = _tokenizer_key(self.tokenizer)
        key = None if tokenizer_key is None else (
            tokenizer_key, self.add_special_tokens, self.max_length, self.max_batch_tokens, self.max_batch_rows,
            self.min_fill, self.head_chunk_rows, tuple(map(tuple, pairs)))
        plan = _PLANS.get(key) if key is not None else None
        cached = plan is not None
        if plan is None:
            plan = self.plan(self.encode_pairs(pairs))
            if key is not None:
                _PLANS[key] = plan
                while len(_PLANS) > _MAX_PLANS:
                    _PLANS.popitem(last=False)
        else:
            _PLANS.move_to_end(key)
        prepare_s = time.perf_counter() - start
        results = self.run(plan)
        self.stats.seconds["prepare"] = prepare_s
        self.stats.plan_cached = cached
        return results

    def score_tokens(self, encoded: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Summed continuation log-probability and is-greedy of each ``(context_ids, continuation_ids)``."""
        return self.run(self.plan(encoded))

    def plan(self, encoded: list[tuple[list[int], list[int]]]) -> "ScorePlan":
        """De-duplicate the requests, share prefixes, batch the rows and index the scored positions."""
        if not encoded:
            return ScorePlan(np.zeros(0, dtype=np.int64), 0, [], ScoreStats())
        stats = ScoreStats(requests=len(encoded))
        # model input (left-truncated like HFLM) and continuation of each distinct request
        index: dict[tuple, int] = {}
        request_of: list[int] = []
        inputs: list[tuple[int, ...]] = []
        conts: list[tuple[int, ...]] = []
        for context, continuation in encoded:
            if not context or not continuation:
                raise ValueError("every request needs a non-empty context and continuation after tokenisation")
            if len(continuation) > self.max_length:
                raise ValueError(f"continuation of {len(continuation)} tokens exceeds max_length {self.max_length}")
            whole = (context + continuation)[-(self.max_length + 1):]
            key = (tuple(whole[:-1]), tuple(continuation))
            slot = index.get(key)
            if slot is None:
                slot = index[key] = len(inputs)
                inputs.append(key[0])
                conts.append(key[1])
            request_of.append(slot)
        n_unique = len(inputs)
        stats.unique_requests = n_unique

        # prefix sharing: in lexicographic order a sequence that is a prefix of another is a prefix of the next
        order = sorted(range(n_unique), key=inputs.__getitem__)
        host_of = [0] * n_unique
        host_input: list[tuple[int, ...]] = []
        current = None
        for rank in range(n_unique - 1, -1, -1):
            seq = inputs[order[rank]]
            if current is None or len(seq) > len(current) or current[: len(seq)] != seq:
                current = seq
                host_input.append(seq)
            host_of[order[rank]] = len(host_input) - 1
        stats.rows = len(host_input)
        stats.tokens = sum(len(seq) for seq in host_input)

        # batches of rows, longest first, under the token budget; a row shorter than min_fill x the batch's
        # width starts a new batch (bounds the padding when lengths vary, e.g. with --limit)
        by_length = sorted(range(len(host_input)), key=lambda h: -len(host_input[h]))
        batch_of = np.empty(len(host_input), dtype=np.int64)
        row_of = np.empty(len(host_input), dtype=np.int64)
        batches: list[list[int]] = []
        for h in by_length:
            if batches:
                rows = batches[-1]
                width = len(host_input[rows[0]])
                if ((len(rows) + 1) * width <= self.max_batch_tokens and len(rows) < self.max_batch_rows
                        and len(host_input[h]) >= self.min_fill * width):
                    batch_of[h], row_of[h] = len(batches) - 1, len(rows)
                    rows.append(h)
                    continue
            batch_of[h], row_of[h] = len(batches), 0
            batches.append([h])
        stats.batches = len(batches)

        # one (request, position, target) triple per continuation token, grouped by batch
        cont_len = np.fromiter((len(c) for c in conts), dtype=np.int64, count=n_unique)
        in_len = np.fromiter((len(s) for s in inputs), dtype=np.int64, count=n_unique)
        hosts = np.asarray(host_of, dtype=np.int64)
        pair_req = np.repeat(np.arange(n_unique), cont_len)
        offsets = np.arange(len(pair_req)) - np.repeat(np.cumsum(cont_len) - cont_len, cont_len)
        pair_pos = np.repeat(in_len - cont_len, cont_len) + offsets
        pair_target = np.fromiter((t for c in conts for t in c), dtype=np.int64, count=len(pair_req))
        pair_batch = batch_of[hosts[pair_req]]
        pair_row = row_of[hosts[pair_req]]
        sort = np.argsort(pair_batch, kind="stable")
        pair_req, pair_pos, pair_target, pair_batch, pair_row = (
            a[sort] for a in (pair_req, pair_pos, pair_target, pair_batch, pair_row))
        bounds = np.searchsorted(pair_batch, np.arange(len(batches) + 1))

        planned = []
        for b, rows in enumerate(batches):
            width = len(host_input[rows[0]])
            ids = np.zeros((len(rows), width), dtype=np.int64)
            for r, h in enumerate(rows):
                seq = host_input[h]
                ids[r, : len(seq)] = seq
            stats.padded_tokens += ids.size
            lo, hi = bounds[b], bounds[b + 1]
            flat = pair_row[lo:hi] * width + pair_pos[lo:hi]
            positions, inverse = np.unique(flat, return_inverse=True)
            by_pos = np.argsort(inverse, kind="stable")  # each head chunk then covers a contiguous slice
            inverse = inverse.reshape(-1)[by_pos]
            edges = np.searchsorted(inverse, np.arange(0, len(positions) + self.head_chunk_rows, self.head_chunk_rows))
            stats.scored_positions += len(positions)
            planned.append(_Batch(torch.from_numpy(ids), torch.from_numpy(positions), torch.from_numpy(inverse),
                                  torch.from_numpy(pair_req[lo:hi][by_pos]),
                                  torch.from_numpy(pair_target[lo:hi][by_pos]), edges.tolist()))
        return ScorePlan(np.asarray(request_of, dtype=np.int64), n_unique, planned, stats)

    def run(self, plan: "ScorePlan") -> list[tuple[float, bool]]:
        """Run the model over a plan's batches; one device-to-host transfer at the end."""
        self.stats = stats = replace(plan.stats, seconds={})
        if not plan.n_unique:
            return []
        start = time.perf_counter()
        device = self.device
        logprob_sum = torch.zeros(plan.n_unique, dtype=torch.float64, device=device)
        misses = torch.zeros(plan.n_unique, dtype=torch.int64, device=device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                head = self._head_parts(plan.batches[-1].ids[0, :32].tolist())
                stats.sliced_head = head is not None
                for batch in plan.batches:
                    ids, positions, inverse, req, target = (
                        t.to(device, non_blocking=True)
                        for t in (batch.ids, batch.positions, batch.inverse, batch.req, batch.target))
                    hidden = self._hidden(ids, head)
                    for c, p0 in enumerate(range(0, positions.numel(), self.head_chunk_rows)):
                        q0, q1 = batch.edges[c], batch.edges[c + 1]
                        logprobs = self._logprobs(hidden, positions[p0 : p0 + self.head_chunk_rows], head)
                        # on a model spread over GPUs the head's output sits on its own GPU: pick there
                        rows_here = (inverse[q0:q1] - p0).to(logprobs.device)
                        targets = target[q0:q1].to(logprobs.device)
                        picked = logprobs[rows_here, targets].double().to(device)
                        greedy = (logprobs.argmax(dim=-1)[rows_here] == targets).to(device)
                        logprob_sum.index_add_(0, req[q0:q1], picked)
                        misses.index_add_(0, req[q0:q1], (~greedy).long())
                    del hidden
        finally:
            self.model.train(was_training)
        sums = logprob_sum.cpu().numpy()[plan.request_of].tolist()
        greedy_all = (misses == 0).cpu().numpy()[plan.request_of].tolist()
        stats.seconds["model"] = time.perf_counter() - start
        return list(zip(sums, greedy_all))

    # ------------------------------------------------------------------ model pieces

    def _head_parts(self, probe: list[int]):
        """``(decoder, lm_head)`` when logits are exactly ``lm_head(decoder(ids).last_hidden_state)``, else None.

        Checked once on a short real input against the model's own logits; models whose config applies a
        transform after the head (soft-capping, scaling) always take the full-logits path.
        """
        if not self._slice_head:
            return None
        if self._head_checked:
            return self._head
        self._head_checked, self._head = True, None
        config = getattr(self.model, "config", None)
        if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
            return None
        try:
            head = self.model.get_output_embeddings()
            decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
            decoder = decoder if decoder is not None else getattr(self.model, "model", None)
            if head is None or decoder is None or decoder is self.model:
                return None
            ids = torch.tensor([probe], dtype=torch.long, device=self.device)
            full = self.model(input_ids=ids, use_cache=False).logits.float()
            sliced = head(decoder(input_ids=ids, use_cache=False).last_hidden_state).float()
        except (AttributeError, TypeError, NotImplementedError, RuntimeError):
            return None
        if full.shape != sliced.shape:
            return None
        tolerance = 1e-4 if next(self.model.parameters()).dtype == torch.float32 else 2e-2
        if (full - sliced).abs().max() > tolerance * max(1.0, float(full.abs().max())):
            return None
        self._head = (decoder, head)
        return self._head

    def _hidden(self, ids: torch.Tensor, head) -> torch.Tensor:
        """[rows * width, hidden] final hidden states, or [rows * width, vocab] logits without a sliced head."""
        if head is not None:
            hidden = head[0](input_ids=ids, use_cache=False).last_hidden_state
        else:
            hidden = self.model(input_ids=ids, use_cache=False).logits
        return hidden.reshape(-1, hidden.shape[-1])

    def _logprobs(self, hidden: torch.Tensor, positions: torch.Tensor, head) -> torch.Tensor:
        states = hidden.index_select(0, positions.to(hidden.device))
        logits = head[1](states) if head is not None else states
        return torch.log_softmax(logits.float(), dim=-1)
