"""Chat QA scoring: can the model ANSWER a domain question when asked it in chat form?

Each `QAItem` question is rendered as one user turn in the model's chat template (or the
template named in `ScoreSettings.chat_template`, as the Chat tab's template picker does; a
model without a template of its own needs one named), generated greedily up to
`max_new_tokens` tokens, stopping at EOS or the template's turn-end marker, in batches
(`InferenceEngine.generate_batch`). The reply is compared with the reference answer and its
aliases after `normalize_answer` (lowercase, punctuation to spaces, whitespace collapsed):

- `contains` (the primary metric, reported as `acc`): a reference appears in the reply as a
  whole-word span. Chat models answer in a sentence that repeats the subject first ("Zorvex
  treats kelm fever."), so plain equality would call most right answers wrong;
- `exact`: the whole reply equals a reference.

Both are means over items with lm-eval's stderr (sample std / sqrt(n)).

    scores = score_answers(engine, task.items, ScoreSettings(max_new_tokens=32))
    answer_metrics(scores)  # {"acc": 0.6, "acc_stderr": 0.16, "exact": 0.1, ...}

Tests: `.venv/bin/python -m pytest -q tests/test_chat_qa.py`.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from studio.errors import ModelError
from studio.evaluation.loglikelihood import ScoringError
from studio.evaluation.tasks import QAItem
from studio.inference.chat_format import ChatMessage, chat_prompt
from studio.inference.engine import (
    GenerationResult,
    GenerationSettings,
    InferenceEngine,
    settings_for_prompt,
)

if TYPE_CHECKING:
    from studio.evaluation.scoring import ItemScore, ScoreSettings

LOG = logging.getLogger(__name__)

_SPACES = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed ("Kelm-Fever!" -> "kelm fever").

    Punctuation becomes a space rather than vanishing so "twice-daily" still holds the word
    "daily"; NFKC first, so full-width and composed characters compare equal.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return _SPACES.sub(" ", text).strip()


def answer_contains(generation: str, references: Sequence[str]) -> bool:
    """Whether a normalised reference is a whole-word span of the normalised generation."""
    said = f" {normalize_answer(generation)} "
    return any(ref and f" {ref} " in said for ref in map(normalize_answer, references))


def answer_exact(generation: str, references: Sequence[str]) -> bool:
    """Whether the normalised generation equals a normalised reference."""
    said = normalize_answer(generation)
    return bool(said) and any(said == normalize_answer(ref) for ref in references)


def chat_qa_prompt(
    engine: InferenceEngine, question: str, template: str | None
) -> tuple[str, GenerationSettings]:
    """The question as one user turn in the chat template, and the stop markers of its turn.

    ScoringError naming `chat_template` when the model has no template and none is named.
    """
    try:
        prompt = chat_prompt(
            engine.tokenizer, [ChatMessage(role="user", content=question)], template=template
        )
    except ModelError as error:  # the Chat tab's rule: 'auto' needs the model's own template
        raise ScoringError(
            f"model '{engine.spec.name}' has no chat template of its own, so chat-QA questions "
            "cannot be asked in chat form; set the chat template (chat_template, e.g. chatml)"
        ) from error
    return prompt.text, settings_for_prompt(GenerationSettings(temperature=0.0), prompt)


def score_answers(
    engine: InferenceEngine,
    items: Sequence[QAItem],
    settings: ScoreSettings,
    *,
    progress: Callable[[int, int], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[ItemScore]:
    """Generate a greedy reply to every question (batched) and score it against its answer."""
    from studio.evaluation.scoring import ItemScore

    asked = [chat_qa_prompt(engine, item.question, settings.chat_template) for item in items]
    texts = [text for text, _ in asked]
    # One template for every question, so one set of turn-end markers serves the batch.
    stops = asked[0][1] if asked else GenerationSettings(temperature=0.0)
    generation = stops.model_copy(update={"max_new_tokens": settings.max_new_tokens})
    scores: list[ItemScore] = []
    for start in range(0, len(items), settings.batch_size):
        if check_cancel is not None:
            check_cancel()
        chunk = items[start : start + settings.batch_size]
        replies: list[GenerationResult] = engine.generate_batch(
            texts[start : start + settings.batch_size],
            generation,
            add_special_tokens=False,  # the rendered template holds its own special tokens
            batch_size=settings.batch_size,
            cancel=cancel,
        )
        if check_cancel is not None:  # a cancelled batch's replies are cut short: not scores
            check_cancel()
        for item, reply in zip(chunk, replies, strict=True):
            scores.append(
                ItemScore(
                    id=item.id,
                    gold=None,
                    prediction=None,
                    prediction_norm=None,
                    logprobs=(),
                    tokens=reply.tokens,
                    generation=reply.text,
                    contains=answer_contains(reply.text, item.references),
                    exact=answer_exact(reply.text, item.references),
                )
            )
        if progress is not None:
            progress(len(scores), len(items))
    return scores


def answer_metrics(scores: Sequence[ItemScore]) -> dict[str, float]:
    """acc (= contains), exact, their stderr, and the mean reply length in tokens."""
    from studio.evaluation.scoring import mean_and_stderr

    contains = [float(bool(s.contains)) for s in scores]
    exact = [float(bool(s.exact)) for s in scores]
    acc, acc_stderr = mean_and_stderr(contains)
    exact_mean, exact_stderr = mean_and_stderr(exact)
    tokens, _ = mean_and_stderr([float(s.tokens or 0) for s in scores])
    return {
        "acc": acc,
        "acc_stderr": acc_stderr,
        "exact": exact_mean,
        "exact_stderr": exact_stderr,
        "reply_tokens": tokens,
    }
