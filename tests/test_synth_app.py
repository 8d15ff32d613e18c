"""The "Make data from documents" section launched in a gr.Blocks and driven through gradio_client.

/synth_start runs the tiny chat model over the demo domain documents to the end through the job
runner; /synth_status then reports per-filter counts and preview rows; a template without
{passage} and an unknown job are sentences, after which the app keeps serving.

    .venv/bin/python -m pytest -q tests/test_synth_app.py
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from studio.synth import FILTER_NAMES, default_template
from studio.ui.synth_section import DEMO_DOCUMENTS, build_synth_section
from tests.conftest import launched_tab

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth_home")


@pytest.fixture(scope="module")
def app(home: Path) -> Iterator[str]:
    with launched_tab(build_synth_section, home) as url:
        yield url


def start_args(generator: Path, output_dir: Path, *, qa_template: str | None = None) -> list[Any]:
    return [
        str(DEMO_DOCUMENTS),  # documents
        "",  # held-out documents
        str(generator),
        0.25,  # held-out fraction
        6,  # max chunks
        16,  # longest reply (the tiny model reads 128 tokens)
        str(output_dir),
        ["qa", "instruction", "summary"],
        qa_template if qa_template is not None else default_template("qa"),
        default_template("instruction"),
        default_template("summary"),
    ]


def test_synth_start_runs_and_status_reports_counts_and_preview(
    app: str, home: Path, tiny_family: dict[str, Path]
) -> None:
    client = Client(app, verbose=False)
    out = home / "synth" / "app-run"
    started = client.predict(*start_args(tiny_family["chat"], out), api_name="/synth_start")
    assert started["state"] in ("queued", "running", "succeeded")
    deadline = time.monotonic() + 240
    status = started
    while not status["done"]:
        assert time.monotonic() < deadline, "the synthetic-data job did not finish"
        time.sleep(0.5)
        status = client.predict(started["job_id"], api_name="/synth_status")
    assert status["state"] == "succeeded", status["log_tail"]
    assert status["output_dir"] == str(out) and (out / "sft.jsonl").is_file()
    assert [row[0] for row in status["counts"]] == ["sft", "qa_eval", "abstract_eval"]
    assert all(len(row) == 3 + len(FILTER_NAMES) for row in status["counts"])
    kept = {row[0]: row[2] for row in status["counts"]}
    assert kept == {name: status["report"]["sets"][name]["kept"] for name in kept}
    assert len(status["preview"]) == min(kept["sft"], 20) + min(kept["abstract_eval"], 20)


def test_bad_template_and_unknown_job_are_sentences(
    app: str, home: Path, tiny_family: dict[str, Path]
) -> None:
    client = Client(app, verbose=False)
    args = start_args(tiny_family["chat"], home / "synth" / "bad", qa_template="no slot here")
    with pytest.raises(AppError, match=r"\{passage\}"):
        client.predict(*args, api_name="/synth_start")
    with pytest.raises(AppError, match="no job with id"):
        client.predict("no-such-job", api_name="/synth_status")
    assert not (home / "synth" / "bad").exists()
