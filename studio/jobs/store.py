"""Job history in the studio's SQLite database: one row per background job.

The runner, the app and the CLI may all hold a JobStore on the same file at once (WAL mode, see
`studio.db`). State changes that must happen once (start on a free output folder, finish) are
guarded inside one transaction or by a compare-and-set on the current state, so two processes
racing to finish the same job cannot both win.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from studio.db import connect, ensure_schema
from studio.errors import JobError

LOG = logging.getLogger(__name__)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})
TERMINAL_STATES = frozenset(set(JobState) - ACTIVE_STATES)


class JobRecord(BaseModel, frozen=True):
    """What the studio remembers about a job; what the Jobs tab and `python -m studio jobs` show."""

    id: str
    kind: str = Field(description="merge, train, sweep, ...")
    title: str = Field(description="one line for people")
    state: JobState
    created_at: float
    started_at: float | None
    finished_at: float | None
    pid: int | None = Field(description="worker process id (also its process group id)")
    progress_done: int
    progress_total: int | None
    message: str = Field(description="the worker's latest progress or log message")
    output_path: str | None
    temp_path: str | None = Field(
        description="removed when the job does not succeed (a glob pattern removes every match)"
    )
    error: str | None
    job_dir: str = Field(description="holds events.jsonl, worker.log and the job's inputs")
    owner: str | None = None


@dataclass(frozen=True)
class JobRuntime:
    """The runner's bookkeeping for a job, kept out of JobRecord (users need not see it)."""

    proc_started: float | None  # process create time: tells our worker from a reused pid
    events_offset: int  # bytes of events.jsonl already applied
    cancel_requested: bool
    result_seen: bool
    first_progress_at: float | None  # first progress event: the start of the ETA rate
    first_progress_done: int | None
    last_progress_at: float | None


_RECORD_FIELDS = tuple(JobRecord.model_fields)
_RUNTIME_FIELDS = (
    "proc_started",
    "events_offset",
    "cancel_requested",
    "result_seen",
    "first_progress_at",
    "first_progress_done",
    "last_progress_at",
)
_FIELDS = frozenset(_RECORD_FIELDS + _RUNTIME_FIELDS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    pid INTEGER,
    progress_done INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER,
    message TEXT NOT NULL DEFAULT '',
    output_path TEXT,
    temp_path TEXT,
    error TEXT,
    job_dir TEXT NOT NULL,
    owner TEXT,
    proc_started REAL,
    events_offset INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result_seen INTEGER NOT NULL DEFAULT 0,
    first_progress_at REAL,
    first_progress_done INTEGER,
    last_progress_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
"""


def new_job_id() -> str:
    """A short random id people can type (8 hex digits)."""
    return secrets.token_hex(4)


class JobStore:
    """CRUD over the `jobs` table. Thread-safe: one connection, used under a lock."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self._lock = threading.RLock()
        # Opened on first need: looking at the jobs of a home that has none creates no file.
        self._conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ reads

    def get(self, job_id: str) -> JobRecord:
        return _record(self._row(job_id))

    def runtime(self, job_id: str) -> JobRuntime:
        row = self._row(job_id)
        return JobRuntime(
            proc_started=row["proc_started"],
            events_offset=row["events_offset"],
            cancel_requested=bool(row["cancel_requested"]),
            result_seen=bool(row["result_seen"]),
            first_progress_at=row["first_progress_at"],
            first_progress_done=row["first_progress_done"],
            last_progress_at=row["last_progress_at"],
        )

    def list(self, limit: int = 50, owner: str | None = None) -> list[JobRecord]:
        """Newest first; only `owner`'s jobs when given."""
        sql = "SELECT * FROM jobs"
        params: list[Any] = []
        if owner is not None:
            sql += " WHERE owner = ?"
            params.append(owner)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        params.append(int(limit))
        return [_record(row) for row in self._read(sql, params)]

    def active(self) -> list[JobRecord]:
        """Jobs queued or running, oldest first."""
        rows = self._read(
            "SELECT * FROM jobs WHERE state IN (?, ?) ORDER BY created_at",
            [JobState.QUEUED.value, JobState.RUNNING.value],
        )
        return [_record(row) for row in rows]

    # ------------------------------------------------------------------ writes

    def create(
        self,
        *,
        kind: str,
        title: str,
        job_dir: str | Path,
        job_id: str | None = None,
        output_path: str | None = None,
        temp_path: str | None = None,
        owner: str | None = None,
    ) -> JobRecord:
        """Insert a QUEUED job; JobError if `output_path` is already a queued/running job's output.

        The check and the insert are one IMMEDIATE transaction, so two clicks (or the app and
        the CLI) cannot both start a job on the same folder.
        """
        job_id = job_id or new_job_id()
        now = time.time()
        with self._lock:
            conn = self._writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._refuse_duplicate(conn, job_id, output_path)
                conn.execute(
                    "INSERT INTO jobs (id, kind, title, state, created_at, output_path, temp_path,"
                    " job_dir, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        job_id,
                        kind,
                        title,
                        JobState.QUEUED.value,
                        now,
                        output_path,
                        temp_path,
                        str(job_dir),
                        owner,
                    ],
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return self.get(job_id)

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Set fields (record or runtime ones) and return the updated record."""
        if fields:
            sql, params = _set_clause(fields)
            with self._lock:
                cursor = self._writer().execute(
                    f"UPDATE jobs SET {sql} WHERE id = ?", [*params, job_id]
                )
            if cursor.rowcount == 0:
                raise JobError(_unknown(job_id))
        return self.get(job_id)

    def transition(
        self, job_id: str, from_states: frozenset[JobState], to_state: JobState, **fields: Any
    ) -> bool:
        """Compare-and-set: move to `to_state` only if the job is in one of `from_states`.

        Returns whether this call made the change (False: someone else finished it first).
        """
        sql, params = _set_clause({"state": to_state, **fields})
        marks = ", ".join("?" for _ in from_states)
        with self._lock:
            cursor = self._writer().execute(
                f"UPDATE jobs SET {sql} WHERE id = ? AND state IN ({marks})",
                [*params, job_id, *(s.value for s in from_states)],
            )
        return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------------ helpers

    def _row(self, job_id: str) -> sqlite3.Row:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", [job_id])
        if not rows:
            raise JobError(_unknown(job_id))
        return rows[0]

    def _read(self, sql: str, params: list[Any]) -> list[sqlite3.Row]:
        with self._lock:
            if self._conn is None and not self.db_path.exists():
                return []
            return self._writer().execute(sql, params).fetchall()

    def _writer(self) -> sqlite3.Connection:
        with self._lock:
            if self._conn is None:
                self._conn = connect(self.db_path)
                ensure_schema(self._conn, _SCHEMA)
            return self._conn

    def _refuse_duplicate(
        self, conn: sqlite3.Connection, job_id: str, output_path: str | None
    ) -> None:
        if conn.execute("SELECT 1 FROM jobs WHERE id = ?", [job_id]).fetchone():
            raise JobError(f"a job with id '{job_id}' already exists; choose another id")
        if output_path is None:
            return
        busy = conn.execute(
            "SELECT id, state FROM jobs WHERE output_path = ? AND state IN (?, ?)",
            [output_path, JobState.QUEUED.value, JobState.RUNNING.value],
        ).fetchone()
        if busy is not None:
            raise JobError(
                f"job {busy['id']} is already {busy['state']} and writing to {output_path}; "
                "wait for it to finish or cancel it before starting another job on that folder"
            )


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord.model_validate({name: row[name] for name in _RECORD_FIELDS})


def _set_clause(fields: dict[str, Any]) -> tuple[str, list[Any]]:
    unknown = set(fields) - _FIELDS
    if unknown:
        # A programming error, not a user one: the caller named a column that does not exist.
        raise ValueError(f"unknown job fields: {sorted(unknown)}")
    names = list(fields)
    values = [_db_value(fields[name]) for name in names]
    return ", ".join(f"{name} = ?" for name in names), values


def _db_value(value: Any) -> Any:
    if isinstance(value, JobState):
        return value.value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _unknown(job_id: str) -> str:
    return f"no job with id '{job_id}'; list the jobs to see their ids"
