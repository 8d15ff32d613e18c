"""Score a model on a task: multiple-choice accuracy (acc, acc_norm), perplexity, chat QA.

Everything goes through the engine protocol (`studio.inference.engine`), so the transformers
engine and the vLLM engine score the same way; the metrics are lm-eval-harness's:

- multiple choice: each choice is scored as log P(" " + choice | query) (lm-eval's
  target_delimiter); `acc` takes the argmax of those log-likelihoods, `acc_norm` the argmax of
  log-likelihood / len(choice) in characters; stderr = sample std / sqrt(n) (NaN when n < 2).
- perplexity: token log-probs of the reference only (the prompt is context; a space joins
  them unless one of them has whitespace at the join), long texts in
  lm-eval's rolling windows; `perplexity` = exp(NLL per token), `bits_per_byte` and
  `word_perplexity` as lm-eval's wikitext computes them;
- chat QA: each question asked in the model's chat template, answered greedily (batched), the
  reply right when it holds the reference answer as whole words (`acc`, from `contains`) or is
  exactly it (`exact`); see studio.evaluation.chat_qa. The replies are kept per item.

Fast path: when the engine can score token ids directly (`TokenGroupScorer`: the transformers
engine, which runs a batch of questions in one packed forward pass, each question's context
once with all its choices behind a block mask and few-shot examples shared by the batch once
per row, instead of one row per choice as lm-eval does; the vLLM engine, one request per choice
on the same token ids), nothing is decoded or re-encoded; tests/test_scoring.py and
tests/test_score_fast_path.py prove the log-probs equal the protocol path's,
tests/test_vllm_engine.py that both engines agree.

    score = score_task(engine, load_task("medmcqa_dev.jsonl"), ScoreSettings(num_fewshot=5))
    score.primary  # ("acc_norm", 0.41, 0.02)

Tests: `.venv/bin/python -m pytest -q tests/test_scoring.py tests/test_score_fast_path.py
tests/test_lm_eval_parity.py`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field, field_validator

from studio.errors import StudioError
from studio.evaluation.chat_qa import answer_metrics, score_answers
from studio.evaluation.loglikelihood import (
    ScoringError,
    TokenGroup,
    encode,
    encode_pair,
    fit_pair,
    model_max_length,
    prefix_token_id,
    rolling_windows,
    score_groups,
    token_scorer,
)
from studio.evaluation.tasks import TARGET_DELIMITER, ChoiceItem, Task, TaskKind, TextItem
from studio.inference.engine import InferenceEngine, LogLikelihood

LOG = logging.getLogger(__name__)

__all__ = [
    "ItemScore",
    "ScoreSettings",
    "ScoringCancelled",
    "ScoringError",
    "TaskScore",
    "score_task",
]

Progress = Callable[[int, int], None]


class ScoringCancelled(StudioError):
    """Scoring was cancelled before it finished."""


class ScoreSettings(BaseModel, frozen=True):
    """How to score a task; `key()` is the settings' part of a cached result's key."""

    num_fewshot: int = Field(
        default=0,
        ge=0,
        le=64,
        description="solved examples before each question (the task's first items, not itself)",
    )
    limit: int | None = Field(
        default=None, ge=1, description="quick mode: score only the first N items; empty = all"
    )
    batch_size: int = Field(
        default=8, ge=1, le=1024, description="questions (or text windows) per forward pass"
    )
    max_length: int | None = Field(
        default=None,
        ge=2,
        description="tokens per perplexity window and longest context; empty = the model's max",
    )
    max_new_tokens: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="chat QA: longest reply, in tokens (a reply cut short may miss its answer)",
    )
    chat_template: str | None = Field(
        default=None,
        description="chat QA: template to ask the questions in (a name such as chatml, or "
        "jinja); empty = each model's own",
    )

    @field_validator("chat_template", mode="before")
    @classmethod
    def _auto_is_none(cls, value: Any) -> Any:
        # The Chat tab's picker says "auto" for the model's own template; so does a blank box.
        if isinstance(value, str) and value.strip() in ("", "auto"):
            return None
        return value

    def key(self, kind: TaskKind | None = None) -> str:
        """Stable string of what changes the scores of a task of `kind` (None: any kind).

        batch_size changes no score, so it is left out; the generation settings only change
        chat-QA scores, so other kinds leave them out too (their cached scores stay valid).
        """
        key = f"fewshot={self.num_fewshot};limit={self.limit};max_length={self.max_length}"
        if kind in (None, "chat_qa"):
            template = self.chat_template
            if template is not None and len(template) > 64:  # jinja text: its digest
                template = "sha256:" + hashlib.sha256(template.encode()).hexdigest()
            key += f";max_new_tokens={self.max_new_tokens};chat_template={template}"
        return key


@dataclass(frozen=True)
class ItemScore:
    """One item's result: per-choice log-likelihoods (MC), the reference's log-prob (ppl), or
    the model's reply and whether it holds the answer (chat QA)."""

    id: str
    gold: int | None
    prediction: int | None  # argmax of log-likelihood (acc)
    prediction_norm: int | None  # argmax of log-likelihood / len(choice) (acc_norm)
    logprobs: tuple[float, ...]  # one per choice; perplexity: (sum of reference log-probs,)
    tokens: int | None = None  # perplexity: reference tokens scored; chat QA: reply tokens
    generation: str | None = None  # chat QA: the greedy reply
    contains: bool | None = None  # chat QA: a reference is a whole-word span of the reply
    exact: bool | None = None  # chat QA: the reply is a reference


@dataclass(frozen=True)
class TaskScore:
    """A task's metrics and per-item results."""

    task: str
    kind: TaskKind
    n: int
    metrics: dict[str, float]
    items: tuple[ItemScore, ...]
    seconds: float

    @property
    def primary(self) -> tuple[str, float, float | None]:
        """(metric, value, stderr): acc_norm for multiple choice, perplexity for text, acc
        (the reply holds the answer) for chat QA."""
        if self.kind == "chat_qa":
            return "acc", self.metrics["acc"], self.metrics["acc_stderr"]
        if self.kind == "multiple_choice":
            return "acc_norm", self.metrics["acc_norm"], self.metrics["acc_norm_stderr"]
        return "perplexity", self.metrics["perplexity"], None

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "kind": self.kind,
            "n": self.n,
            "metrics": dict(self.metrics),
            "items": [asdict(item) for item in self.items],
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskScore:
        items = tuple(
            ItemScore(
                id=str(item["id"]),
                gold=item.get("gold"),
                prediction=item.get("prediction"),
                prediction_norm=item.get("prediction_norm"),
                logprobs=tuple(float(x) for x in item["logprobs"]),
                tokens=item.get("tokens"),
                generation=item.get("generation"),
                contains=item.get("contains"),
                exact=item.get("exact"),
            )
            for item in data["items"]
        )
        return cls(
            task=str(data["task"]),
            kind=data["kind"],
            n=int(data["n"]),
            metrics={k: float(v) for k, v in data["metrics"].items()},
            items=items,
            seconds=float(data["seconds"]),
        )


def score_task(
    engine: InferenceEngine,
    task: Task,
    settings: ScoreSettings | None = None,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> TaskScore:
    """Score a loaded engine on a task; `progress(done, total)` as items finish.

    Raises ScoringCancelled soon after `cancel` is set (between batches), ScoringError when
    an item cannot be scored (e.g. a choice longer than the model's window).
    """
    settings = settings or ScoreSettings()
    items = task.items if settings.limit is None else task.items[: settings.limit]
    started = time.perf_counter()
    if task.kind == "chat_qa":
        scores = score_answers(
            engine,
            items,  # type: ignore[arg-type]
            settings,
            progress=progress,
            check_cancel=lambda: _check(cancel),
            cancel=cancel,
        )
        metrics = answer_metrics(scores)
    elif task.kind == "multiple_choice":
        scores = _score_choices(engine, task, items, settings, progress, cancel)  # type: ignore[arg-type]
        metrics = choice_metrics(scores)
    else:
        scores = _score_texts(engine, task, items, settings, progress, cancel)  # type: ignore[arg-type]
        metrics = text_metrics(scores, items)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    LOG.info("scored %s: %d items in %.2f s (%s)", task.name, len(items), seconds, metrics)
    return TaskScore(task.name, task.kind, len(items), metrics, tuple(scores), seconds)


# -- multiple choice --------------------------------------------------------------------------


def _score_choices(
    engine: InferenceEngine,
    task: Task,
    items: Sequence[ChoiceItem],
    settings: ScoreSettings,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> list[ItemScore]:
    contexts = [task.fewshot_context(item, settings.num_fewshot) for item in items]
    fast = token_scorer(engine) is not None
    max_length = model_max_length(engine, settings.max_length) if fast else 0
    scores: list[ItemScore] = []
    for start in range(0, len(items), settings.batch_size):
        _check(cancel)
        chunk = range(start, min(start + settings.batch_size, len(items)))
        if fast:
            per_item = _choice_logprobs_fast(engine, items, contexts, chunk, max_length, settings)
        else:
            pairs = [
                (contexts[i], TARGET_DELIMITER + choice)
                for i in chunk
                for choice in items[i].choices
            ]
            flat = iter(engine.score_loglikelihoods(pairs, batch_size=settings.batch_size))
            per_item = [[next(flat).logprob for _ in items[i].choices] for i in chunk]
        scores += [_choice_score(items[i], lls) for i, lls in zip(chunk, per_item, strict=True)]
        if progress is not None:
            progress(len(scores), len(items))
    return scores


def _choice_logprobs_fast(
    engine: InferenceEngine,
    items: Sequence[ChoiceItem],
    contexts: Sequence[str],
    chunk: range,
    max_length: int,
    settings: ScoreSettings,
) -> list[list[float]]:
    # One group per distinct (truncated) context; normally one group per question.
    groups: list[TokenGroup] = []
    where: list[list[tuple[int, int]]] = []  # per item, per choice: (group, position)
    index: dict[tuple[int, ...], int] = {}
    for i in chunk:
        slots = []
        own = encode(engine.tokenizer, contexts[i].rstrip()) if contexts[i] else None
        for choice in items[i].choices:
            ctx, cont = encode_pair(
                engine.tokenizer, contexts[i], TARGET_DELIMITER + choice, context_ids=own
            )
            ctx = fit_pair(ctx, cont, max_length, label=f"item {items[i].id}")
            key = (i, *ctx)
            if key not in index:
                index[key] = len(groups)
                groups.append((ctx, []))
            slots.append((index[key], len(groups[index[key]][1])))
            groups[index[key]][1].append(cont)
        where.append(slots)
    results = score_groups(engine, groups, batch_size=settings.batch_size)
    return [[results[g][k].logprob for g, k in slots] for slots in where]


def _choice_score(item: ChoiceItem, logprobs: Sequence[float]) -> ItemScore:
    normed = [lp / len(choice) for lp, choice in zip(logprobs, item.choices, strict=True)]
    return ItemScore(
        id=item.id,
        gold=item.gold,
        prediction=_argmax(logprobs),
        prediction_norm=_argmax(normed),
        logprobs=tuple(float(x) for x in logprobs),
    )


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first max, as numpy's


def choice_metrics(scores: Sequence[ItemScore]) -> dict[str, float]:
    """acc, acc_norm and their stderr (sample std / sqrt(n), lm-eval's mean_stderr)."""
    acc = [float(s.prediction == s.gold) for s in scores]
    norm = [float(s.prediction_norm == s.gold) for s in scores]
    return {
        "acc": _mean(acc),
        "acc_stderr": _stderr(acc),
        "acc_norm": _mean(norm),
        "acc_norm_stderr": _stderr(norm),
    }


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std / sqrt(n)): lm-eval's mean and mean_stderr (NaN when undefined)."""
    return _mean(values), _stderr(values)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _stderr(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return math.nan
    mu = _mean(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


# -- perplexity -------------------------------------------------------------------------------


def _score_texts(
    engine: InferenceEngine,
    task: Task,
    items: Sequence[TextItem],
    settings: ScoreSettings,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> list[ItemScore]:
    max_length = model_max_length(engine, settings.max_length)
    tokenizer = engine.tokenizer
    scores: list[ItemScore] = []
    for start in range(0, len(items), settings.batch_size):
        _check(cancel)
        chunk = items[start : start + settings.batch_size]
        windows: list[list[tuple[list[int], list[int]]]] = []
        for item in chunk:
            if item.prompt:
                prefix, tokens = encode_pair(tokenizer, item.prompt, _joined(item))
            else:  # a plain corpus chunk: lm-eval's rolling loglikelihood
                prefix, tokens = [prefix_token_id(tokenizer)], encode(tokenizer, item.reference)
            if not tokens:
                raise ScoringError(
                    f"task '{task.name}' item {item.id}: the reference encodes to no tokens; "
                    "give it some text"
                )
            windows.append(rolling_windows(prefix, tokens, max_length))
        groups = [(ctx, [cont]) for item_windows in windows for ctx, cont in item_windows]
        results = iter(_score_windows(engine, groups, settings, cancel))
        for item, item_windows in zip(chunk, windows, strict=True):
            parts = [next(results) for _ in item_windows]
            scores.append(
                ItemScore(
                    id=item.id,
                    gold=None,
                    prediction=None,
                    prediction_norm=None,
                    logprobs=(float(sum(p.logprob for p in parts)),),
                    tokens=sum(len(p.continuation_tokens) for p in parts),
                )
            )
        if progress is not None:
            progress(len(scores), len(items))
    return scores


def _joined(item: TextItem) -> str:
    """The reference as scored after the prompt: one space at the join unless one is there."""
    if item.prompt[-1:].isspace() or item.reference[:1].isspace():
        return item.reference
    return TARGET_DELIMITER + item.reference


def _score_windows(
    engine: InferenceEngine,
    groups: list[TokenGroup],
    settings: ScoreSettings,
    cancel: threading.Event | None,
) -> list[LogLikelihood]:
    out: list[LogLikelihood] = []
    # A window's logits are tokens x vocab floats: cap the tokens per pass (~256 MB of logits).
    vocab = max(len(engine.tokenizer), 1)
    budget = max(1, (1 << 26) // vocab)
    start = 0
    while start < len(groups):
        _check(cancel)
        end, tokens = start, 0
        while end < len(groups) and end - start < settings.batch_size:
            tokens += len(groups[end][1][0])
            if tokens > budget and end > start:
                break
            end += 1
        out += [g[0] for g in score_groups(engine, groups[start:end], batch_size=end - start)]
        start = end
    return out


def text_metrics(scores: Sequence[ItemScore], items: Sequence[TextItem]) -> dict[str, float]:
    """perplexity and NLL per token of the references; bits per byte and word perplexity."""
    logprob = sum(s.logprobs[0] for s in scores)
    tokens = sum(s.tokens or 0 for s in scores)
    n_bytes = sum(len(item.reference.encode("utf-8")) for item in items)
    words = sum(len(item.reference.split()) for item in items)
    nll = -logprob / tokens if tokens else math.nan
    return {
        "perplexity": math.exp(nll) if tokens else math.nan,
        "nll_per_token": nll,
        "bits_per_byte": -logprob / n_bytes / math.log(2) if n_bytes else math.nan,
        "word_perplexity": math.exp(-logprob / words) if words else math.nan,
        "tokens": float(tokens),
    }


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise ScoringCancelled("scoring was cancelled; start it again to get scores")
