"""A test worker: N progress events with sleeps; can fail, spawn a child, write an output.

    python -m tests.job_workers.sleepy --steps 5 --delay 0.1 [--fail-at 3 --message "..."]
        [--child] [--temp TMP --out OUT] --events E.jsonl

With --child it first starts a grandchild process (a sleeping python) and logs its pid as
"child-pid <pid>", so tests can check that cancel kills the whole process group. With --temp and
--out it writes a file into TMP and renames TMP to OUT at the end, like a real export.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from studio.jobs.events import EventWriter


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--fail-at", type=int, default=None)
    parser.add_argument("--message", default="the sleepy worker was told to fail")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--temp", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--events", required=True)
    args = parser.parse_args(argv)

    events = EventWriter(args.events)
    print(f"sleepy worker pid {os.getpid()}", flush=True)
    child = None
    if args.child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        events.log(f"child-pid {child.pid}")
    if args.temp:
        Path(args.temp).mkdir(parents=True)
        (Path(args.temp) / "part.txt").write_text("half done")
    events.progress(0, args.steps, "starting")
    for step in range(1, args.steps + 1):
        time.sleep(args.delay)
        if args.fail_at == step:
            print("about to fail", flush=True)
            events.error(args.message)
            return 1
        events.progress(step, args.steps, f"step {step}")
    if args.temp and args.out:
        os.rename(args.temp, args.out)
    if child is not None:
        child.kill()
        child.wait()
    events.result(output_path=args.out, summary={"steps": args.steps})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
