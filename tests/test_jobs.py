"""Background jobs: real worker subprocesses (tests/job_workers/sleepy.py), real SQLite, real signals.

The sleepy worker imports only studio.jobs, so each job costs a fraction of a second to start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from studio.errors import JobError
from studio.jobs import (
    EventWriter,
    JobRunner,
    JobState,
    JobStore,
    LogEvent,
    ProgressEvent,
    ResultEvent,
    get_runner,
    read_events,
)
from studio.jobs.runner import INTERRUPTED_MESSAGE, REPO_ROOT
from studio.settings import load_settings

SLEEPY = "tests.job_workers.sleepy"
WAIT = 30.0  # generous: only a bound on a hang, never a speed assertion


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """Dead: no such process, or a zombie nobody has reaped yet (it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start_sleepy(runner: JobRunner, tmp_path: Path, *extra: str, name: str = "out") -> tuple:
    out, temp = tmp_path / name, tmp_path / f"{name}.partial"
    record = runner.start(
        kind="test",
        title=f"sleepy {name}",
        module=SLEEPY,
        args=["--temp", str(temp), "--out", str(out), *extra],
        output_path=str(out),
        temp_path=str(temp),
    )
    return record, out, temp


def progressed(runner: JobRunner, job_id: str, steps: int) -> Callable[[], bool]:
    def check() -> bool:
        status = runner.status(job_id)
        return status.done or status.record.progress_done >= steps

    return check


# ---------------------------------------------------------------------- events protocol


def test_read_events_leaves_a_torn_last_line_for_the_next_read(tmp_path: Path) -> None:
    """A half-written line is not consumed; once completed it is read from the returned offset."""
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as writer:
        writer.progress(1, 4, "one")
        writer.log("hello")
    full = ResultEvent(output_path="/x", summary={"n": 1}).model_dump_json() + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("not json at all\n")  # a complete but malformed line is skipped
        fh.write(full[:10])
    events, offset = read_events(path)
    assert [type(e) for e in events] == [ProgressEvent, LogEvent]
    assert (events[0].done, events[0].total, events[0].message) == (1, 4, "one")
    assert offset == path.stat().st_size - 10
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(full[10:])
    more, offset2 = read_events(path, offset)
    assert more == [ResultEvent.model_validate_json(full)]
    assert offset2 == path.stat().st_size
    assert read_events(path, offset2) == ([], offset2)
    assert read_events(tmp_path / "missing.jsonl", 7) == ([], 7)


# ---------------------------------------------------------------------- store


def test_store_get_unknown_id_names_it(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    with pytest.raises(JobError, match="no job with id 'nope'"):
        store.get("nope")


def test_store_lists_newest_first_and_filters_by_owner(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    ids = [
        store.create(kind="k", title=f"t{i}", job_dir=tmp_path / str(i), owner=owner).id
        for i, owner in enumerate(["ann", "bob", "ann"])
    ]
    assert [r.id for r in store.list()] == ids[::-1]
    assert [r.id for r in store.list(owner="ann")] == [ids[2], ids[0]]
    assert [r.id for r in store.list(limit=1)] == [ids[2]]
    assert store.get(ids[0]).state == JobState.QUEUED
    assert store.update(ids[0], message="hi").message == "hi"


# ---------------------------------------------------------------------- runner


def test_progress_fraction_and_eta_are_visible_mid_run_then_the_job_succeeds(
    tmp_path: Path,
) -> None:
    """Mid-run: RUNNING with done/total, fraction and a positive ETA. End: SUCCEEDED, output in
    place, temp gone."""
    runner = get_runner()
    record, out, temp = start_sleepy(runner, tmp_path, "--steps", "8", "--delay", "0.25")
    assert record.state == JobState.RUNNING and record.pid is not None
    wait_for(progressed(runner, record.id, 3), "3 progress steps")
    mid = runner.status(record.id)
    assert mid.state == JobState.RUNNING and not mid.done
    assert mid.record.progress_total == 8
    assert mid.fraction == pytest.approx(mid.record.progress_done / 8)
    assert mid.eta_seconds is not None and mid.eta_seconds > 0
    assert mid.record.message == f"step {mid.record.progress_done}"

    final = runner.wait(record.id, timeout=WAIT)
    assert final.state == JobState.SUCCEEDED and final.done
    assert final.record.output_path == str(out)
    assert (out / "part.txt").read_text() == "half done"
    assert not temp.exists()
    assert final.fraction == 1.0 and final.eta_seconds is None
    assert final.record.error is None and final.record.finished_at is not None
    assert f"sleepy worker pid {record.pid}" in final.log_tail
    assert [s.id for s in runner.list()] == [record.id]


def test_a_failing_worker_ends_failed_with_its_own_message_and_no_temp(tmp_path: Path) -> None:
    runner = get_runner()
    message = "the data file notes.txt has no rows; choose a file with text in it"
    record, out, temp = start_sleepy(
        runner, tmp_path, "--steps", "5", "--delay", "0.05", "--fail-at", "2", "--message", message
    )
    final = runner.wait(record.id, timeout=WAIT)
    assert final.state == JobState.FAILED
    assert final.record.error == message
    assert not temp.exists() and not out.exists()
    assert "about to fail" in final.log_tail


def test_cancel_kills_the_whole_process_group_and_removes_temp(tmp_path: Path) -> None:
    runner = get_runner()
    record, out, temp = start_sleepy(
        runner, tmp_path, "--steps", "200", "--delay", "0.1", "--child"
    )
    events_path = Path(record.job_dir) / "events.jsonl"

    def child_pid() -> int | None:
        events, _ = read_events(events_path)
        logs = [e.message for e in events if isinstance(e, LogEvent)]
        return int(logs[0].split()[1]) if logs else None

    wait_for(lambda: child_pid() is not None and temp.exists(), "the worker's child and temp")
    grandchild = child_pid()
    assert grandchild is not None and not gone(grandchild)

    status = runner.cancel(record.id)
    assert status.state == JobState.CANCELLED and status.done
    assert status.record.error is None
    wait_for(lambda: gone(record.pid) and gone(grandchild), "worker and its child to die")
    assert not temp.exists() and not out.exists()
    # cancelling again is a no-op that reports the same end
    again = runner.cancel(record.id)
    assert again.state == JobState.CANCELLED
    assert again.record.finished_at == status.record.finished_at


def test_a_worker_killed_from_outside_fails_with_a_reason_and_no_temp(tmp_path: Path) -> None:
    runner = get_runner()
    record, out, temp = start_sleepy(runner, tmp_path, "--steps", "200", "--delay", "0.1")
    wait_for(progressed(runner, record.id, 1), "first progress step")
    assert temp.exists()
    os.kill(record.pid, signal.SIGKILL)
    final = runner.wait(record.id, timeout=WAIT)
    assert final.state == JobState.FAILED
    assert final.record.error.startswith("the worker process was killed by SIGKILL")
    assert "sleepy worker pid" in final.record.error  # the log's last lines come along
    assert not temp.exists() and not out.exists()


def test_a_second_job_on_the_same_output_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    runner = get_runner()
    record, out, _ = start_sleepy(runner, tmp_path, "--steps", "200", "--delay", "0.1")
    with pytest.raises(JobError, match=rf"job {record.id} is already running and writing to {out}"):
        start_sleepy(runner, tmp_path, "--steps", "1")
    assert [s.id for s in runner.list()] == [record.id]  # nothing recorded for the refused one
    runner.cancel(record.id)
    # once the first one has ended, the folder is free again
    second, _, _ = start_sleepy(runner, tmp_path, "--steps", "1", "--delay", "0")
    assert runner.wait(second.id, timeout=WAIT).state == JobState.SUCCEEDED


def test_a_new_runner_interrupts_dead_jobs_and_reattaches_to_live_ones(tmp_path: Path) -> None:
    """After an app crash: the job whose worker also died is INTERRUPTED (temp removed); the one
    whose worker still runs is re-attached, watched, and ends SUCCEEDED."""
    out_live, out_dead = tmp_path / "live", tmp_path / "dead"
    app = subprocess.run(
        [sys.executable, "-m", "tests.job_workers.app_that_dies", str(out_live), str(out_dead)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    live, dead = json.loads(app.stdout.strip().splitlines()[-1])
    store = JobStore(load_settings().db_path)
    assert [store.get(j["id"]).state for j in (live, dead)] == [JobState.RUNNING] * 2

    # the second worker dies too, after it made its temp folder
    wait_for(lambda: Path(dead["temp_path"]).exists(), "the dead job's temp folder")
    os.killpg(dead["pid"], signal.SIGKILL)
    wait_for(lambda: gone(dead["pid"]), "the killed worker to die")

    runner = JobRunner(load_settings())
    interrupted = runner.status(dead["id"])
    assert interrupted.state == JobState.INTERRUPTED
    assert interrupted.record.error == INTERRUPTED_MESSAGE
    assert not Path(dead["temp_path"]).exists() and not out_dead.exists()

    attached = runner.status(live["id"])
    assert attached.state == JobState.RUNNING and not gone(live["pid"])
    final = runner.wait(live["id"], timeout=WAIT)
    assert final.state == JobState.SUCCEEDED
    assert final.record.output_path == str(out_live) and out_live.is_dir()
    assert final.record.progress_done == final.record.progress_total == 10


def test_a_live_pid_that_is_not_our_worker_is_not_reattached(tmp_path: Path) -> None:
    """A RUNNING record whose pid now belongs to another process (here: this test process, with a
    different start time) is INTERRUPTED, and that process is left alone."""
    settings = load_settings()
    settings.ensure_dirs()
    store = JobStore(settings.db_path)
    record = store.create(kind="test", title="stale", job_dir=settings.jobs_dir / "stale")
    store.update(record.id, state=JobState.RUNNING, pid=os.getpid(), proc_started=12345.0)
    status = JobRunner(settings).status(record.id)
    assert status.state == JobState.INTERRUPTED
    assert status.record.error == INTERRUPTED_MESSAGE
    assert not gone(os.getpid())


def test_status_of_unknown_job_and_a_worker_that_cannot_be_found() -> None:
    runner = get_runner()
    with pytest.raises(JobError, match="no job with id 'missing'"):
        runner.status("missing")
    with pytest.raises(JobError, match="no job with id 'missing'"):
        runner.cancel("missing")
    record = runner.start(kind="test", title="bad module", module="tests.job_workers.nope", args=[])
    final = runner.wait(record.id, timeout=WAIT)
    assert final.state == JobState.FAILED
    assert final.record.error.startswith("the worker process exited with code 1")
    assert "No module named tests.job_workers.nope" in final.record.error
