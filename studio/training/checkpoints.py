"""A training run's folder: checkpoints, resume state, the stop request.

    <run>/config.yml              the config the run was started with
    <run>/metrics.jsonl           the metrics log (studio.training.runlog)
    <run>/STOP                    present = "finish this step, save, exit" (graceful stop)
    <run>/step-00000100/          a Hugging Face safetensors folder with its tokenizer...
        resume_state.json         ...the typed ResumeState (step, data position, ...)
        trainer_state/            ...and accelerate's optimizer/scheduler/RNG state
                                  (only the newest `keep_trainer_state` checkpoints keep it)

A checkpoint is written to `step-00000100.partial` and renamed into place, so a folder named
`step-*` is always complete (the catalog skips `*.partial*`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from pydantic import BaseModel, Field

from studio.confine import check_path_text
from studio.training.config import TrainConfigError

LOG = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
RESUME_STATE_FILE = "resume_state.json"
TRAINER_STATE_DIR = "trainer_state"
STOP_FILE = "STOP"
RUN_LOG_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "config.yml"
_STEP_NAME = re.compile(r"^step-(\d{8})$")


class ResumeError(TrainConfigError):
    """A run cannot be resumed from the checkpoint asked for (a config problem: `resume`)."""


class ResumeState(BaseModel, frozen=True):
    """Where a run stood when a checkpoint was written; what `resume` restores besides weights."""

    kind: str = Field(description="cpt or sft")
    step: int = Field(description="optimizer steps done")
    tokens: int = Field(description="training tokens seen, all processes")
    seed: int
    num_processes: int
    data_position: dict[str, int] = Field(
        description="blocks taken from each source so far (the data stream restarts here)"
    )
    mixture_tokens: dict[str, int] = Field(
        default_factory=dict, description="training tokens taken from each source so far"
    )
    trainer_state: str | None = Field(
        default=TRAINER_STATE_DIR, description="sub-folder with optimizer/scheduler/RNG state"
    )


class CheckpointInfo(BaseModel, frozen=True):
    step: int
    path: str
    resumable: bool = Field(description="holds optimizer state, so `resume` can continue from it")


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a `step-NNNNNNNN` folder, None for any other name."""
    match = _STEP_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """The run's complete checkpoints, oldest first; none if `run_dir` is not a folder.

    PathNotAllowedError for text no folder can have (a NUL, a lone surrogate, a name over 255
    bytes): is_dir() would raise a bare OSError (ENAMETOOLONG) for the last one.
    """
    run = Path(check_path_text(str(run_dir), what="run folder"))
    if not run.is_dir():
        return []
    found = []
    for child in run.iterdir():
        step = checkpoint_step(child)
        if step is None or not (child / "config.json").is_file():
            continue
        resumable = (child / RESUME_STATE_FILE).is_file() and (child / TRAINER_STATE_DIR).is_dir()
        found.append(CheckpointInfo(step=step, path=str(child.resolve()), resumable=resumable))
    return sorted(found, key=lambda c: c.step)


def write_resume_state(folder: Path, state: ResumeState) -> None:
    (folder / RESUME_STATE_FILE).write_text(state.model_dump_json(indent=2), encoding="utf-8")


def read_resume_state(checkpoint: str | Path) -> ResumeState:
    path = Path(checkpoint) / RESUME_STATE_FILE
    try:
        return ResumeState.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as error:
        raise ResumeError(
            f"{checkpoint} has no {RESUME_STATE_FILE}, so it cannot be resumed; use it as "
            "`model:` to start from it with a fresh optimizer instead"
        ) from error
    except ValueError as error:
        raise ResumeError(
            f"{path} is damaged ({error}); resume from an earlier checkpoint"
        ) from error


def find_resume_checkpoint(run_dir: str | Path, resume: str) -> Path:
    """The checkpoint folder `resume` ('latest' or a folder) names; ResumeError if unusable."""
    if resume == "latest":
        resumable = [c for c in list_checkpoints(run_dir) if c.resumable]
        if not resumable:
            raise ResumeError(
                f"run folder {run_dir} has no resumable checkpoint yet; start the run without "
                "`resume`"
            )
        return Path(resumable[-1].path)
    folder = Path(resume)
    if not (folder / TRAINER_STATE_DIR).is_dir() or not (folder / RESUME_STATE_FILE).is_file():
        raise ResumeError(
            f"{folder} holds no optimizer state (only the newest checkpoints keep it); resume "
            "from 'latest', or set it as `model:` to start from its weights with a fresh optimizer"
        )
    return folder


def request_stop(run_dir: str | Path) -> Path:
    """Ask a running trainer to finish its current step, save a checkpoint and exit 0."""
    path = Path(run_dir) / STOP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("stop requested\n", encoding="utf-8")
    return path


def stop_requested(run_dir: str | Path) -> bool:
    return (Path(run_dir) / STOP_FILE).exists()


def clear_stop(run_dir: str | Path) -> None:
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)
