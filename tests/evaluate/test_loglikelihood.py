"""FastLM against lm-eval's own HFLM on the same requests: same log-likelihoods, same greedy flags, same acc."""

import json
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from conftest import build_tiny, tiny_text, tiny_tokenizer  # noqa: E402
from tiny import byte_tokenizer, tiny_llama  # noqa: E402

from hywia.evaluate.loglikelihood import FastLM  # noqa: E402

DATA = Path(__file__).parents[1] / "data" / "tiny_task.jsonl"


def instances(pairs):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=0, metadata=("t", i, 1))
            for i, pair in enumerate(pairs)]


def hflm_scores(model, tokenizer, pairs, batch_size=3):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size).loglikelihood(instances(pairs))


def assert_same(ours, reference, tol=1e-4):
    assert len(ours) == len(reference)
    for (lp, greedy), (ref_lp, ref_greedy) in zip(ours, reference):
        assert lp == pytest.approx(ref_lp, rel=tol, abs=tol)
        assert greedy == ref_greedy


def text_pairs():
    """Real-text requests: trailing spaces, shared contexts, duplicates, one- and many-token continuations,
    a continuation that is a prefix of another, and an empty context (BOS as the context)."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    pairs = []
    for row in rows:
        context = f"Question: {row['question']}\nAnswer:"
        pairs += [(context, " " + choice) for choice in row["choices"]]
    pairs += [
        ("The cat sat on the ", "mat"),  # trailing space moves to the continuation
        ("The cat sat on the", " mat"),
        ("The cat sat on the", " mat"),  # duplicate
        ("The cat sat on the", " mat and slept"),  # the shorter request's input is a prefix of this one's
        ("Passage: a b c.\nQuestion: is it?\nAnswer:", " yes"),
        ("Passage: a b c.\nQuestion: is it?\nAnswer:", " no"),
        ("", "Hello world"),  # empty context -> BOS as the context
        ("x", "y"),
        ("Pick one: a or b?", " a"),  # one-token continuations of one context: one model row, two targets
        ("Pick one: a or b?", " b"),
        ("Pick one: a or b?", "c"),
        ("Line one\n\n", "Line two"),  # trailing newlines are whitespace too
    ]
    return pairs


@pytest.fixture(scope="module")
def byte_model():
    return tiny_llama(), byte_tokenizer()


@pytest.mark.parametrize("budget,chunk", [(None, None), (64, 3)])
def test_loglikelihood_matches_hflm_on_text(byte_model, budget, chunk):
    model, tokenizer = byte_model
    pairs = text_pairs()
    reference = hflm_scores(model, tokenizer, pairs)
    lm = FastLM(model, tokenizer, max_batch_tokens=budget, head_chunk_rows=chunk)
    ours = lm.loglikelihood(instances(pairs))
    assert_same(ours, reference)
    assert lm.stats.sliced_head
    # the duplicate and the trailing-space variant of (context, " mat") are scored once
    assert lm.stats.unique_requests == len(pairs) - 2
    assert lm.stats.rows < lm.stats.unique_requests  # prefix sharing (" yes"/" no", " mat" in " mat and slept")
    if budget:
        assert lm.stats.batches > 3


def test_cached_plan_serves_another_model(byte_model):
    """A second model with the same tokenizer reuses the tokenisation and batches, and still gets HFLM's numbers."""
    model, tokenizer = byte_model
    pairs = text_pairs()[::-1]
    first = FastLM(model, tokenizer, max_batch_tokens=128)
    assert_same(first.loglikelihood(instances(pairs)), hflm_scores(model, tokenizer, pairs))
    other = tiny_llama(seed=7)
    second = FastLM(other, byte_tokenizer(), max_batch_tokens=128)  # an equal tokenizer, another object
    ours = second.loglikelihood(instances(pairs))
    assert second.stats.plan_cached and not first.stats.plan_cached
    assert_same(ours, hflm_scores(other, tokenizer, pairs))
    assert ours != first.loglikelihood(instances(pairs))


def test_tokenisation_is_hflms(byte_model):
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = byte_model
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    pairs = [p for p in text_pairs() if p[0]]
    assert FastLM(model, tokenizer).encode_pairs(pairs) == [hflm._encode_pair(*p) for p in pairs]


def bos_byte_tokenizer():
    """The byte tokenizer with a post-processor that prepends <s> (like Gemma's, which needs BOS)."""
    from tokenizers import processors

    tokenizer = byte_tokenizer()
    bos = tokenizer.convert_tokens_to_ids("<s>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)])
    return tokenizer


@pytest.mark.parametrize("add_bos", [None, True, False])
def test_bos_adding_tokenizer_matches_hflm(byte_model, add_bos):
    """A tokenizer that adds BOS: HFLM's default keeps it, a context already starting with "<s>" gets no
    second one, ``add_bos_token`` forces either way; FastLM's ``add_special_tokens`` follows the same rules."""
    from lm_eval.models.huggingface import HFLM

    model, _ = byte_model
    tokenizer = bos_byte_tokenizer()
    assert tokenizer("ab")["input_ids"][0] == tokenizer.bos_token_id
    pairs = text_pairs() + [("<s>Already with BOS:", " yes"), ("<s>", " x")]
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, add_bos_token=add_bos)
    lm = FastLM(model, tokenizer, add_special_tokens=add_bos)
    with_context = [p for p in pairs if p[0]]
    assert lm.encode_pairs(with_context) == [hflm._encode_pair(*p) for p in with_context]
    assert_same(lm.loglikelihood(instances(pairs)), hflm.loglikelihood(instances(pairs)))


def test_left_truncation_matches_hflm():
    """Requests longer than the model's 64 positions are cut from the left like HFLM does."""
    model, tokenizer = build_tiny("llama-gqa"), tiny_tokenizer()
    words = tiny_text(400, seed=3).split()
    pairs = [(" ".join(words[i: i + n]), " " + " ".join(words[i + n: i + n + m]))
             for i, n, m in [(0, 10, 1), (5, 63, 1), (20, 70, 3), (40, 90, 5), (60, 200, 2), (0, 64, 1), (1, 62, 2)]]
    reference = hflm_scores(model, tokenizer, pairs)
    ours = FastLM(model, tokenizer, max_batch_tokens=200).loglikelihood(instances(pairs))
    assert_same(ours, reference)


@pytest.mark.parametrize("kind,sliced", [("gemma2", False), ("qwen3", True)])
def test_other_architectures(kind, sliced):
    """Gemma-2 soft-caps its logits after the head: FastLM must fall back to the model's own logits."""
    model, tokenizer = build_tiny(kind), tiny_tokenizer()
    words = tiny_text(300, seed=5).split()
    pairs = [(" ".join(words[i: i + 12]), " " + " ".join(words[i + 12: i + 12 + k])) for i in range(0, 200, 20)
             for k in (1, 2, 4)]
    reference = hflm_scores(model, tokenizer, pairs)
    lm = FastLM(model, tokenizer, max_batch_tokens=100)
    assert_same(lm.loglikelihood(instances(pairs)), reference)
    assert lm.stats.sliced_head is sliced


def test_full_logits_path_matches(byte_model):
    model, tokenizer = byte_model
    pairs = text_pairs()
    lm = FastLM(model, tokenizer, slice_head=False)
    assert_same(lm.loglikelihood(instances(pairs)), hflm_scores(model, tokenizer, pairs))
    assert not lm.stats.sliced_head


def test_acc_through_lm_eval_matches_hflm(byte_model):
    """The same lm-eval task run with HFLM and with FastLM: identical acc / acc_norm and per-doc responses."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from test_zeroshot import tiny_task_config

    model, tokenizer = byte_model
    outputs = {}
    for name, lm in (("hflm", HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)),
                     ("fast", FastLM(model, tokenizer, max_batch_tokens=256))):
        outputs[name] = evaluator.simple_evaluate(model=lm, tasks=[tiny_task_config()], num_fewshot=0,
                                                  task_manager=TaskManager(include_defaults=False), log_samples=True)
    ref, ours = (outputs[k]["results"]["hywia_tiny"] for k in ("hflm", "fast"))
    for metric in ("acc,none", "acc_norm,none"):
        assert ours[metric] == ref[metric]
    ref_resps, our_resps = ([s["filtered_resps"] for s in outputs[k]["samples"]["hywia_tiny"]]
                            for k in ("hflm", "fast"))
    for ref_doc, our_doc in zip(ref_resps, our_resps, strict=True):
        assert_same([tuple(r) for r in our_doc], [tuple(r) for r in ref_doc])


def test_rolling_and_generation_are_refused(byte_model):
    lm = FastLM(*byte_model)
    with pytest.raises(NotImplementedError, match="hflm"):
        lm.generate_until([])
    with pytest.raises(NotImplementedError, match="perplexity"):
        lm.loglikelihood_rolling([])


def test_model_mode_is_restored(byte_model):
    model, tokenizer = byte_model
    model.train()
    try:
        FastLM(model, tokenizer).loglikelihood(instances([("a b", " c")]))
        assert model.training
    finally:
        model.eval()
    assert torch.is_grad_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device next to the CPU")
def test_model_spread_over_devices_scores_as_on_one(byte_model):
    """``--device auto``: the decoder's output (final norm) on one device, the head and the input on another
    (here cuda:0 and the CPU, as two GPUs place them): the same scores as the model on one device."""
    import copy

    from accelerate import dispatch_model

    model, tokenizer = byte_model
    pairs = text_pairs()
    reference = FastLM(model, tokenizer, max_batch_tokens=64, head_chunk_rows=3).loglikelihood(instances(pairs))
    spread = copy.deepcopy(model)
    layers = len(spread.model.layers)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu", "model.norm": 0,
                  **{f"model.layers.{i}": "cpu" if i < layers // 2 else 0 for i in range(layers)}}
    spread = dispatch_model(spread, device_map=device_map, main_device="cpu")
    lm = FastLM(spread, tokenizer, max_batch_tokens=64, head_chunk_rows=3)
    assert_same(lm.loglikelihood(instances(pairs)), reference)
    assert lm.stats.sliced_head
