"""The Train tab launched in a gr.Blocks and driven through gradio_client.

/train_config hands out a shipped config ready to run (absolute data paths, a fresh run folder
under the studio home); /train_preview shows the accelerate command; /train_start runs a tiny
CPT to the end through the job runner and /train_status reports its steps, losses and
checkpoints; bad input is a readable error after which the app keeps serving.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gradio_client import Client
from gradio_client.exceptions import AppError

from studio.ui.train_tab import build_train_tab
from tests.conftest import launched_tab

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train_home")


@pytest.fixture(scope="module")
def app(home: Path) -> Iterator[str]:
    with launched_tab(build_train_tab, home) as url:
        yield url


def wait_done(client: Client, job_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.predict(job_id, api_name="/train_status")
        if status["done"]:
            return status
        time.sleep(0.5)
    raise AssertionError(f"training job {job_id} did not finish in {timeout} s")


def test_shipped_config_preview_and_a_tiny_cpt_run(
    app: str, home: Path, tiny_family: dict[str, Path]
) -> None:
    client = Client(app, verbose=False)
    text = client.predict("tiny_cpt", api_name="/train_config")
    values = yaml.safe_load(text)
    assert values["kind"] == "cpt"
    assert Path(values["output_dir"]).parent == home / "runs"
    assert all(Path(p).is_file() for s in values["data"]["sources"] for p in s["paths"])

    values |= {"model": str(tiny_family["base"]), "max_steps": 4, "save_every": 2, "eval_every": 2}
    values["schedule"]["warmup_steps"] = 1
    config = yaml.safe_dump(values)
    command = client.predict(config, "cpu", api_name="/train_preview")
    assert command.startswith("accelerate launch --config_file ")
    assert "-m pipelines.cpt" in command

    started = client.predict(config, "cpu", api_name="/train_start")
    status = wait_done(client, started["job_id"])
    assert status["state"] == "succeeded", status["log_tail"]
    assert status["step"] == 4 and status["phase"] == "completed"
    assert [c["step"] for c in status["checkpoints"]] == [2, 4]
    assert all((Path(c["folder"]) / "config.json").is_file() for c in status["checkpoints"])
    assert len(status["history"]) == 4 and all(p["loss"] > 0 for p in status["history"])
    assert set(status["eval_losses"]) == {"domain", "general"}

    # the same run folder again: refused in a sentence, nothing started
    with pytest.raises(AppError, match="already holds checkpoints"):
        client.predict(config, "cpu", api_name="/train_start")


def test_bad_config_and_unknown_job_are_sentences(app: str) -> None:
    client = Client(app, verbose=False)
    with pytest.raises(AppError, match="kind must be 'cpt' or 'sft'"):
        client.predict("model: x\n", "cpu", api_name="/train_preview")
    with pytest.raises(AppError):
        client.predict("no-such-job", api_name="/train_status")
    assert client.predict("tiny_sft", api_name="/train_config").startswith("model:")


def test_form_fields_edit_the_config(app: str) -> None:
    client = Client(app, verbose=False)
    text = client.predict("tiny_sft", api_name="/train_config")
    edited = yaml.safe_load(client.predict(text, "", 7, 0.01, "wsd", None, api_name="/train_form"))
    assert (edited["max_steps"], edited["schedule"]["lr"], edited["schedule"]["preset"]) == (
        7,
        0.01,
        "wsd",
    )
    assert edited["data"] == yaml.safe_load(text)["data"]  # untouched fields stay
    with pytest.raises(AppError, match="lr"):
        client.predict(text, "", None, -1.0, "", None, api_name="/train_form")
