"""Fault injection for worker subprocesses, so tests can provoke what production only meets by
bad luck: a disk that fills up mid-write, a worker slow enough to be killed half-way.

Both are read from the environment the job runner passes to its workers; unset (always, in
normal use) they change nothing:

| variable                     | effect in the worker                                          |
|------------------------------|---------------------------------------------------------------|
| STUDIO_WORKER_MAX_FILE_BYTES | RLIMIT_FSIZE: writing a file past this size fails with EFBIG  |
|                              | ("File too large"), as a full disk fails with ENOSPC          |
| STUDIO_WORKER_STEP_DELAY     | seconds slept after every progress event                      |

Python ignores SIGXFSZ at start-up, so a write past the limit raises an error instead of
killing the process, exactly like a full disk. Used by studio.merging.worker; provoked by
tests/test_robustness.py.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import time
from collections.abc import Callable

LOG = logging.getLogger(__name__)

MAX_FILE_BYTES_ENV = "STUDIO_WORKER_MAX_FILE_BYTES"
STEP_DELAY_ENV = "STUDIO_WORKER_STEP_DELAY"
# errno values that mean "the disk (or this process's share of it) is full"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# The same, as Rust (safetensors) and C libraries spell them inside their own exception text.
DISK_FULL_TEXT = (
    "No space left on device",
    "File too large",
    "Disk quota exceeded",
    "StorageFull",
    "FileTooLarge",
)

Progress = Callable[[int, int, str], None]


def apply_worker_limits() -> None:
    """Set RLIMIT_FSIZE from STUDIO_WORKER_MAX_FILE_BYTES, if set (call first in a worker)."""
    text = os.environ.get(MAX_FILE_BYTES_ENV, "").strip()
    if not text:
        return
    limit = int(text)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    LOG.warning("fault injection: files this worker writes are limited to %d bytes", limit)


def slowed(report: Progress) -> Progress:
    """`report`, sleeping STUDIO_WORKER_STEP_DELAY seconds after each call when set."""
    delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
    if delay <= 0:
        return report

    def slow_report(done: int, total: int, message: str) -> None:
        report(done, total, message)
        time.sleep(delay)

    return slow_report


def disk_full_detail(error: BaseException) -> str | None:
    """The OS's words if `error` (or what caused it) is a full disk or file-size limit."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return os.strerror(current.errno)
        text = str(current)
        for words in DISK_FULL_TEXT:
            if words in text:
                return words
        current = current.__cause__ or current.__context__
    return None
