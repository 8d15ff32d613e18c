"""Background jobs: worker subprocesses with JSON-lines progress, cancel, and SQLite history.

from studio.jobs import get_runner
runner = get_runner()                                   # one per studio home per process
record = runner.start(kind="merge", title="...", module="studio.merging.worker", args=[...])
runner.status(record.id).fraction; runner.cancel(record.id); runner.list()
"""

from __future__ import annotations

from studio.jobs.events import (
    ErrorEvent,
    Event,
    EventWriter,
    LogEvent,
    ProgressEvent,
    ResultEvent,
    read_events,
)
from studio.jobs.runner import JobRunner, JobStatus, get_runner
from studio.jobs.store import JobRecord, JobState, JobStore, new_job_id

__all__ = [
    "ErrorEvent",
    "Event",
    "EventWriter",
    "JobRecord",
    "JobRunner",
    "JobState",
    "JobStatus",
    "JobStore",
    "LogEvent",
    "ProgressEvent",
    "ResultEvent",
    "get_runner",
    "new_job_id",
    "read_events",
]
