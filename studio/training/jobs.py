"""Training as background jobs: start, watch, stop gracefully, resume. No gradio here.

The Train tab, its Gradio API (/train_start, /train_status, /train_stop) and the CLI call these:

    record = start_train_job(config)                  # CPTConfig | SFTConfig | YAML path
    status = train_status(record.id)                  # TrainStatus: step/total, ETA, losses...
    stop_train_job(record.id)                         # finish the step, save, exit 0
    resume_train_job(status.run_dir)                  # a new job continuing from 'latest'
    preview_command(config)                           # 'accelerate launch ... -m pipelines.cpt ...'

A run is `accelerate launch ... -m pipelines.<kind> <run_dir>/config.yml` started by the job
runner (kind "train"); it keeps going if the app restarts (the runner re-attaches). Progress
comes from two files: the runner's events (step/total, ETA) and the run's metrics.jsonl
(losses, LR, tokens/s, mixture, checkpoints). Stop writes `<run_dir>/STOP`, which the trainer
polls after every step: it saves a checkpoint and exits 0, so the job ends SUCCEEDED and
`TrainStatus.phase` says "stopped" (the runner's cancel, by contrast, kills the process group
after 3 s and saves nothing).

Every path a config names (model, data, output_dir, resume) must lie under the studio's roots
(studio.confine). A run killed from outside (SIGKILL, out of memory) ends FAILED with the
reason; its half-written `step-*.partial` checkpoint is removed and resume_train_job continues
from the newest complete one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from studio.confine import check_path_text, confine_path
from studio.errors import JobError, ModelError
from studio.jobs.runner import JobRunner, JobStatus, get_runner
from studio.jobs.store import ACTIVE_STATES, JobRecord, JobState, new_job_id
from studio.settings import StudioSettings, load_settings
from studio.training.checkpoints import (
    CHECKPOINT_PREFIX,
    RUN_CONFIG_FILE,
    RUN_LOG_FILE,
    CheckpointInfo,
    find_resume_checkpoint,
    list_checkpoints,
    request_stop,
    stop_requested,
)
from studio.training.config import (
    CPTConfig,
    SFTConfig,
    TrainConfigError,
    dump_train_config,
    load_train_config,
    parse_train_config,
    resolve_paths,
)
from studio.training.launch import DEFAULT_LAUNCH, build_launch_command
from studio.training.runlog import (
    CheckpointRecord,
    DataRecord,
    EndRecord,
    EvalRecord,
    SourceStats,
    StartRecord,
    StepRecord,
    read_run_log,
)

LOG = logging.getLogger(__name__)

JOB_KIND = "train"
JOB_INFO_FILE = "train.json"
PARTIAL_SUFFIX = ".partial"  # pipelines/cpt.py writes step-N.partial, then renames it
HISTORY_LIMIT = 2000  # step points returned for charts (evenly thinned beyond this)

Phase = Literal[
    "queued", "running", "stopping", "completed", "stopped", "failed", "cancelled", "interrupted"
]


class TrainJobInfo(BaseModel, frozen=True):
    """What start_train_job leaves in the job folder so status can find the run."""

    run_dir: str
    kind: str
    config_path: str
    launch: str
    preview: str


class StepPoint(BaseModel, frozen=True):
    step: int
    loss: float
    lr: float
    tokens: int
    tokens_per_s: float


class EvalPoint(BaseModel, frozen=True):
    step: int
    losses: dict[str, float]


class TrainStatus(BaseModel, frozen=True):
    """A training job now: what the Train tab shows and /train_status returns."""

    job_id: str
    state: JobState
    phase: Phase = Field(description="state in training words: stopping, stopped, completed...")
    kind: str
    run_dir: str
    preview_command: str
    step: int = Field(description="optimizer steps done")
    max_steps: int | None
    fraction: float | None
    eta_seconds: float | None
    tokens: int
    tokens_per_s: float | None
    global_tokens_per_step: int | None
    loss: float | None = Field(description="latest training loss")
    lr: float | None
    eval_losses: dict[str, float] = Field(description="latest held-out loss per eval set")
    history: list[StepPoint] = Field(description="loss/LR curve (thinned to HISTORY_LIMIT)")
    evals: list[EvalPoint]
    target_mixture: dict[str, float]
    mixture: dict[str, float] = Field(description="realised token share per source so far")
    data: list[SourceStats] = Field(description="per source: documents, tokens, dropped remainder")
    checkpoints: list[CheckpointInfo]
    message: str
    error: str | None
    log_tail: str

    @property
    def done(self) -> bool:
        return self.state not in ACTIVE_STATES


# ---------------------------------------------------------------------- folders and models


def runs_dir(settings: StudioSettings | None = None) -> Path:
    """Default parent of run folders: STUDIO_HOME/runs (StudioSettings.runs_dir)."""
    return (settings or load_settings()).runs_dir


def default_run_dir(name: str, settings: StudioSettings | None = None) -> Path:
    """A fresh run folder under runs_dir for `name` (suffixed -2, -3... if taken)."""
    base = runs_dir(settings)
    candidate, counter = base / name, 2
    while candidate.exists():
        candidate = base / f"{name}-{counter}"
        counter += 1
    return candidate


def resolve_train_model(ref: str, settings: StudioSettings | None = None) -> Path:
    """The folder of `ref`: a model folder (a step checkpoint included) or a catalog name."""
    path = Path(ref).expanduser()
    if (path / "config.json").is_file():
        return confine_path(path, settings=settings, what="model").resolve()
    from studio.catalog.registry import find_model

    try:
        return Path(find_model(ref, settings=settings).path)
    except ModelError as error:
        hint = (
            " (build the starter models with `python -m pipelines.starter_zoo`)"
            if ref.startswith("starter-")
            else ""
        )
        raise TrainConfigError(
            f"model: '{ref}' is neither a model folder nor a catalog name; {error}{hint}"
        ) from error


# ---------------------------------------------------------------------- commands


def preview_command(
    config: CPTConfig | SFTConfig, *, launch: str = DEFAULT_LAUNCH, **overrides: int | str | None
) -> str:
    """The exact `accelerate launch ...` a job for `config` runs (its config file in the run)."""
    config = resolve_paths(config)
    config_path = Path(config.output_dir) / RUN_CONFIG_FILE
    return build_launch_command(config_path, kind=config.kind, launch=launch, **overrides).preview


def start_train_job(
    config: CPTConfig | SFTConfig | str | Path,
    *,
    launch: str = DEFAULT_LAUNCH,
    runner: JobRunner | None = None,
    settings: StudioSettings | None = None,
    owner: str | None = None,
    **overrides: int | str | None,
) -> JobRecord:
    """Check `config` and start it as a background `accelerate launch` job; the job's record.

    Refused before anything starts: a bad config, a missing model or data file, an unknown
    launch config, a run folder that already holds checkpoints (resume it or pick another
    output_dir), a resume with nothing to resume.
    """
    settings = settings or (runner.settings if runner is not None else load_settings())
    # 1) the config, with absolute paths (the worker runs elsewhere) and checked inputs
    if not isinstance(config, CPTConfig | SFTConfig):
        config = load_train_config(config)
    config = resolve_paths(config)
    confine_train_paths(config, settings)
    resolve_train_model(config.model, settings)
    _check_data_files(config)
    run_dir = Path(config.output_dir)
    if config.resume:
        find_resume_checkpoint(run_dir, config.resume)
    elif list_checkpoints(run_dir):
        raise TrainConfigError(
            f"output_dir {run_dir} already holds checkpoints of an earlier run; resume it "
            "(resume: latest) or choose a new output_dir"
        )
    # 2) the config file the run reads, and the command
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / RUN_CONFIG_FILE
    command = build_launch_command(config_path, kind=config.kind, launch=launch, **overrides)
    config_path.write_text(dump_train_config(config, command=command.preview), encoding="utf-8")
    # 3) the job; the run folder is its output (the runner refuses two live jobs on one run)
    runner = runner or get_runner(settings)
    job_id = new_job_id()
    job_dir = runner.settings.jobs_dir / job_id
    job_dir.mkdir(parents=True)
    info = TrainJobInfo(
        run_dir=str(run_dir),
        kind=config.kind,
        config_path=str(config_path),
        launch=str(launch),
        preview=command.preview,
    )
    (job_dir / JOB_INFO_FILE).write_text(info.model_dump_json(indent=2), encoding="utf-8")
    try:
        return runner.start(
            kind=JOB_KIND,
            title=_title(config),
            module=command.module,
            args=list(command.args),
            output_path=str(run_dir),
            # a checkpoint half-written when the run died; complete ones stay for resume
            temp_path=str(run_dir / f"{CHECKPOINT_PREFIX}*{PARTIAL_SUFFIX}"),
            owner=owner,
            job_id=job_id,
        )
    except BaseException:
        if not _recorded(runner, job_id):
            shutil.rmtree(job_dir, ignore_errors=True)
        raise


def resume_train_job(
    run_dir: str | Path,
    *,
    max_steps: int | None = None,
    launch: str = DEFAULT_LAUNCH,
    runner: JobRunner | None = None,
    settings: StudioSettings | None = None,
    owner: str | None = None,
    **overrides: int | str | None,
) -> JobRecord:
    """Continue the run in `run_dir` from its newest resumable checkpoint, as a new job.

    `max_steps` extends (or shortens) the run; the schedule is then laid over the new length
    (with wsd, a stable-phase checkpoint continues at the peak LR).
    """
    config_path = Path(check_path_text(str(run_dir), what="run folder")) / RUN_CONFIG_FILE
    if not config_path.is_file():
        raise TrainConfigError(f"{run_dir} is not a training run folder (no {RUN_CONFIG_FILE})")
    values = load_train_config(config_path).model_dump(mode="json")
    values["resume"] = "latest"
    if max_steps is not None:
        values["max_steps"] = max_steps
    config = parse_train_config(values)
    return start_train_job(
        config, launch=launch, runner=runner, settings=settings, owner=owner, **overrides
    )


def stop_train_job(
    job_id: str, *, runner: JobRunner | None = None, settings: StudioSettings | None = None
) -> TrainStatus:
    """Ask the run to stop after its current step, saving a checkpoint (job ends SUCCEEDED)."""
    runner = runner or get_runner(settings)
    record = runner.store.get(job_id)
    info = _job_info(record)
    if record.state in ACTIVE_STATES:
        request_stop(info.run_dir)
        LOG.info("stop requested for training job %s (%s)", job_id, info.run_dir)
    return train_status(job_id, runner=runner)


def train_status(
    job_id: str, *, runner: JobRunner | None = None, settings: StudioSettings | None = None
) -> TrainStatus:
    """The job's state plus everything its metrics log says so far."""
    runner = runner or get_runner(settings)
    job = runner.status(job_id)
    info = _job_info(job.record)
    return _status(job, info, read_run_log(Path(info.run_dir) / RUN_LOG_FILE))


# ---------------------------------------------------------------------- helpers


def _status(job: JobStatus, info: TrainJobInfo, records: list) -> TrainStatus:
    steps: dict[int, StepRecord] = {}  # by step: a resumed run's re-done steps replace the old
    evals: dict[int, EvalRecord] = {}
    start: StartRecord | None = None
    data: DataRecord | None = None
    end: EndRecord | None = None
    for record in records:
        if isinstance(record, StepRecord):
            steps[record.step] = record
        elif isinstance(record, EvalRecord):
            evals[record.step] = record
        elif isinstance(record, StartRecord):
            start, end = record, None
        elif isinstance(record, DataRecord):
            data = record
        elif isinstance(record, EndRecord):
            end = record
        elif isinstance(record, CheckpointRecord):
            pass  # listed from the folder itself below (pruned or renamed ones drop out)
    ordered = [steps[k] for k in sorted(steps)]
    latest = ordered[-1] if ordered else None
    last_eval = evals[max(evals)] if evals else None
    step = latest.step if latest else (start.step if start else 0)
    max_steps = start.max_steps if start else (job.record.progress_total or None)
    return TrainStatus(
        job_id=job.id,
        state=job.state,
        phase=_phase(job, info, end),
        kind=info.kind,
        run_dir=info.run_dir,
        preview_command=info.preview,
        step=step,
        max_steps=max_steps,
        fraction=(min(1.0, step / max_steps) if max_steps else job.fraction),
        eta_seconds=job.eta_seconds,
        tokens=latest.tokens if latest else 0,
        tokens_per_s=latest.tokens_per_s if latest else None,
        global_tokens_per_step=start.global_tokens_per_step if start else None,
        loss=latest.loss if latest else None,
        lr=latest.lr if latest else None,
        eval_losses=dict(last_eval.losses) if last_eval else {},
        history=[
            StepPoint(
                step=r.step, loss=r.loss, lr=r.lr, tokens=r.tokens, tokens_per_s=r.tokens_per_s
            )
            for r in _thin(ordered, HISTORY_LIMIT)
        ],
        evals=[EvalPoint(step=e.step, losses=dict(e.losses)) for _, e in sorted(evals.items())],
        target_mixture={s.name: s.target_share for s in data.sources} if data else {},
        mixture=dict(latest.mixture) if latest else {},
        data=list(data.sources) if data else [],
        checkpoints=list_checkpoints(info.run_dir),
        message=job.record.message,
        error=job.record.error,
        log_tail=job.log_tail,
    )


def _phase(job: JobStatus, info: TrainJobInfo, end: EndRecord | None) -> Phase:
    if job.state == JobState.QUEUED:
        return "queued"
    if job.state == JobState.RUNNING:
        return "stopping" if stop_requested(info.run_dir) else "running"
    if job.state == JobState.SUCCEEDED:
        return "stopped" if end is not None and end.reason == "stopped" else "completed"
    return job.state.value  # type: ignore[return-value]


def _thin(points: list[StepRecord], limit: int) -> list[StepRecord]:
    """At most `limit` points, evenly spaced, always keeping the newest."""
    if len(points) <= limit:
        return points
    stride = len(points) / limit
    picked = [points[int(i * stride)] for i in range(limit - 1)]
    return [*picked, points[-1]]


def _job_info(record: JobRecord) -> TrainJobInfo:
    path = Path(record.job_dir) / JOB_INFO_FILE
    if record.kind != JOB_KIND or not path.is_file():
        raise JobError(f"job {record.id} is a {record.kind} job, not a training job")
    return TrainJobInfo.model_validate(json.loads(path.read_text(encoding="utf-8")))


def confine_train_paths(config: CPTConfig | SFTConfig, settings: StudioSettings) -> None:
    """Refuse a run whose output, model, resume checkpoint or data lie outside the roots.

    `config` has absolute paths (resolve_paths); a model given as a catalog name is checked
    by resolve_train_model once it is a folder.
    """
    confine_path(config.output_dir, settings=settings, what="output_dir")
    if Path(config.model).is_absolute():
        confine_path(config.model, settings=settings, what="model")
    if config.resume not in (None, "latest"):
        confine_path(config.resume, settings=settings, what="resume")
    for field, name, paths in _data_groups(config):
        for path in paths:
            confine_path(path, settings=settings, what=f"{field} ({name}) file")


def _data_groups(config: CPTConfig | SFTConfig) -> list[tuple[str, str, list[str]]]:
    if isinstance(config, CPTConfig):
        groups = [("data.sources", s.name, list(s.paths)) for s in config.data.sources]
        groups += [("data.eval_sets", e.name, list(e.paths)) for e in config.data.eval_sets]
    else:
        groups = [("data.paths", "chat", list(config.data.paths))]
        groups += [("data.eval_paths", "chat", list(config.data.eval_paths))]
    return groups


def _check_data_files(config: CPTConfig | SFTConfig) -> None:
    for field, name, paths in _data_groups(config):
        for path in paths:
            if not Path(path).is_file():
                raise TrainConfigError(f"{field} ({name}): file {path} does not exist")


def _recorded(runner: JobRunner, job_id: str) -> bool:
    try:
        runner.store.get(job_id)
    except JobError:
        return False
    return True


def _title(config: CPTConfig | SFTConfig) -> str:
    what = "resume" if config.resume else config.kind.upper()
    return f"{what} {Path(config.model).name} -> {Path(config.output_dir).name} ({time.strftime('%H:%M')})"
