"""The scoring worker: runs one score or sweep request in its own process, reports events.

    python -m studio.evaluation.worker --request REQUEST.json --out REPORT.json --events E.jsonl

Started by the job runner (see studio.evaluation.jobs), never by hand in normal use. The request
file holds `{"kind": "score" | "sweep", "request": {...}}`; the report (ScoreReport JSON) is
written to a temporary name and renamed to --out when complete. Progress counts scored items; a
failure becomes an error event with a sentence for the user and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from studio.jobs.events import EventWriter, report_failure

LOG = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio.evaluation.worker", description=__doc__)
    parser.add_argument("--request", required=True, help="request JSON file")
    parser.add_argument("--out", required=True, help="report JSON file to write")
    parser.add_argument("--events", required=True, help="JSON-lines events file to append to")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with EventWriter(args.events) as events:
        try:
            # Imported here so a broken environment still produces an error event.
            from studio.evaluation.jobs import run_request
            from studio.evaluation.results import ResultStore
            from studio.settings import load_settings

            spec = json.loads(Path(args.request).read_text(encoding="utf-8"))
            store = ResultStore(load_settings().db_path)
            report = run_request(spec, store=store, progress=events.progress)
            out = Path(args.out)
            partial = out.with_name(out.name + ".partial")
            partial.write_text(json.dumps(report.to_json()), encoding="utf-8")
            os.replace(partial, out)
        except Exception as error:  # any failure ends as a sentence in the Jobs tab
            return report_failure(events, "scoring", error)
        cached = sum(r.cached for r in report.rows)
        events.result(
            output_path=str(out),
            summary={"rows": len(report.rows), "cached": cached, **report.details},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
