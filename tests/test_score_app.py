"""The Score tab launched in a gr.Blocks and driven through gradio_client.

/score and /sweep start jobs and /score_report returns the finished report with the same numbers
an in-process run gives; a bad request is a readable error after which the app keeps serving.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from studio.evaluation.scoring import ScoreSettings
from studio.evaluation.sweeps import ScoreRequest, ScoreTarget, run_scores
from studio.recipes import MergeRecipe, RecipeModel, recipe_to_yaml
from studio.ui.score_tab import build_score_tab
from tests.conftest import launched_tab

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("score_home")


@pytest.fixture(scope="module")
def app(home: Path) -> Iterator[str]:
    with launched_tab(build_score_tab, home) as url:
        yield url


@pytest.fixture
def mc_task(tmp_path: Path) -> Path:
    path = tmp_path / "mini.jsonl"
    rows = [
        {"question": "the capital of france is", "options": ["paris", "a cat"], "answer": 0},
        {"question": "two plus two is", "options": ["four", "green"], "answer": 0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def wait_report(client: Client, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = client.predict(job_id, api_name="/score_report")
        if result["status"]["done"]:
            return result
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_score_endpoint_reports_the_in_process_numbers(
    app: str, home: Path, tiny_family: dict[str, Path], mc_task: Path, monkeypatch: Any
) -> None:
    client = Client(app, verbose=False)
    recipe = recipe_to_yaml(
        MergeRecipe(
            method="linear",
            models=(
                RecipeModel(path=str(tiny_family["cpt"]), parameters={"weight": 0.5}),
                RecipeModel(path=str(tiny_family["chat"]), parameters={"weight": 0.5}),
            ),
            dtype="float32",
        )
    )
    job = client.predict(
        str(tiny_family["cpt"]),
        str(tiny_family["chat"]),
        recipe,
        [],
        str(mc_task),
        False,
        20,
        0,
        api_name="/score",
    )
    result = wait_report(client, job["id"])
    assert result["status"]["state"] == "succeeded", result["status"]
    rows = result["report"]["rows"]
    assert [r["label"] for r in rows] == ["cpt: cpt", "chat: chat", "merged"]
    monkeypatch.setenv("STUDIO_HOME", str(home))
    expected = run_scores(
        ScoreRequest(
            targets=(ScoreTarget(label="chat", model=str(tiny_family["chat"])),),
            tasks=(str(mc_task),),
            settings=ScoreSettings(),
        )
    )
    assert rows[1]["score"] == pytest.approx(expected.rows[0].score, abs=1e-6)


def test_sweep_endpoint_and_a_bad_request(
    app: str, tiny_family: dict[str, Path], mc_task: Path
) -> None:
    client = Client(app, verbose=False)
    recipe = recipe_to_yaml(
        MergeRecipe(
            method="slerp",
            models=(
                RecipeModel(path=str(tiny_family["cpt"])),
                RecipeModel(path=str(tiny_family["chat"])),
            ),
            parameters={"t": 0.5},
            dtype="float32",
        )
    )
    with pytest.raises(AppError, match="no parameter 'density'"):
        client.predict(recipe, "density", 0, 1, 3, [], str(mc_task), True, 2, 0, api_name="/sweep")
    job = client.predict(recipe, "t", 0, 1, 3, [], str(mc_task), True, 2, 0, api_name="/sweep")
    result = wait_report(client, job["id"])
    report = result["report"]
    assert report["parameter"] == "t"
    assert [r["value"] for r in report["rows"] if r["kind"] == "merge"] == [0.0, 0.5, 1.0]
    parents = {r["label"]: r["score"] for r in report["rows"] if r["kind"] == "parent"}
    points = {r["value"]: r["score"] for r in report["rows"] if r["kind"] == "merge"}
    # slerp's t=0 end is the first model, t=1 the second
    assert points[0.0] == pytest.approx(parents["cpt"], abs=1e-5)
    assert points[1.0] == pytest.approx(parents["chat"], abs=1e-5)
    # "Only on tensors named: mlp": a weight sweep whose points move the MLP layers only
    linear = recipe_to_yaml(
        MergeRecipe(
            method="linear",
            models=(
                RecipeModel(path=str(tiny_family["chat"]), parameters={"weight": 1.0}),
                RecipeModel(path=str(tiny_family["cpt"]), parameters={"weight": 0.0}),
            ),
            dtype="float32",
        )
    )
    args = (linear, "weight", 0, 1, 2, [], str(mc_task), True, 2, 0, 24, "auto")
    job = client.predict(*args, "mlp", api_name="/sweep")
    rows = wait_report(client, job["id"])["report"]["rows"]
    assert [r["label"] for r in rows if r["kind"] == "merge"] == ["weight[mlp]=0", "weight[mlp]=1"]


def test_checkpoint_sweep_endpoint(
    app: str, tiny_family: dict[str, Path], mc_task: Path, tmp_path: Path
) -> None:
    client = Client(app, verbose=False)
    run = tmp_path / "run"
    with pytest.raises(AppError, match="has no checkpoints yet"):
        client.predict(
            str(tmp_path), "", [], str(mc_task), True, 2, 0, api_name="/checkpoint_sweep"
        )
    for step, source in ((1, "base"), (3, "cpt")):
        shutil.copytree(tiny_family[source], run / f"step-{step:08d}")
    job = client.predict(str(run), "", [], str(mc_task), True, 2, 0, api_name="/checkpoint_sweep")
    report = wait_report(client, job["id"])["report"]
    assert report["parameter"] == "step"
    assert [(r["kind"], r["value"]) for r in report["rows"]] == [
        ("checkpoint", 1.0),
        ("checkpoint", 3.0),
    ]


def test_a_chat_qa_task_through_the_score_tab(
    app: str, home: Path, tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """/score with a chat-QA file in quick mode (first 2 questions), reply length and template
    from the form: one acc row per model and every reply in the report; the finished job's
    tick writes the score CSV and the replies CSV once and stops the timer."""
    from studio.settings import StudioSettings
    from studio.ui.score_tab import show_report

    task = tmp_path / "qa.jsonl"
    rows = [
        {"question": "what is the capital of france ?", "answer": "paris"},
        {"question": "where does the sun rise ?", "answer": "east", "aliases": ["the east"]},
        {"question": "hello", "answer": "hello"},
    ]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    client = Client(app, verbose=False)
    args = (str(tiny_family["cpt"]), str(tiny_family["chat"]), "", [], str(task), True, 2, 0)
    job = client.predict(*args, 6, "chatml", api_name="/score")
    result = wait_report(client, job["id"])
    assert result["status"]["state"] == "succeeded", result["status"]
    report = result["report"]
    assert [(r["label"], r["metric"], r["n"]) for r in report["rows"]] == [
        ("cpt: cpt", "acc", 2),
        ("chat: chat", "acc", 2),
    ]
    answers = report["answers"]
    assert [(a["label"], a["reference"]) for a in answers] == [
        ("cpt: cpt", "paris"),
        ("cpt: cpt", "east | the east"),
        ("chat: chat", "paris"),
        ("chat: chat", "east | the east"),
    ]
    for row in report["rows"]:
        mine = [a["correct"] for a in answers if a["label"] == row["label"]]
        assert row["score"] == pytest.approx(sum(mine) / len(mine))

    out = show_report(StudioSettings(home=home), job["id"])
    scores_csv, replies_csv, timer = out[3], out[5], out[6]
    assert Path(scores_csv).read_text(encoding="utf-8").startswith("label,kind,value,task")
    lines = Path(replies_csv).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + len(answers)
    assert timer.active is False
