"""Scoring on a real tiny Llama: the shared-prefix fast path, metrics, windows, progress, cancel.

Properties: the transformers engine's fast path (one packed pass per batch: each question's
context run once with all its choices behind a block mask) gives the same log-probs as the generic engine protocol within 1e-4 in
fp32, for questions and for perplexity windows; acc_norm divides by the choice's characters;
stderr is lm-eval's; results do not depend on batch size; a cancel stops scoring.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest

from studio.evaluation.loglikelihood import encode_pair, rolling_windows
from studio.evaluation.scoring import (
    ItemScore,
    ScoreSettings,
    ScoringCancelled,
    TaskScore,
    choice_metrics,
    score_task,
)
from studio.evaluation.tasks import ChoiceItem, Task, load_task
from studio.inference.engine import InferenceEngine, ModelSpec
from studio.inference.transformers_engine import TransformersEngine

QUESTIONS = [
    ("paris is the capital of", ["france", "the sea", "kelm fever", "a cat"], 0),
    ("the sun rises in the", ["west", "east", "library", "river flows"], 1),
    ("water boils at one hundred", ["books", "patients", "degrees", "eye"], 2),
    ("a cat is an animal that likes to", ["read books", "take two doses", "sea", "sleep"], 3),
    ("zorvex treats the", ["kelm fever", "eye", "capital", "river"], 0),
    ("the drug miravine lowers pressure in the", ["library", "eye", "sun", "water"], 1),
]
TEXT = (
    "the sun rises in the east and sets in the west . paris is the capital of france . "
    "water boils at one hundred degrees . zorvex treats the kelm fever ."
)


class ProtocolOnly:
    """The engine seen only through the `InferenceEngine` protocol: no token-level fast path
    (what an engine without `score_token_groups` gets; both shipped engines have one)."""

    def __init__(self, engine: TransformersEngine) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        if name == "score_token_groups":
            raise AttributeError(name)
        return getattr(self._engine, name)


@pytest.fixture(scope="module")
def engine(tiny_family: dict[str, Path]) -> TransformersEngine:
    loaded = TransformersEngine(ModelSpec.from_path(tiny_family["chat"], dtype="float32"))
    loaded.load()
    return loaded


@pytest.fixture
def mc_task(tmp_path: Path) -> Task:
    path = tmp_path / "mc.jsonl"
    rows = [
        {"id": f"q{i}", "question": q, "options": o, "answer": a}
        for i, (q, o, a) in enumerate(QUESTIONS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return load_task(path)


@pytest.mark.parametrize("num_fewshot", [0, 3])
def test_fast_path_equals_the_engine_protocol(
    engine: TransformersEngine, mc_task: Task, num_fewshot: int
) -> None:
    """Packed-pass log-probs == score_loglikelihoods per pair (fp32, 1e-4)."""
    settings = ScoreSettings(num_fewshot=num_fewshot, batch_size=4)
    fast = score_task(engine, mc_task, settings)
    generic = score_task(ProtocolOnly(engine), mc_task, settings)  # type: ignore[arg-type]
    assert isinstance(ProtocolOnly(engine), InferenceEngine)
    for a, b in zip(fast.items, generic.items, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert (a.prediction, a.prediction_norm) == (b.prediction, b.prediction_norm)
    assert fast.metrics == generic.metrics


def test_score_token_groups_matches_per_pair_scoring(engine: TransformersEngine) -> None:
    """Mixed groups (one-token and multi-token continuations, different context lengths)."""
    tok = engine.tokenizer
    pairs = [(q, " " + option) for q, options, _ in QUESTIONS for option in options]
    encoded = [encode_pair(tok, c, x) for c, x in pairs]
    groups = [(encoded[4 * i][0], [encoded[4 * i + k][1] for k in range(4)]) for i in range(6)]
    assert {len(c) for _, conts in groups for c in conts} >= {1, 2, 3}
    grouped = engine.score_token_groups(groups, batch_size=4)
    single = engine.score_loglikelihoods(pairs, batch_size=3)
    for i, results in enumerate(grouped):
        for k, result in enumerate(results):
            expected = single[4 * i + k]
            assert result.continuation_tokens == expected.continuation_tokens
            assert result.token_logprobs == pytest.approx(expected.token_logprobs, abs=1e-4)
            assert result.is_greedy == expected.is_greedy


def test_results_do_not_depend_on_batch_size(engine: TransformersEngine, mc_task: Task) -> None:
    one = score_task(engine, mc_task, ScoreSettings(batch_size=1))
    many = score_task(engine, mc_task, ScoreSettings(batch_size=16))
    for a, b in zip(one.items, many.items, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_acc_norm_divides_by_choice_characters_and_stderr_is_lm_evals() -> None:
    """acc picks the highest log-likelihood; acc_norm the highest per character."""
    item = ChoiceItem("x", "q", ("a", "longer answer"), gold=1)
    from studio.evaluation.scoring import _choice_score

    scored = _choice_score(item, [-2.0, -6.5])  # per char: -2.0 vs -0.5
    assert (scored.prediction, scored.prediction_norm) == (0, 1)
    scores = [
        ItemScore(str(i), gold=0, prediction=p, prediction_norm=0, logprobs=(0.0,))
        for i, p in enumerate([0, 0, 1, 1, 1])
    ]
    metrics = choice_metrics(scores)
    assert metrics["acc"] == pytest.approx(0.4)
    assert metrics["acc_stderr"] == pytest.approx(math.sqrt(0.3 / 5))  # sample var 0.3
    assert metrics["acc_norm"] == 1.0 and metrics["acc_norm_stderr"] == 0.0
    assert math.isnan(choice_metrics(scores[:1])["acc_stderr"])


def test_limit_progress_and_json_round_trip(engine: TransformersEngine, mc_task: Task) -> None:
    calls: list[tuple[int, int]] = []
    score = score_task(
        engine,
        mc_task,
        ScoreSettings(limit=5, batch_size=2),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert score.n == 5 and [i.id for i in score.items] == ["q0", "q1", "q2", "q3", "q4"]
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert score.primary == (
        "acc_norm",
        score.metrics["acc_norm"],
        score.metrics["acc_norm_stderr"],
    )
    again = TaskScore.from_json(json.loads(json.dumps(score.to_json())))
    assert again == score


def test_cancel_stops_scoring(engine: TransformersEngine, mc_task: Task) -> None:
    cancel = threading.Event()

    def stop_after_first(done: int, total: int) -> None:
        cancel.set()

    with pytest.raises(ScoringCancelled, match="cancelled"):
        score_task(
            engine, mc_task, ScoreSettings(batch_size=1), progress=stop_after_first, cancel=cancel
        )


def test_settings_key_ignores_batch_size_only() -> None:
    assert ScoreSettings(batch_size=1).key() == ScoreSettings(batch_size=64).key()
    keys = {
        ScoreSettings().key(),
        ScoreSettings(num_fewshot=5).key(),
        ScoreSettings(limit=10).key(),
        ScoreSettings(max_length=512).key(),
    }
    assert len(keys) == 4
    with pytest.raises(ValueError):
        ScoreSettings(limit=0)


def test_rolling_windows_predict_every_token_once_within_the_window() -> None:
    tokens = list(range(100, 137))
    for prefix in ([1], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]):
        windows = rolling_windows(prefix, tokens, 8)
        assert [t for _, cont in windows for t in cont] == tokens
        assert all(len(ctx) + len(cont) - 1 <= 8 for ctx, cont in windows)
        seq = prefix + tokens
        for ctx, cont in windows:  # each window's context is what precedes its predictions
            start = seq.index(cont[0], len(prefix))
            assert seq[start - len(ctx) : start] == ctx
    # lm-eval's first window: prefix token + 7 tokens predicting 8 tokens.
    assert rolling_windows([1], tokens, 8)[0] == ([1], tokens[:8])


def test_corpus_perplexity_windows_fast_equals_protocol(
    engine: TransformersEngine, tmp_path: Path
) -> None:
    """Perplexity over several windows: fast path == protocol path; metrics are consistent."""
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT + "\n\n" + TEXT[:60] + "\n", encoding="utf-8")
    task = load_task(path)
    settings = ScoreSettings(max_length=12)
    fast = score_task(engine, task, settings)
    generic = score_task(ProtocolOnly(engine), task, settings)  # type: ignore[arg-type]
    assert [i.tokens for i in fast.items] == [i.tokens for i in generic.items]
    assert fast.items[0].tokens is not None and fast.items[0].tokens > 2 * 12  # 3+ windows
    for a, b in zip(fast.items, generic.items, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    total = sum(i.logprobs[0] for i in fast.items)
    tokens = sum(i.tokens or 0 for i in fast.items)
    assert fast.metrics["perplexity"] == pytest.approx(math.exp(-total / tokens))
    assert fast.primary == ("perplexity", fast.metrics["perplexity"], None)


def test_prompt_reference_scores_only_the_reference(
    engine: TransformersEngine, tmp_path: Path
) -> None:
    """log P(reference | prompt) equals the engine's loglikelihood of " " + reference."""
    path = tmp_path / "qa.jsonl"
    rows = [
        {"prompt": "where does the sun rise ?", "reference": "in the east ."},
        {"prompt": "what is the capital of france ?", "reference": "paris ."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    score = score_task(engine, load_task(path))
    for item, row in zip(score.items, rows, strict=True):
        expected = engine.score_loglikelihood(row["prompt"], " " + row["reference"])
        assert item.logprobs[0] == pytest.approx(expected.logprob, abs=1e-4)
        assert item.tokens == len(expected.continuation_tokens)
