"""A trainer killed with SIGKILL (issue 8): the job fails with the reason, leaves no half-written
checkpoint, and resumes from its last complete one. Two real `accelerate launch` runs.

    .venv/bin/python -m pytest -q tests/test_robustness_train.py
"""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from studio.jobs import JobState, get_runner
from studio.settings import load_settings
from studio.training import resume_train_job, start_train_job, train_status
from studio.training.checkpoints import list_checkpoints
from tests.test_robustness import (
    WAIT,
    leftovers,
    tiny_cpt,
    wait_for,
    write_text_data,
)

# ---------------------------------------------------------------------- 1. trainer killed


@pytest.mark.slow
def test_a_training_worker_killed_with_sigkill_fails_then_resumes_from_its_checkpoint(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """The trainer process (what an OOM kill picks) gets SIGKILL after its first checkpoint: the
    job FAILS naming SIGKILL, no `step-*.partial` is left, and resume_train_job continues from
    the last complete checkpoint to the end."""
    settings = load_settings()
    data = write_text_data(tmp_path / "data" / "domain.jsonl")
    run = settings.runs_dir / "killed"
    config = tiny_cpt(tiny_family["base"], data, run, max_steps=100_000, save_every=2)
    record = start_train_job(config, settings=settings)

    def checkpointed() -> bool:
        status = train_status(record.id)
        return status.done or (len(status.checkpoints) >= 1 and status.step >= 3)

    wait_for(checkpointed, "a first checkpoint", timeout=180)
    assert train_status(record.id).state == JobState.RUNNING
    launcher = psutil.Process(record.pid)
    trainers = [p for p in launcher.children(recursive=True) if "pipelines.cpt" in p.cmdline()]
    assert trainers, [p.cmdline() for p in launcher.children(recursive=True)]
    trainers[0].send_signal(signal.SIGKILL)
    failed = get_runner(settings).wait(record.id, timeout=WAIT)
    assert failed.state == JobState.FAILED
    assert "SIGKILL" in failed.record.error, failed.record.error
    assert leftovers(run) == []
    saved = [c.step for c in list_checkpoints(run) if c.resumable]
    assert saved and saved[-1] % 2 == 0

    resumed = resume_train_job(run, max_steps=saved[-1] + 2, settings=settings)
    final = get_runner(settings).wait(resumed.id, timeout=180)
    assert final.state == JobState.SUCCEEDED, final.record.error
    status = train_status(resumed.id)
    assert status.step == saved[-1] + 2 and status.phase == "completed"
    assert [p.step for p in status.history][-2:] == [saved[-1] + 1, saved[-1] + 2]
