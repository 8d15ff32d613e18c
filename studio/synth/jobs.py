"""Synthetic-data runs as background jobs: what the Train tab's section, /synth_start and the CLI call.

    record = start_synth_job(config)           # SynthConfig | YAML path or text; refused early
    status = synth_status(record.id)           # SynthStatus: progress, counts, preview rows
    cancel_synth_job(record.id)                # kills the worker; nothing is left on disk

The worker is `python -m pipelines.synth <job_dir>/synth.yml --events ...` (kind "synth"),
started by the job runner like training: it writes into `<output_dir>.partial/` and renames it
to `output_dir` at the end, and the runner removes the partial folder of a cancelled or failed
job, so an output folder that exists is always complete.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from studio.errors import JobError
from studio.jobs.runner import JobRunner, get_runner
from studio.jobs.store import ACTIVE_STATES, JobRecord, JobState, new_job_id
from studio.settings import StudioSettings, load_settings
from studio.synth.config import (
    SynthConfig,
    SynthError,
    dump_synth_config,
    load_synth_config,
    resolve_synth_paths,
)
from studio.synth.items import SET_FILES, SET_NAMES, read_rows

JOB_KIND = "synth"
WORKER_MODULE = "pipelines.synth"
CONFIG_FILE = "synth.yml"
REPORT_FILE = "report.json"
PARTIAL_SUFFIX = ".partial"
PREVIEW_ROWS = 20  # per set
PREVIEW_HEADERS = ["set", "kind", "prompt", "response", "doc_id", "chunk"]


class SynthStatus(BaseModel, frozen=True):
    """A synthetic-data job now: what the section shows and /synth_status returns."""

    job_id: str
    state: JobState
    done: bool
    progress_done: int = Field(description="generator requests answered")
    progress_total: int | None
    fraction: float | None
    eta_seconds: float | None
    message: str
    error: str | None
    output_dir: str
    report: dict[str, Any] | None = Field(description="report.json once the job has finished")
    counts: list[list[Any]] = Field(description="rows: set, parsed, kept, then drops per filter")
    preview: list[list[Any]] = Field(description="rows of kept items (PREVIEW_HEADERS)")
    log_tail: str


def synth_runs_dir(settings: StudioSettings | None = None) -> Path:
    """Default parent of output folders: STUDIO_HOME/synth."""
    return (settings or load_settings()).home / "synth"


def default_output_dir(name: str = "synth", settings: StudioSettings | None = None) -> Path:
    """A fresh output folder under synth_runs_dir (suffixed -2, -3... if taken)."""
    base = synth_runs_dir(settings)
    candidate, counter = base / name, 2
    while candidate.exists() or candidate.with_name(candidate.name + PARTIAL_SUFFIX).exists():
        candidate = base / f"{name}-{counter}"
        counter += 1
    return candidate


def check_synth_config(config: SynthConfig, settings: StudioSettings | None = None) -> None:
    """Refuse a config that cannot run, before a job starts (SynthError / ModelError)."""
    from studio.catalog.registry import model_folder
    from studio.confine import confine_path

    for field, paths in (("inputs", config.inputs), ("held_out_inputs", config.held_out_inputs)):
        for path in paths:
            # A shared service: only documents under the studio's roots may be read.
            confine_path(path, settings=settings, what=field)
            if not Path(path).exists():
                raise SynthError(
                    f"{field}: {path} does not exist; choose a documents file or folder"
                )
    model_folder(config.generator, settings=settings)
    output = confine_path(config.output_dir, settings=settings, what="output_dir")
    if output.exists():
        raise SynthError(
            f"output_dir {output} already exists; choose a new output_dir or delete that folder"
        )


def start_synth_job(
    config: SynthConfig | str | Path,
    *,
    runner: JobRunner | None = None,
    settings: StudioSettings | None = None,
    owner: str | None = None,
) -> JobRecord:
    """Check `config` and start it as a background job; the job's record."""
    settings = settings or (runner.settings if runner is not None else load_settings())
    if not isinstance(config, SynthConfig):
        config = load_synth_config(config)
    config = resolve_synth_paths(config)
    check_synth_config(config, settings)
    runner = runner or get_runner(settings)
    job_id = new_job_id()
    job_dir = runner.settings.jobs_dir / job_id
    job_dir.mkdir(parents=True)
    config_path = job_dir / CONFIG_FILE
    config_path.write_text(
        dump_synth_config(config, command=f"python -m {WORKER_MODULE} {CONFIG_FILE}"),
        encoding="utf-8",
    )
    output = Path(config.output_dir)
    try:
        return runner.start(
            kind=JOB_KIND,
            title=f"synth data {output.name} ({time.strftime('%H:%M')})",
            module=WORKER_MODULE,
            args=[str(config_path)],
            output_path=str(output),
            temp_path=str(output.with_name(output.name + PARTIAL_SUFFIX)),
            owner=owner,
            job_id=job_id,
        )
    except JobError:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise


def synth_status(
    job_id: str, *, runner: JobRunner | None = None, settings: StudioSettings | None = None
) -> SynthStatus:
    """The job's state, progress, and (once finished) its counts and a preview of kept items."""
    runner = runner or get_runner(settings)
    job = runner.status(job_id)
    record = job.record
    if record.kind != JOB_KIND:
        raise JobError(f"job {job_id} is a {record.kind} job, not a synthetic-data job")
    config = load_synth_config(Path(record.job_dir) / CONFIG_FILE)
    output = Path(config.output_dir)
    report = None
    if record.state == JobState.SUCCEEDED and (output / REPORT_FILE).is_file():
        report = json.loads((output / REPORT_FILE).read_text(encoding="utf-8"))
    return SynthStatus(
        job_id=job_id,
        state=record.state,
        done=record.state not in ACTIVE_STATES,
        progress_done=record.progress_done or 0,
        progress_total=record.progress_total,
        fraction=job.fraction,
        eta_seconds=job.eta_seconds,
        message=record.message,
        error=record.error,
        output_dir=str(output),
        report=report,
        counts=count_rows(report) if report else [],
        preview=preview_rows(output) if report else [],
        log_tail=job.log_tail,
    )


def cancel_synth_job(
    job_id: str, *, runner: JobRunner | None = None, settings: StudioSettings | None = None
) -> SynthStatus:
    """Stop the job now; its partial output is removed (the runner's temp_path)."""
    runner = runner or get_runner(settings)
    runner.cancel(job_id)
    return synth_status(job_id, runner=runner)


def count_rows(report: dict[str, Any]) -> list[list[Any]]:
    """[set, parsed, kept, dropped by each filter...] per set, in FILTER_NAMES order."""
    from studio.synth.items import FILTER_NAMES

    sets = report.get("sets", {})
    return [
        [name, sets[name]["parsed"], sets[name]["kept"], *(sets[name][f] for f in FILTER_NAMES)]
        for name in SET_NAMES
        if name in sets
    ]


def preview_rows(output_dir: str | Path, limit: int = PREVIEW_ROWS) -> list[list[Any]]:
    """The first kept items of each set as table rows (PREVIEW_HEADERS)."""
    rows: list[list[Any]] = []
    for name in SET_NAMES:
        path = Path(output_dir) / SET_FILES[name]
        if not path.is_file():
            continue
        for row in read_rows(path, limit):
            if "messages" in row:
                prompt, response = (m["content"] for m in row["messages"][:2])
            else:
                prompt, response = row["prompt"], row["reference"]
            rows.append([name, row["kind"], prompt, response, row["doc_id"], row["chunk"]])
    return rows
