"""Checkpoint sweep: a CPT run's checkpoints scored by step, alone and merged with the chat model.

The reference study's "better CPT checkpoint -> better merge" chart: for every `step-NNNNNNNN`
checkpoint of a run (or a list of checkpoint folders), score the checkpoint itself (kind
"checkpoint") and, when a merge recipe is given, the recipe with its FIRST model replaced by
the checkpoint (kind "merge"), merged live in memory. Both rows carry the step as their value,
so `studio.plots.sweep_chart` draws one line per task and kind against step.

    report = run_checkpoint_sweep(CheckpointSweepRequest(run_dir=run, recipe=linear_yaml,
                                                         tasks=(task,)), store=store)
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field, model_validator

from studio.evaluation.results import ResultStore, folder_fingerprint, recipe_fingerprint
from studio.evaluation.sweeps import (
    SWEEP_SEED,
    Progress,
    ScoreOptions,
    ScoreReport,
    SweepError,
    TargetScorer,
    parse_recipe_text,
    scored_recipe,
)
from studio.recipes.recipe import MergeRecipe, validate_recipe
from studio.training.checkpoints import checkpoint_step, list_checkpoints

STEP = "step"


class CheckpointSweepRequest(ScoreOptions, frozen=True):
    run_dir: str | None = Field(default=None, description="training run folder (step-N inside)")
    checkpoints: tuple[str, ...] = Field(
        default=(), description="checkpoint folders, instead of (or besides) a run folder"
    )
    recipe: str | None = Field(
        default=None,
        description="merge to apply to each checkpoint (its first model is replaced by it); "
        "empty: score the checkpoints alone",
    )

    @model_validator(mode="after")
    def _some_checkpoints(self) -> CheckpointSweepRequest:
        if self.run_dir is None and not self.checkpoints:
            raise ValueError("choose a training run folder or checkpoint folders")
        return self


def checkpoint_folders(request: CheckpointSweepRequest) -> list[tuple[int, str]]:
    """(step, folder) of every checkpoint to score, by step; SweepError if there are none."""
    found: dict[str, int] = {}
    if request.run_dir is not None:
        found |= {c.path: c.step for c in list_checkpoints(request.run_dir)}
    for folder in request.checkpoints:
        path = str(Path(folder).expanduser().resolve())
        step = checkpoint_step(path)
        if step is None or not (Path(path) / "config.json").is_file():
            raise SweepError(
                f"{folder} is not a training checkpoint (a step-NNNNNNNN folder with config.json)"
            )
        found[path] = step
    if not found:
        raise SweepError(
            f"run folder {request.run_dir} has no checkpoints yet; wait for the first save or "
            "choose another run"
        )
    return sorted(((step, path) for path, step in found.items()), key=lambda x: x[0])


def with_first_model(recipe: MergeRecipe, folder: str) -> MergeRecipe:
    """`recipe` with its first model replaced by `folder` (the CPT side of a CPT + chat merge)."""
    first = recipe.models[0].model_copy(update={"path": folder})
    updated = recipe.model_copy(update={"models": (first, *recipe.models[1:])})
    validate_recipe(updated)
    return updated


def run_checkpoint_sweep(
    request: CheckpointSweepRequest,
    *,
    store: ResultStore | None = None,
    progress: Progress | None = None,
) -> ScoreReport:
    """Score each checkpoint alone and, with a recipe, merged; rows valued by step."""
    from studio.merging.preview import LivePreview

    started = time.perf_counter()
    folders = checkpoint_folders(request)
    recipe = parse_recipe_text(request.recipe) if request.recipe else None
    merges = [
        (step, scored_recipe(with_first_model(recipe, path), request.dtype))
        for step, path in folders
        if recipe is not None
    ]
    scorer = TargetScorer(
        request, store=store, progress=progress, points=len(folders) + len(merges)
    )
    try:
        for step, path in folders:
            scorer.score(
                label=f"step {step}",
                kind="checkpoint",
                value=float(step),
                fingerprint=folder_fingerprint(path),
                engine=scorer.folder_engine(path),
            )
            scorer.release()
        preview = LivePreview(seed=SWEEP_SEED)
        try:
            for step, merged in merges:
                scorer.score(
                    label=f"step {step} merged",
                    kind="merge",
                    value=float(step),
                    fingerprint=recipe_fingerprint(merged, seed=SWEEP_SEED),
                    engine=lambda merged=merged: preview.merge(merged)[0],
                    recipe=merged,
                )
        finally:
            preview.close()
    finally:
        scorer.release()
    return ScoreReport(
        rows=tuple(scorer.rows),
        parameter=STEP,
        details={"seconds": round(time.perf_counter() - started, 2), "checkpoints": len(folders)},
        answers=tuple(scorer.answers),
    )
