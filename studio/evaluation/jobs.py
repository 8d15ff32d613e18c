"""Score and sweep runs as background jobs: what the Score tab, the CLI and /score, /sweep call.

Scoring loads models and runs them for seconds to hours, so it runs in a job-runner subprocess
(studio.evaluation.worker) like a merge export: cancel kills it, the app never blocks, the Jobs
tab shows its progress. The request is validated here (tasks load, recipes parse, sweep values
are in range) so a bad request is refused in a sentence before any job starts.

    record = start_sweep_job(SweepRequest(...), owner=session)
    runner.wait(record.id, timeout=600)
    report = read_report(record.id)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from studio.confine import confine_path
from studio.errors import JobError
from studio.evaluation.checkpoint_sweep import (
    CheckpointSweepRequest,
    checkpoint_folders,
    run_checkpoint_sweep,
    with_first_model,
)
from studio.evaluation.results import ResultStore
from studio.evaluation.sweeps import (
    Progress,
    ScoreOptions,
    ScoreReport,
    ScoreRequest,
    SweepRequest,
    parse_recipe_text,
    run_scores,
    run_sweep,
)
from studio.evaluation.tasks import load_task
from studio.jobs.runner import JobRunner, get_runner
from studio.jobs.store import JobRecord, new_job_id
from studio.recipes.recipe import MergeRecipe, resolve_paths, validate_recipe
from studio.recipes.yaml_io import recipe_from_yaml
from studio.settings import StudioSettings, load_settings

WORKER_MODULE = "studio.evaluation.worker"
REQUEST_FILE = "request.json"
REPORT_FILE = "report.json"


def run_request(
    spec: Mapping[str, Any],
    *,
    store: ResultStore | None = None,
    progress: Progress | None = None,
) -> ScoreReport:
    """Run a `{"kind": "score"|"sweep"|"checkpoints", "request": {...}}` spec in this process
    (the job worker; cancel kills its process group)."""
    if spec.get("kind") == "checkpoints":
        checkpoints = CheckpointSweepRequest.model_validate(spec["request"])
        return run_checkpoint_sweep(checkpoints, store=store, progress=progress)
    if spec.get("kind") == "sweep":
        sweep = SweepRequest.model_validate(spec["request"])
        return run_sweep(sweep, store=store, progress=progress)
    request = ScoreRequest.model_validate(spec["request"])
    return run_scores(request, store=store, progress=progress)


def check_request(request: ScoreOptions, *, settings: StudioSettings | None = None) -> None:
    """Refuse a request that cannot run, before any job starts (StudioError with a sentence).

    Every folder it would read must lie under the studio's roots (`settings`; None: the
    environment's): model targets, run and checkpoint folders, each recipe's models.
    """
    settings = settings or load_settings()
    for path in request.tasks:
        load_task(path)  # confines the task file itself
    if isinstance(request, CheckpointSweepRequest):
        confine_checkpoints(request, settings=settings)
        folders = checkpoint_folders(request)
        if request.recipe:
            recipe = parse_recipe_text(request.recipe)
            for _, folder in folders:
                confine_recipe_models(with_first_model(recipe, folder), settings=settings)
        return
    for target in getattr(request, "targets", ()):
        if target.model is not None:
            confine_path(target.model, settings=settings, what=f"model of '{target.label}'")
    recipes = [request.recipe] if isinstance(request, SweepRequest) else []
    recipes += [t.recipe for t in getattr(request, "targets", ()) if t.recipe is not None]
    for text in recipes:
        recipe = resolve_paths(recipe_from_yaml(text))
        validate_recipe(recipe)
        confine_recipe_models(recipe, settings=settings)
        if isinstance(request, SweepRequest):
            for value in request.values:
                request.recipe_at(recipe, value)


def confine_checkpoints(request: CheckpointSweepRequest, *, settings: StudioSettings) -> None:
    """PathNotAllowedError unless the run folder and every checkpoint folder lie under the roots
    (before list_checkpoints or resolve() sees them: both follow the path)."""
    if request.run_dir is not None:
        confine_path(request.run_dir, settings=settings, what="run folder")
    for folder in request.checkpoints:
        confine_path(folder, settings=settings, what="checkpoint folder")


def confine_recipe_models(recipe: MergeRecipe, *, settings: StudioSettings) -> None:
    """PathNotAllowedError unless every local folder of a (resolved) recipe lies under the roots.

    Scoring merges recipes live, so each folder is read: models, base, tokenizer source, and
    both sides of mergekit's `model+lora` (a `@revision` suffix is not part of the folder). A
    name that is not absolute after resolve_paths does not exist here (a Hub id): the live
    merger refuses it in its own words.
    """
    named = [(f"recipe model {i + 1}", m.path) for i, m in enumerate(recipe.models)]
    named += [
        ("recipe base", recipe.base or ""),
        ("tokenizer source", recipe.tokenizer_source or ""),
    ]
    for role, path in named:
        for part in path.split("+"):
            folder = part.partition("@")[0]
            if os.path.isabs(folder):
                confine_path(folder, settings=settings, what=f"{role} folder")


def start_score_job(
    request: ScoreRequest,
    *,
    runner: JobRunner | None = None,
    settings: StudioSettings | None = None,
    owner: str | None = None,
) -> JobRecord:
    """Score models and merges on tasks in a background job."""
    labels = ", ".join(t.label for t in request.targets)
    return _start("score", f"score {labels}", request, runner, settings, owner)


def start_sweep_job(
    request: SweepRequest,
    *,
    runner: JobRunner | None = None,
    settings: StudioSettings | None = None,
    owner: str | None = None,
) -> JobRecord:
    """Sweep one merge parameter and score every point in a background job."""
    span = f"{min(request.values):g}..{max(request.values):g}"
    title = f"sweep {request.parameter} {span} ({len(request.values)} points)"
    return _start("sweep", title, request, runner, settings, owner)


def start_checkpoint_sweep_job(
    request: CheckpointSweepRequest,
    *,
    runner: JobRunner | None = None,
    settings: StudioSettings | None = None,
    owner: str | None = None,
) -> JobRecord:
    """Score a training run's checkpoints by step, alone and merged, in a background job."""
    # Confined before the title's checkpoint_folders() lists the run folder (_start checks
    # everything else).
    confine_checkpoints(
        request, settings=settings or (runner.settings if runner is not None else load_settings())
    )
    count = len(checkpoint_folders(request))
    where = Path(request.run_dir).name if request.run_dir else "checkpoints"
    title = f"checkpoint sweep {where} ({count} checkpoints)"
    return _start("checkpoints", title, request, runner, settings, owner)


def _start(
    kind: str,
    title: str,
    request: ScoreOptions,
    runner: JobRunner | None,
    settings: StudioSettings | None,
    owner: str | None,
) -> JobRecord:
    settings = settings or (runner.settings if runner is not None else load_settings())
    check_request(request, settings=settings)
    runner = runner or get_runner(settings)
    job_id = new_job_id()
    job_dir = runner.settings.jobs_dir / job_id
    job_dir.mkdir(parents=True)
    request_path = job_dir / REQUEST_FILE
    spec = {"kind": kind, "request": request.model_dump(mode="json")}
    request_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    try:
        return runner.start(
            kind=kind,
            title=title,
            module=WORKER_MODULE,
            args=["--request", str(request_path), "--out", str(job_dir / REPORT_FILE)],
            owner=owner,
            job_id=job_id,
        )
    except JobError:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise


def read_report(job_id: str, *, settings: StudioSettings | None = None) -> ScoreReport | None:
    """The finished job's report, or None while it runs (or if it failed)."""
    settings = settings or load_settings()
    path = Path(settings.jobs_dir) / job_id / REPORT_FILE
    if not path.is_file():
        return None
    return ScoreReport.from_json(json.loads(path.read_text(encoding="utf-8")))
