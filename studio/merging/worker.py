"""The merge worker: runs one merge export in its own process and reports JSON-lines events.

    python -m studio.merging.worker --config C.yml --out OUT --temp TMP --events E.jsonl
        [--random-seed N] [--device cpu]

Started by the job runner (studio.jobs), never by hand in normal use. Progress goes to the
events file; a failure becomes an error event with a sentence for the user and exit code 1;
stdout/stderr (mergekit's logging) go to the job's log file. A full disk ends as a sentence
saying so (studio.jobs.events.report_failure); tests provoke one, and a slow merge to kill
half-way, through the variables of studio.jobs.faults.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from studio.jobs.events import EventWriter, report_failure
from studio.jobs.faults import apply_worker_limits, slowed

LOG = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio.merging.worker", description=__doc__)
    parser.add_argument("--config", required=True, help="mergekit YAML file")
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument("--temp", default=None, help="temporary folder renamed to --out at the end")
    parser.add_argument("--events", required=True, help="JSON-lines events file to append to")
    parser.add_argument("--random-seed", type=int, default=None, help="seed for DARE/DELLA")
    parser.add_argument("--device", default="cpu", help="device for the merge arithmetic")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_worker_limits()  # fault injection for tests; a no-op unless its variables are set
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with EventWriter(args.events) as events:
        started = time.monotonic()
        try:
            # Imported here so a broken environment still produces an error event.
            from studio.merging.export import merge_to_folder

            config_yaml = Path(args.config).read_text(encoding="utf-8")
            out = merge_to_folder(
                config_yaml,
                Path(args.out),
                temp_dir=Path(args.temp) if args.temp else None,
                on_progress=slowed(events.progress),
                random_seed=args.random_seed,
                device=args.device,
            )
        except Exception as error:  # any failure ends as a sentence in the Jobs tab
            return report_failure(events, "the merge", error)
        files = sorted(p.name for p in out.iterdir())
        events.result(
            output_path=str(out),
            summary={"files": files, "seconds": round(time.monotonic() - started, 2)},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
