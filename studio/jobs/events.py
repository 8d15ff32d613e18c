"""The JSON-lines protocol between a job's worker subprocess and the job runner.

The worker appends one JSON object per line to `<job_dir>/events.jsonl` (LLaMA-Factory style);
the runner tails the file. Every line is flushed as soon as it is written, so a worker killed
with SIGKILL loses nothing it had already reported, and a reader that catches a half-written
last line simply leaves it for the next read.

    writer = EventWriter(path)
    writer.progress(3, 10, "merging layer 3")
    writer.result(output_path="/merges/x", summary={"tensors": 21})
    events, offset = read_events(path)          # later: read_events(path, offset)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from studio.errors import StudioError
from studio.jobs.faults import disk_full_detail

LOG = logging.getLogger(__name__)


class _EventBase(BaseModel, frozen=True):
    # Wall-clock time the worker wrote the event; the runner derives the ETA from it.
    time: float = Field(default_factory=time.time, description="seconds since the epoch")


class ProgressEvent(_EventBase, frozen=True):
    type: Literal["progress"] = "progress"
    done: int = Field(description="units of work finished")
    total: int = Field(description="units of work in all")
    message: str = Field(default="", description="what the worker is doing now")


class ResultEvent(_EventBase, frozen=True):
    type: Literal["result"] = "result"
    output_path: str | None = Field(default=None, description="the finished output, if any")
    summary: dict[str, Any] = Field(default_factory=dict, description="facts about the result")


class ErrorEvent(_EventBase, frozen=True):
    type: Literal["error"] = "error"
    message: str = Field(description="a sentence for the user saying what went wrong")


class LogEvent(_EventBase, frozen=True):
    type: Literal["log"] = "log"
    message: str


Event = Annotated[ProgressEvent | ResultEvent | ErrorEvent | LogEvent, Field(discriminator="type")]
_EVENT = TypeAdapter(Event)


class EventWriter:
    """Appends events to a JSON-lines file, one flushed line per event."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Line-buffered append: each event reaches the OS as soon as its newline is written.
        self._file: TextIO = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, event: Event) -> None:
        self._file.write(event.model_dump_json() + "\n")
        self._file.flush()

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.write(ProgressEvent(done=done, total=total, message=message))

    def result(self, output_path: str | None = None, summary: dict[str, Any] | None = None) -> None:
        self.write(ResultEvent(output_path=output_path, summary=summary or {}))

    def error(self, message: str) -> None:
        self.write(ErrorEvent(message=message))

    def log(self, message: str) -> None:
        self.write(LogEvent(message=message))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def report_failure(events: EventWriter | None, what: str, error: BaseException) -> int:
    """A worker's last word on a failure: log it, write one error event with a sentence for the
    user (a StudioError's own message; anything else named by its type), return exit status 1."""
    full = disk_full_detail(error)
    if full is not None:  # not a bug and not the user's input: the machine ran out of room
        LOG.error("%s failed: disk full (%s)", what, error)
        message = (
            f"{what} ran out of disk space while writing its output ({full}); its partial output "
            "was removed and earlier outputs are untouched: free some space and start it again"
        )
    elif isinstance(error, StudioError):
        LOG.error("%s failed: %s", what, error)
        message = str(error)
    else:  # a bug, not the user's fault: the traceback goes to the job's log
        LOG.exception("%s failed", what)
        message = f"{what} failed: {type(error).__name__}: {error}"
    if events is not None:
        events.error(message)
    return 1


def read_events(path: str | Path, offset: int = 0) -> tuple[list[Event], int]:
    """Events written after byte `offset`, and the offset to pass next time.

    Only complete lines are consumed: a torn last line (the worker is mid-write, or was killed
    mid-write) stays unread. A complete line that is not a valid event is skipped with a warning,
    so one bad line cannot hide the events after it. A missing file reads as no events.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events = []
    for line in data[: end + 1].splitlines():
        if not line.strip():
            continue
        try:
            events.append(_EVENT.validate_python(json.loads(line)))
        except (ValueError, ValidationError) as error:
            LOG.warning("skipping a malformed event line in %s: %s", path, error)
    return events, offset + end + 1
