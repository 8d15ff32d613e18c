"""Score runs and sweeps: models and live merges scored on tasks, each score cached.

Two requests, one report:

- `ScoreRequest`: score a few targets (model folders, or merge recipes merged live in memory)
  on a few tasks -- the "parents vs merged side by side" table;
- `SweepRequest`: vary ONE merge parameter (t, weight, density, lambda, ...) over N values with
  the live merger (no disk writes), score every point on the tasks; the recipe's own models are
  scored too as the curve's reference lines (the study's "score against merge weight" chart).

Both produce a `ScoreReport` of `ScoreRow`s (target, parameter value, task, metric, value,
stderr) that the table, the plotly chart (studio.plots.sweep_chart) and the CSV export read,
plus, for chat-QA tasks, one `AnswerRow` per (target, question): the reference, the model's
reply and whether it counted, so a user sees WHY a point scored what it did. Every (model or
merge point, task, settings, engine) is looked up in the `ResultStore` first, so revisiting a
point is instant.

Every target is scored in the request's `dtype`: a merge point's recipe gets it as its
`out_dtype` (`scored_recipe`), which is the dtype the live merger's model is loaded in, so the
cache key's dtype is the one the point was scored in.

How a sweep sets its parameter (`with_parameter`): a global parameter (t, lambda) is set on the
recipe; a per-model one is set on every non-base model, except `weight` on a two-model merge,
which is the weight of the SECOND model with the first getting 1 - value (the axis runs from the
first model, 0, to the second, 1), unless `model_index` names the one model to vary. With
`only_filter` (e.g. mlp) the value applies only to tensors whose names contain it: the recipe's
own value stays for every other tensor (points are labelled weight[mlp]=0.75).

These run in a job worker (studio.evaluation.worker); the functions take a progress callback
so the worker reports progress (cancel kills the worker's process group).

    report = run_sweep(SweepRequest(recipe=yaml_text, parameter="weight", values=(0, .5, 1),
                                    tasks=(task_path,)), store=ResultStore(db))
    report.to_csv()
"""

from __future__ import annotations

import csv
import gc
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from studio.errors import StudioError
from studio.evaluation.results import (
    ResultStore,
    folder_fingerprint,
    recipe_fingerprint,
    score_key,
)
from studio.evaluation.scoring import ScoreSettings, TaskScore, score_task
from studio.evaluation.tasks import QAItem, Task, load_task
from studio.inference.engine import InferenceEngine, ModelSpec
from studio.recipes.methods import ParamScope, get_method
from studio.recipes.recipe import (
    FilteredValue,
    MergeRecipe,
    ParamValue,
    RecipeModel,
    resolve_paths,
    validate_recipe,
)
from studio.recipes.yaml_io import recipe_from_yaml, recipe_to_yaml

LOG = logging.getLogger(__name__)

ScoreDtype = Literal["float32", "bfloat16", "float16"]
TargetKind = Literal["model", "merge", "parent", "checkpoint"]
# DARE/DELLA masks: the same seed as the live preview, so a sweep point equals what the Merge
# tab showed for the same sliders.
SWEEP_SEED = 0
MAX_SWEEP_POINTS = 50

Progress = Callable[[int, int, str], None]


class SweepError(StudioError):
    """A score or sweep request cannot run as asked."""


class ScoreTarget(BaseModel, frozen=True):
    """One thing to score: a model folder, or a merge recipe merged live in memory."""

    label: str = Field(description="name shown in the table and the chart")
    model: str | None = Field(default=None, description="model folder")
    recipe: str | None = Field(default=None, description="mergekit YAML of a merge")

    @model_validator(mode="after")
    def _one_source(self) -> ScoreTarget:
        if (self.model is None) == (self.recipe is None):
            raise ValueError(f"target '{self.label}': give either a model folder or a recipe")
        return self


class ScoreOptions(BaseModel, frozen=True):
    """What every score request has: the tasks, the scoring settings, the dtype."""

    tasks: tuple[str, ...] = Field(description="task files (JSONL, Parquet, CSV, txt)")
    settings: ScoreSettings = Field(default_factory=ScoreSettings)
    dtype: ScoreDtype = Field(default="float32", description="dtype the models are scored in")

    @field_validator("tasks")
    @classmethod
    def _some_tasks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("choose at least one task")
        return value


class ScoreRequest(ScoreOptions, frozen=True):
    targets: tuple[ScoreTarget, ...] = Field(description="models and merges to score")

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, value: tuple[ScoreTarget, ...]) -> tuple[ScoreTarget, ...]:
        if not value:
            raise ValueError("choose at least one model to score")
        return value


class SweepRequest(ScoreOptions, frozen=True):
    recipe: str = Field(description="mergekit YAML of the merge whose parameter is swept")
    parameter: str = Field(description="the parameter to vary: t, weight, density, lambda, ...")
    values: tuple[float, ...] = Field(description="the parameter values, in order")
    model_index: int | None = Field(
        default=None, description="vary this model's per-model parameter only (0-based)"
    )
    include_parents: bool = Field(default=True, description="also score the recipe's models")
    only_filter: str | None = Field(
        default=None,
        description="vary the parameter only on tensors whose names contain this (mlp, "
        "self_attn, ...); every other tensor keeps the recipe's value",
    )

    @field_validator("only_filter")
    @classmethod
    def _real_filter(cls, value: str | None) -> str | None:
        return (value or "").strip() or None  # an empty form field: the whole model

    @property
    def point_name(self) -> str:
        """How a point's label names the parameter: weight, or weight[mlp] when filtered."""
        return f"{self.parameter}[{self.only_filter}]" if self.only_filter else self.parameter

    def recipe_at(self, recipe: MergeRecipe, value: float) -> MergeRecipe:
        """`recipe` at one point of this sweep (`with_parameter` with this request's options)."""
        return with_parameter(
            recipe,
            self.parameter,
            value,
            model_index=self.model_index,
            only_filter=self.only_filter,
        )

    @field_validator("values")
    @classmethod
    def _point_count(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not 1 <= len(value) <= MAX_SWEEP_POINTS:
            raise ValueError(f"a sweep has 1 to {MAX_SWEEP_POINTS} points; got {len(value)}")
        return value


@dataclass(frozen=True)
class ScoreRow:
    """One (target, task) score; `value` is the swept parameter's value at a merge point."""

    label: str
    kind: TargetKind
    value: float | None
    task: str
    metric: str
    score: float
    stderr: float | None
    n: int
    cached: bool
    seconds: float


@dataclass(frozen=True)
class AnswerRow:
    """One chat-QA question as one target answered it (see studio.evaluation.chat_qa)."""

    label: str
    value: float | None
    task: str
    id: str
    question: str
    reference: str  # the answer, then its aliases, joined by " | "
    generation: str
    correct: bool  # a reference is a whole-word span of the reply (the task's acc)
    exact: bool  # the reply is a reference


ANSWER_COLUMNS = ["label", "value", "task", "id", "question", "reference", "generation"]
ANSWER_COLUMNS += ["correct", "exact"]


@dataclass(frozen=True)
class ScoreReport:
    rows: tuple[ScoreRow, ...]
    parameter: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    answers: tuple[AnswerRow, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "parameter": self.parameter,
            "rows": [asdict(r) for r in self.rows],
            "details": self.details,
            "answers": [asdict(a) for a in self.answers],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoreReport:
        rows = tuple(ScoreRow(**r) for r in data.get("rows", ()))
        answers = tuple(AnswerRow(**a) for a in data.get("answers", ()))
        return cls(
            rows=rows,
            parameter=data.get("parameter"),
            details=data.get("details", {}),
            answers=answers,
        )

    def answers_csv(self) -> str:
        """The chat-QA replies: one line per (target, question)."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=ANSWER_COLUMNS)
        writer.writeheader()
        for answer in self.answers:
            writer.writerow(asdict(answer))
        return out.getvalue()

    def answers_table(self) -> tuple[list[str], list[list[Any]]]:
        """(headers, rows) of the chat-QA replies for the Score tab."""
        headers = ["model", *([self.parameter] if self.parameter else [])]
        headers += ["task", "question", "reference", "reply", "correct", "exact"]
        body = [
            [
                a.label,
                *([a.value] if self.parameter else []),
                a.task,
                a.question,
                a.reference,
                a.generation,
                a.correct,
                a.exact,
            ]
            for a in self.answers
        ]
        return headers, body

    def to_csv(self) -> str:
        out = io.StringIO()
        columns = ["label", "kind", "value", "task", "metric", "score", "stderr", "n", "cached"]
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow(asdict(row))
        return out.getvalue()

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """(headers, rows): one row per target, one column per task's primary metric."""
        tasks = list(dict.fromkeys(r.task for r in self.rows))
        targets = list(dict.fromkeys((r.label, r.value) for r in self.rows))
        by_key = {(r.label, r.value, r.task): r for r in self.rows}
        headers = ["model", *(self.parameter and [self.parameter] or [])]
        headers += [f"{t} ({_metric_of(self.rows, t)})" for t in tasks]
        body = []
        for label, value in targets:
            line: list[Any] = [label, *([value] if self.parameter else [])]
            for task in tasks:
                row = by_key.get((label, value, task))
                line.append(None if row is None else _cell(row))
            body.append(line)
        return headers, body


def _metric_of(rows: Sequence[ScoreRow], task: str) -> str:
    return next(r.metric for r in rows if r.task == task)


def _cell(row: ScoreRow) -> str:
    text = f"{row.score:.4g}"
    return text if row.stderr is None else f"{text} ± {row.stderr:.2g}"


# --------------------------------------------------------------------------- parameters


def with_parameter(
    recipe: MergeRecipe,
    name: str,
    value: float,
    *,
    model_index: int | None = None,
    only_filter: str | None = None,
) -> MergeRecipe:
    """`recipe` with parameter `name` set to `value` (see the module docstring for the rule);
    with `only_filter`, only on the tensors whose names contain it (a filtered value in front of
    the recipe's own, which still covers every other tensor)."""
    spec = get_method(recipe.method).param(name)  # RecipeError naming the method's parameters
    if spec.kind in ("bool", "str"):
        raise SweepError(f"{name} is a {spec.kind} setting; sweep a numeric parameter")
    number: float | int = int(round(value)) if spec.kind == "int" else float(value)
    if spec.scope == ParamScope.GLOBAL:
        current = recipe.parameters.get(name)
        setting = _filtered(current, number, only_filter, name)
        updated = recipe.model_copy(update={"parameters": {**recipe.parameters, name: setting}})
    else:
        models = _per_model(recipe, name, number, model_index, only_filter)
        updated = recipe.model_copy(update={"models": models})
    validate_recipe(updated)  # RecipeError: "density 1.5 is out of range ..."
    return updated


def _per_model(
    recipe: MergeRecipe,
    name: str,
    value: float | int,
    model_index: int | None,
    only_filter: str | None,
) -> tuple[RecipeModel, ...]:
    models = list(recipe.models)
    if model_index is not None and not 0 <= model_index < len(models):
        raise SweepError(
            f"model_index {model_index} is out of range; this recipe has {len(models)} models"
        )
    varied = [i for i, m in enumerate(models) if m.path != recipe.base]
    if model_index is not None:
        varied = [model_index]
    elif name == "weight" and len(varied) == 2:
        # The merge-weight axis: first model at 0, second at 1.
        first, second = varied
        models[first] = _set(models[first], name, 1.0 - value, only_filter)
        varied = [second]
    for i in varied:
        models[i] = _set(models[i], name, value, only_filter)
    return tuple(models)


def _set(model: RecipeModel, name: str, value: float | int, only_filter: str | None) -> RecipeModel:
    setting = _filtered(model.parameters.get(name), value, only_filter, name)
    return model.model_copy(update={"parameters": {**model.parameters, name: setting}})


def _filtered(
    current: ParamValue | None, value: float | int, only_filter: str | None, name: str
) -> ParamValue:
    """`value`, or with `only_filter` a filtered list: [{filter: value}, what `current` says]."""
    if only_filter is None:
        return value
    if current is None:
        raise SweepError(
            f"to sweep {name} on '{only_filter}' tensors only, give {name} a value in the recipe"
            " for the other tensors"
        )
    if isinstance(current, list) and current and isinstance(current[0], FilteredValue):
        rest = [entry for entry in current if entry.filter != only_filter]
    else:
        rest = [FilteredValue(value=current)]
    return [FilteredValue(filter=only_filter, value=value), *rest]


# --------------------------------------------------------------------------- running


@dataclass
class _Counter:
    """Items scored so far out of all, reported through `progress`."""

    total: int
    progress: Progress | None
    done: int = 0

    def advance(self, items: int, message: str) -> None:
        self.done += items
        if self.progress is not None:
            self.progress(self.done, self.total, message)


class TargetScorer:
    """Scores engines on the loaded tasks, through the cache."""

    def __init__(
        self,
        request: ScoreOptions,
        *,
        store: ResultStore | None,
        progress: Progress | None,
        points: int,
    ) -> None:
        self.settings = request.settings
        self.dtype = request.dtype
        self.store = store
        self.tasks = [load_task(path) for path in request.tasks]
        per_point = sum(self._items(t) for t in self.tasks)
        self.counter = _Counter(total=per_point * points, progress=progress)
        self.engine_key = f"transformers/{self.dtype}"
        self.rows: list[ScoreRow] = []
        self.answers: list[AnswerRow] = []
        self._opened: list[InferenceEngine] = []

    def _items(self, task: Task) -> int:
        limit = self.settings.limit
        return len(task.items) if limit is None else min(limit, len(task.items))

    def score(
        self,
        *,
        label: str,
        kind: TargetKind,
        value: float | None,
        fingerprint: str,
        engine: Callable[[], InferenceEngine],
        recipe: MergeRecipe | None = None,
    ) -> None:
        """Add rows for one target: cached scores, else scored with the engine `engine()` makes.

        `recipe`: the merge a live-merged target is; its chat_template, when it names one,
        is the template chat-QA questions are asked in unless the request names one.
        """
        settings = self._settings_for(recipe)
        loaded: InferenceEngine | None = None
        for task in self.tasks:
            key = score_key(fingerprint, task, settings, engine=self.engine_key)
            hit = self.store.get(key) if self.store is not None else None
            if hit is not None:
                self._add(label, kind, value, hit.score, cached=True)
                self._add_answers(label, value, task, hit.score)
                self.counter.advance(self._items(task), f"{label}: {task.name} (cached)")
                continue
            loaded = loaded or engine()
            done_before = self.counter.done
            score = score_task(
                loaded,
                task,
                settings,
                progress=lambda done, _total, task=task, base=done_before: self._item_progress(
                    base, done, f"{label}: {task.name}"
                ),
            )
            self.counter.done = done_before
            self.counter.advance(self._items(task), f"{label}: {task.name} done")
            if self.store is not None:
                self.store.put(
                    key,
                    label=label,
                    model_fingerprint=fingerprint,
                    task=task,
                    settings=settings,
                    score=score,
                )
            self._add(label, kind, value, score, cached=False)
            self._add_answers(label, value, task, score)

    def _add_answers(self, label: str, value: float | None, task: Task, score: TaskScore) -> None:
        if task.kind != "chat_qa":
            return
        questions: dict[str, QAItem] = {item.id: item for item in task.items}  # type: ignore[misc]
        for item in score.items:
            asked = questions[item.id]
            self.answers.append(
                AnswerRow(
                    label=label,
                    value=value,
                    task=score.task,
                    id=item.id,
                    question=asked.question,
                    reference=" | ".join(asked.references),
                    generation=item.generation or "",
                    correct=bool(item.contains),
                    exact=bool(item.exact),
                )
            )

    def _item_progress(self, base: int, done: int, message: str) -> None:
        self.counter.done = base
        self.counter.advance(done, message)

    def _settings_for(self, recipe: MergeRecipe | None) -> ScoreSettings:
        # The live-merged model carries its first model's tokenizer, but the merge the recipe
        # exports carries the recipe's chat_template: ask the questions in that one.
        own = recipe.chat_template if recipe is not None else None
        if self.settings.chat_template is not None or own in (None, "auto"):
            return self.settings
        return self.settings.model_copy(update={"chat_template": own})

    def _add(
        self, label: str, kind: TargetKind, value: float | None, score: TaskScore, *, cached: bool
    ) -> None:
        metric, number, stderr = score.primary
        self.rows.append(
            ScoreRow(
                label=label,
                kind=kind,
                value=value,
                task=score.task,
                metric=metric,
                score=number,
                stderr=stderr,
                n=score.n,
                cached=cached,
                seconds=0.0 if cached else round(score.seconds, 3),
            )
        )

    def folder_engine(self, folder: str) -> Callable[[], InferenceEngine]:
        def make() -> InferenceEngine:
            from studio.inference.transformers_engine import TransformersEngine

            engine = TransformersEngine(ModelSpec.from_path(folder, dtype=self.dtype))
            engine.load()
            self._opened.append(engine)
            return engine

        return make

    def release(self) -> None:
        """Unload the folder engines opened so far (one model in memory at a time)."""
        for engine in self._opened:
            engine.unload()
        self._opened = []
        gc.collect()


def parse_recipe_text(text: str) -> MergeRecipe:
    recipe = resolve_paths(recipe_from_yaml(text))
    validate_recipe(recipe)
    return recipe


def scored_recipe(recipe: MergeRecipe, dtype: ScoreDtype) -> MergeRecipe:
    """`recipe` as a merge point is scored: its merged model loaded in `dtype` (out_dtype).

    The live merger still computes in the recipe's `dtype`; only the model that is scored
    (and the fingerprint that keys its cache entry) takes the request's dtype.
    """
    return recipe.model_copy(update={"out_dtype": dtype})


def run_scores(
    request: ScoreRequest,
    *,
    store: ResultStore | None = None,
    progress: Progress | None = None,
) -> ScoreReport:
    """Score every target on every task (cached scores reused); one model loaded at a time."""
    from studio.merging.preview import LivePreview

    started = time.perf_counter()
    points = len(request.targets)
    scorer = TargetScorer(request, store=store, progress=progress, points=points)
    preview = LivePreview(seed=SWEEP_SEED)
    try:
        for target in request.targets:
            if target.model is not None:
                folder = str(Path(target.model).expanduser().resolve())
                load = scorer.folder_engine(folder)

                def make(load: Callable[[], InferenceEngine] = load) -> InferenceEngine:
                    # The merger (all parents) and its model leave memory before a folder
                    # loads; a later merge target loads them again.
                    preview.close()
                    return load()

                scorer.score(
                    label=target.label,
                    kind="model",
                    value=None,
                    fingerprint=folder_fingerprint(folder),
                    engine=make,
                )
            else:
                recipe = scored_recipe(parse_recipe_text(target.recipe or ""), request.dtype)
                scorer.score(
                    label=target.label,
                    kind="merge",
                    value=None,
                    fingerprint=recipe_fingerprint(recipe, seed=SWEEP_SEED),
                    engine=lambda recipe=recipe: preview.merge(recipe)[0],
                    recipe=recipe,
                )
            scorer.release()
    finally:
        scorer.release()
        preview.close()
    return ScoreReport(
        rows=tuple(scorer.rows),
        details={"seconds": round(time.perf_counter() - started, 2)},
        answers=tuple(scorer.answers),
    )


def run_sweep(
    request: SweepRequest,
    *,
    store: ResultStore | None = None,
    progress: Progress | None = None,
) -> ScoreReport:
    """Score the recipe at every value of the swept parameter, and its models as references."""
    from studio.merging.preview import LivePreview

    started = time.perf_counter()
    base_recipe = parse_recipe_text(request.recipe)
    # Every point is checked before anything loads: a bad value fails in a second, not midway.
    points = [
        (
            value,
            scored_recipe(
                request.recipe_at(base_recipe, value),
                request.dtype,
            ),
        )
        for value in request.values
    ]
    parents = _parent_folders(base_recipe) if request.include_parents else []
    scorer = TargetScorer(
        request,
        store=store,
        progress=progress,
        points=len(points) + len(parents),
    )
    preview = LivePreview(seed=SWEEP_SEED)
    try:
        for value, recipe in points:
            scorer.score(
                label=f"{request.point_name}={value:g}",
                kind="merge",
                value=value,
                fingerprint=recipe_fingerprint(recipe, seed=SWEEP_SEED),
                engine=lambda recipe=recipe: preview.merge(recipe)[0],
                recipe=recipe,
            )
        preview.close()  # the parents are scored one at a time, without the merger's memory
        for folder in parents:
            scorer.score(
                label=Path(folder).name,
                kind="parent",
                value=None,
                fingerprint=folder_fingerprint(folder),
                engine=scorer.folder_engine(folder),
            )
            scorer.release()
    finally:
        preview.close()
        scorer.release()
    return ScoreReport(
        rows=tuple(scorer.rows),
        parameter=request.parameter,
        details={
            "seconds": round(time.perf_counter() - started, 2),
            "recipe": recipe_to_yaml(base_recipe),
            "method": base_recipe.method,
        },
        answers=tuple(scorer.answers),
    )


def _parent_folders(recipe: MergeRecipe) -> list[str]:
    """The merged models (and the base, if separate), in recipe order, each once."""
    folders = [m.path for m in recipe.models]
    if recipe.base:
        folders.append(recipe.base)
    return list(dict.fromkeys(folders))
