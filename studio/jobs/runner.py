"""Background jobs: a worker subprocess per job, watched, cancellable, remembered in SQLite.

The runner starts `python -m <module> <args> --events <job_dir>/events.jsonl` without a shell,
in a new session (so the worker and anything it spawns form one process group that cancel can
kill), with stdout and stderr going to `<job_dir>/worker.log`. A watcher thread per job tails the
events into the store and finalises the job when the process exits. Nothing the worker does can
take the app down: it is a different process.

A runner built on a studio home that has jobs left RUNNING by an app that died reconciles them:
a worker still alive (same pid, same process start time, our events file on its command line)
is re-attached and watched; one that is gone becomes INTERRUPTED (or SUCCEEDED if it had
finished its output and said so).

    runner = get_runner()
    record = runner.start(kind="merge", title="ties", module="studio.merging.worker", args=[...])
    runner.wait(record.id, timeout=600).state
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from studio.errors import JobError
from studio.jobs.events import ErrorEvent, LogEvent, ProgressEvent, ResultEvent, read_events
from studio.jobs.store import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    JobRecord,
    JobRuntime,
    JobState,
    JobStore,
    new_job_id,
)
from studio.settings import StudioSettings, load_settings

LOG = logging.getLogger(__name__)

# The folder that holds the `studio` package: workers run from here so `-m studio...` imports.
REPO_ROOT = Path(__file__).resolve().parents[2]

EVENTS_FILE = "events.jsonl"
LOG_FILE = "worker.log"
POLL_SECONDS = 0.25
CANCEL_GRACE_SECONDS = 3.0
# A QUEUED job without a pid younger than this may be mid-start in another process: leave it.
START_GRACE_SECONDS = 30.0
LOG_TAIL_BYTES = 8000
LOG_TAIL_LINES = 40

INTERRUPTED_MESSAGE = (
    "the studio stopped while this job was running and its worker process is gone; "
    "start the job again"
)


@dataclass(frozen=True)
class JobStatus:
    """A job's record plus what the UI shows live: fraction done, ETA and the log's last lines."""

    record: JobRecord
    fraction: float | None
    eta_seconds: float | None
    log_tail: str

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> JobState:
        return self.record.state

    @property
    def done(self) -> bool:
        """True once the job can no longer change (succeeded, failed, cancelled, interrupted)."""
        return self.record.state in TERMINAL_STATES


class JobRunner:
    """Starts, watches, cancels and lists the jobs of one studio home."""

    def __init__(self, settings: StudioSettings) -> None:
        self.settings = settings
        self.store = JobStore(settings.db_path)
        # Serialises event ingestion and finalising within this process; across processes the
        # store's compare-and-set keeps finalising single.
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._watchers: dict[str, threading.Thread] = {}
        self.reconcile()

    # ------------------------------------------------------------------ public API

    def start(
        self,
        *,
        kind: str,
        title: str,
        module: str,
        args: Sequence[str],
        output_path: str | None = None,
        temp_path: str | None = None,
        owner: str | None = None,
        env: Mapping[str, str] | None = None,
        job_id: str | None = None,
    ) -> JobRecord:
        """Launch `python -m module *args --events <job_dir>/events.jsonl` as a background job.

        The worker runs in the repository root (so `-m studio...` imports): pass absolute
        paths in `args`. JobError if another queued/running job writes to the same
        `output_path`. `job_id` lets a caller prepare files in the job folder
        (settings.jobs_dir / job_id) before starting.
        """
        # 1) the record, QUEUED; refuses a second job on the same output
        job_id = job_id or new_job_id()
        job_dir = self.settings.jobs_dir / job_id
        self.store.create(
            kind=kind,
            title=title,
            job_dir=job_dir,
            job_id=job_id,
            output_path=_normalise(output_path),
            temp_path=_normalise(temp_path),
            owner=owner,
        )
        job_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", module, *args, "--events", str(job_dir / EVENTS_FILE)]
        LOG.info("starting job %s: %s", job_id, " ".join(command))

        # 2) the worker: no shell, its own session (= process group), output to the log file
        try:
            with open(job_dir / LOG_FILE, "ab") as log_file:
                proc = subprocess.Popen(
                    command,
                    cwd=REPO_ROOT,
                    # The worker's studio home is this runner's (its result cache, catalog).
                    env=_child_env({"STUDIO_HOME": str(self.settings.home), **(env or {})}),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as error:
            reason = f"could not start the {kind} worker ({module}): {error}"
            self.store.transition(
                job_id, ACTIVE_STATES, JobState.FAILED, error=reason, finished_at=time.time()
            )
            raise JobError(reason) from error

        # 3) remember who the process is, so a later runner can tell it from a reused pid
        with self._lock:
            self._procs[job_id] = proc
            started = self.store.transition(
                job_id,
                frozenset({JobState.QUEUED}),
                JobState.RUNNING,
                pid=proc.pid,
                proc_started=_create_time(proc.pid),
                started_at=time.time(),
                message="started",
            )
            if not started:  # cancelled between create and launch
                _kill_group(proc.pid, signal.SIGKILL)
            self._watch(job_id, target=self._watch_child, args=(job_id, proc))
        return self.store.get(job_id)

    def status(self, job_id: str) -> JobStatus:
        """The job now: new events applied, fraction, ETA, log tail. JobError if unknown."""
        record = self.store.get(job_id)
        if record.state in ACTIVE_STATES:
            self._attach_or_settle(record)
            record = self._ingest(job_id)
        return self._status(record)

    def cancel(self, job_id: str) -> JobStatus:
        """Stop a job: SIGTERM to its process group, SIGKILL after a grace period.

        The job ends CANCELLED and its temp_path is removed. Cancelling a finished job changes
        nothing and returns its status.
        """
        record = self.store.get(job_id)
        if record.state in TERMINAL_STATES:
            return self._status(record)
        self.store.update(job_id, cancel_requested=True)
        record = self.store.get(job_id)
        if record.state in TERMINAL_STATES:  # it finished while we were asking
            return self._status(record)
        exit_code = self._terminate(record)
        self._finalise(job_id, exit_code=exit_code)
        return self.status(job_id)

    def wait(self, job_id: str, timeout: float) -> JobStatus:
        """Poll until the job is in a terminal state or `timeout` seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            left = deadline - time.monotonic()
            if status.done or left <= 0:
                return status
            time.sleep(min(POLL_SECONDS, left))

    def list(self, limit: int = 50, owner: str | None = None) -> list[JobStatus]:
        """Newest first, with live progress for the running ones."""
        statuses = []
        for record in self.store.list(limit=limit, owner=owner):
            if record.state in ACTIVE_STATES:
                self._attach_or_settle(record)
                record = self._ingest(record.id)
            statuses.append(self._status(record))
        return statuses

    def reconcile(self) -> None:
        """Re-attach to live workers of unfinished jobs; settle the ones whose worker is gone."""
        for record in self.store.active():
            self._attach_or_settle(record)

    # ------------------------------------------------------------------ watching

    def _watch(self, job_id: str, *, target: Callable[..., None], args: tuple[object, ...]) -> None:
        thread = threading.Thread(
            target=self._guarded, args=(target, *args), name=f"job-{job_id}", daemon=True
        )
        self._watchers[job_id] = thread
        thread.start()

    def _guarded(self, target: Callable[..., None], *args: object) -> None:
        # A bug in a watcher must not kill the app; it is logged and the job can still be
        # settled by the next status() call or runner.
        try:
            target(*args)
        except Exception:
            LOG.exception("job watcher failed")

    def _watch_child(self, job_id: str, proc: subprocess.Popen[bytes]) -> None:
        """Our own worker: wait for its exit code, applying events meanwhile."""
        while True:
            try:
                exit_code = proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                self._ingest(job_id)
        self._finalise(job_id, exit_code=exit_code)

    def _watch_attached(self, job_id: str, pid: int, started: float | None, events: str) -> None:
        """A worker started by an earlier app: not our child, so poll whether it still runs."""
        while _is_our_process(pid, started, events):
            self._ingest(job_id)
            time.sleep(POLL_SECONDS)
        self._finalise(job_id, exit_code=None)

    def _attach_or_settle(self, record: JobRecord) -> None:
        """For an active job this process does not watch yet: watch it, or settle it."""
        with self._lock:
            if record.id in self._watchers:
                return
            runtime = self.store.runtime(record.id)
            events = str(Path(record.job_dir) / EVENTS_FILE)
            if record.pid is not None and _is_our_process(record.pid, runtime.proc_started, events):
                LOG.info("re-attaching to job %s (pid %s)", record.id, record.pid)
                self._watch(
                    record.id,
                    target=self._watch_attached,
                    args=(record.id, record.pid, runtime.proc_started, events),
                )
                return
            if record.pid is None and time.time() - record.created_at < START_GRACE_SECONDS:
                return  # being started right now by someone else
            self._finalise(record.id, exit_code=None, lost=True)

    # ------------------------------------------------------------------ events and endings

    def _ingest(self, job_id: str) -> JobRecord:
        """Apply events written since the last read to the store; return the record."""
        with self._lock:
            record = self.store.get(job_id)
            runtime = self.store.runtime(job_id)
            path = Path(record.job_dir) / EVENTS_FILE
            events, offset = read_events(path, runtime.events_offset)
            if not events:
                return record
            fields: dict[str, object] = {"events_offset": offset}
            first_at = runtime.first_progress_at
            for event in events:
                if isinstance(event, ProgressEvent):
                    fields.update(
                        progress_done=event.done,
                        progress_total=event.total,
                        message=event.message,
                        last_progress_at=event.time,
                    )
                    if first_at is None:
                        first_at = event.time
                        fields.update(first_progress_at=event.time, first_progress_done=event.done)
                elif isinstance(event, ResultEvent):
                    fields.update(result_seen=True, message="finished")
                    if event.output_path:
                        fields["output_path"] = event.output_path
                elif isinstance(event, ErrorEvent):
                    fields["error"] = event.message
                elif isinstance(event, LogEvent):
                    fields["message"] = event.message
            return self.store.update(job_id, **fields)

    def _finalise(self, job_id: str, *, exit_code: int | None, lost: bool = False) -> JobRecord:
        """Decide how a job whose worker has ended finished, once (compare-and-set).

        Succeeded: exit 0 (or unknown) and a result event whose output exists. Otherwise the
        rest of its process group is killed, temp_path removed, and the state is CANCELLED
        (asked for), FAILED with the worker's error event, INTERRUPTED (`lost`: nobody saw it
        end) or FAILED with the exit reason and the log's last lines.
        """
        with self._lock:
            record = self._ingest(job_id)
            if record.state in TERMINAL_STATES:
                return record
            runtime = self.store.runtime(job_id)
            now = time.time()
            output_ok = record.output_path is None or Path(record.output_path).exists()
            if runtime.result_seen and output_ok and exit_code in (0, None):
                self.store.transition(
                    job_id, ACTIVE_STATES, JobState.SUCCEEDED, finished_at=now, error=None
                )
                self._procs.pop(job_id, None)
                return self.store.get(job_id)
            if record.pid is not None and exit_code is not None:
                # Our own child just exited, so its group is ours: kill what it left behind.
                # (Without an exit code the pid's identity is unproven; killing could hit a
                # stranger's group.)
                _kill_group(record.pid, signal.SIGKILL)
            _remove_temp(record)
            if runtime.cancel_requested:
                fields = {"message": "cancelled", "error": None}
                state = JobState.CANCELLED
            elif record.error:  # the worker said why it failed, whoever saw it end
                fields = {"message": "failed", "error": record.error}
                state = JobState.FAILED
            elif lost:
                fields = {"message": "interrupted", "error": INTERRUPTED_MESSAGE}
                state = JobState.INTERRUPTED
            else:
                reason = self._failure_reason(record, exit_code, runtime)
                fields = {"message": "failed", "error": reason}
                state = JobState.FAILED
            self.store.transition(job_id, ACTIVE_STATES, state, finished_at=now, **fields)
            self._procs.pop(job_id, None)
            LOG.info("job %s ended %s", job_id, self.store.get(job_id).state.value)
            return self.store.get(job_id)

    def _failure_reason(self, record: JobRecord, exit_code: int | None, runtime: JobRuntime) -> str:
        if exit_code is not None and exit_code < 0:
            name = _signal_name(-exit_code)
            reason = (
                f"the worker process was killed by {name} (stopped from outside the studio, "
                "or the machine ran out of memory)"
            )
        elif exit_code:
            reason = f"the worker process exited with code {exit_code}"
        elif runtime.result_seen:
            reason = f"the worker reported success but its output {record.output_path} is missing"
        else:
            reason = "the worker process ended without reporting a result"
        tail = "\n".join(_log_tail(Path(record.job_dir) / LOG_FILE).splitlines()[-5:])
        return f"{reason}; last log lines:\n{tail}" if tail.strip() else reason

    def _terminate(self, record: JobRecord) -> int | None:
        """SIGTERM the job's process group, SIGKILL after the grace period; the exit code if known."""
        proc = self._procs.get(record.id)
        if record.pid is None:
            return None
        if proc is None:
            runtime = self.store.runtime(record.id)
            events = str(Path(record.job_dir) / EVENTS_FILE)
            if not _is_our_process(record.pid, runtime.proc_started, events):
                return None  # already gone, or the pid now belongs to someone else
        _kill_group(record.pid, signal.SIGTERM)
        exit_code = _wait_gone(record.pid, proc, CANCEL_GRACE_SECONDS)
        # Always SIGKILL the group: children that ignored SIGTERM outlive their parent.
        _kill_group(record.pid, signal.SIGKILL)
        if proc is not None and exit_code is None:
            exit_code = _wait_gone(record.pid, proc, 10.0)
        return exit_code

    # ------------------------------------------------------------------ status

    def _status(self, record: JobRecord) -> JobStatus:
        runtime = self.store.runtime(record.id)
        return JobStatus(
            record=record,
            fraction=_fraction(record),
            eta_seconds=_eta(record, runtime),
            log_tail=_log_tail(Path(record.job_dir) / LOG_FILE),
        )


# ---------------------------------------------------------------------- module helpers

_RUNNERS: dict[Path, JobRunner] = {}
_RUNNERS_LOCK = threading.Lock()


def get_runner(settings: StudioSettings | None = None) -> JobRunner:
    """The runner of a studio home, one per home per process (every user's jobs, each with its
    owner). Built on first use, which also re-attaches to jobs an earlier app left running."""
    settings = settings or load_settings()
    key = settings.home.resolve()
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = _RUNNERS[key] = JobRunner(settings)
        return runner


def _normalise(path: str | None) -> str | None:
    return os.path.abspath(os.path.expanduser(path)) if path else path


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    # The worker must import `studio` whatever the app's working directory was.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _is_our_process(pid: int, started: float | None, events: str) -> bool:
    """True if `pid` is alive, not a zombie, and is the worker we launched.

    A pid alone is not proof: after a reboot or a long time it may belong to another program.
    The start time recorded at launch and our events file on its command line must both match.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started is None or abs(proc.create_time() - started) > 0.01:
            return False
        return events in proc.cmdline()
    except psutil.Error:
        return False


def _kill_group(pid: int, sig: signal.Signals) -> None:
    # start_new_session=True made the worker a session and group leader: its pgid is its pid.
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> int | None:
    """Wait up to `timeout` s for the worker to exit; its exit code when it is our child."""
    if proc is not None:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            return None
        time.sleep(0.05)
    return None


def _remove_temp(record: JobRecord) -> None:
    if not record.temp_path:
        return
    temp = Path(record.temp_path)
    # A pattern ("<run>/step-*.partial") names every half-written folder of a worker that
    # writes several (a training run's checkpoints); a plain path names one.
    matches = sorted(temp.parent.glob(temp.name)) if glob.has_magic(temp.name) else [temp]
    for path in matches:
        # Never remove the output itself, whatever a caller passed.
        if record.output_path and path == Path(record.output_path):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _fraction(record: JobRecord) -> float | None:
    if record.state == JobState.SUCCEEDED:
        return 1.0
    if not record.progress_total:
        return None
    return min(1.0, max(0.0, record.progress_done / record.progress_total))


def _eta(record: JobRecord, runtime: JobRuntime) -> float | None:
    """Seconds left at the rate seen between the first and the latest progress event."""
    if record.state != JobState.RUNNING or not record.progress_total:
        return None
    if runtime.first_progress_at is None or runtime.last_progress_at is None:
        return None
    done = record.progress_done - (runtime.first_progress_done or 0)
    span = runtime.last_progress_at - runtime.first_progress_at
    if done <= 0 or span <= 0:
        return None
    return max(0.0, (record.progress_total - record.progress_done) * span / done)


def _log_tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
            data = fh.read()
    except FileNotFoundError:
        return ""
    # Progress bars redraw a line with carriage returns: keep what a terminal would show.
    text = data.decode("utf-8", errors="replace")
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join(lines[-LOG_TAIL_LINES:]).strip("\n")
