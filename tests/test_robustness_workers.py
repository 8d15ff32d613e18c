"""Worker faults (issue 8): a merge worker killed with SIGKILL, a disk that fills up during an
export. Real worker subprocesses, real signals, a real RLIMIT_FSIZE (studio.jobs.faults).

    .venv/bin/python -m pytest -q tests/test_robustness_workers.py
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from studio.catalog import list_models
from studio.jobs import JobRunner, JobState, get_runner
from studio.jobs.faults import MAX_FILE_BYTES_ENV, STEP_DELAY_ENV
from studio.merging import merge_to_folder, start_merge_job
from studio.recipes import recipe_to_yaml
from studio.settings import load_settings
from tests.test_robustness import WAIT, digest, leftovers, linear_recipe, wait_for

# ---------------------------------------------------------------------- 1 + 3. worker faults


def merge_started(runner: JobRunner, job_id: str) -> Callable[[], bool]:
    def check() -> bool:
        status = runner.status(job_id)
        temp = status.record.temp_path
        return status.done or (status.record.progress_done >= 1 and Path(temp).exists())

    return check


@pytest.mark.slow
def test_a_merge_worker_killed_with_sigkill_fails_with_the_reason_and_leaves_nothing(
    tiny_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL mid-merge (the worker slowed by STUDIO_WORKER_STEP_DELAY so it is caught half-way):
    FAILED naming SIGKILL, neither output nor temp folder; the same runner then merges fine."""
    settings = load_settings()
    runner = get_runner(settings)
    recipe = linear_recipe(tiny_family["cpt"], tiny_family["chat"])
    monkeypatch.setenv(STEP_DELAY_ENV, "0.5")
    record = start_merge_job(recipe, settings.merges_dir / "killed", settings=settings)
    wait_for(merge_started(runner, record.id), "the first merged tensor")
    mid = runner.status(record.id)
    assert mid.state == JobState.RUNNING, "the merge ended before it could be killed"
    assert Path(record.temp_path).is_dir()
    os.kill(record.pid, signal.SIGKILL)
    final = runner.wait(record.id, timeout=WAIT)
    assert final.state == JobState.FAILED
    assert final.record.error.startswith("the worker process was killed by SIGKILL")
    assert not Path(record.output_path).exists() and leftovers(settings.merges_dir) == []

    monkeypatch.delenv(STEP_DELAY_ENV)
    again = start_merge_job(recipe, settings.merges_dir / "killed", settings=settings)
    done = runner.wait(again.id, timeout=WAIT)
    assert done.state == JobState.SUCCEEDED, done.record.error
    assert (settings.merges_dir / "killed" / "model.safetensors").is_file()


def test_a_full_disk_during_export_fails_clearly_and_keeps_earlier_outputs(
    tiny_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RLIMIT_FSIZE in the worker (a ~99 KB weights file cannot be written past 40 KB): the job
    FAILS with a disk-space sentence, its temp folder is gone, an earlier merge is byte-identical."""
    settings = load_settings()
    runner = get_runner(settings)
    recipe = linear_recipe(tiny_family["cpt"], tiny_family["chat"])
    # the earlier output, merged in-process (a worker launch costs seconds here)
    merge_to_folder(recipe_to_yaml(recipe), settings.merges_dir / "earlier")
    before = digest(settings.merges_dir / "earlier")
    assert (settings.merges_dir / "earlier" / "model.safetensors").stat().st_size > 40_000

    monkeypatch.setenv(MAX_FILE_BYTES_ENV, "40000")
    record = start_merge_job(recipe, settings.merges_dir / "full", settings=settings)
    final = runner.wait(record.id, timeout=WAIT)
    assert final.state == JobState.FAILED
    assert final.record.error == (
        "the merge ran out of disk space while writing its output (File too large); its partial "
        "output was removed and earlier outputs are untouched: free some space and start it again"
    )
    assert not (settings.merges_dir / "full").exists() and leftovers(settings.merges_dir) == []
    assert digest(settings.merges_dir / "earlier") == before
    assert [e.name for e in list_models(settings)] == ["earlier"]
