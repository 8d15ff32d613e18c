"""A test stand-in for an app that crashes while its jobs run.

    python -m tests.job_workers.app_that_dies OUT_A OUT_B

Starts two sleepy jobs on the studio home of $STUDIO_HOME, prints their records as one JSON
line, and exits at once with os._exit: no watcher finalises anything, as after a crash. The
workers run on, each in its own session.
"""

from __future__ import annotations

import json
import os
import sys

from studio.jobs import JobRunner
from studio.settings import load_settings


def main() -> None:
    runner = JobRunner(load_settings())
    records = []
    for out in sys.argv[1:]:
        record = runner.start(
            kind="test",
            title=f"sleepy to {out}",
            module="tests.job_workers.sleepy",
            args=["--steps", "10", "--delay", "0.3", "--temp", out + ".partial", "--out", out],
            output_path=out,
            temp_path=out + ".partial",
        )
        records.append(record.model_dump(mode="json"))
    print(json.dumps(records), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
