"""The launched app through gradio_client: the public api_names a script or the UI calls."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from pipelines.starter_zoo import ensure_starter_zoo
from studio.settings import StudioSettings
from studio.ui import build_app

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, StudioSettings]]:
    settings = StudioSettings(home=tmp_path_factory.mktemp("app_home"))
    ensure_starter_zoo(settings)
    demo = build_app(settings)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False), settings
    finally:
        demo.close()


def wait_for_job(client: Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.predict(job_id, api_name="/job_status")
        if status["done"]:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


def starter(settings: StudioSettings, role: str) -> str:
    return str(settings.models_dir / f"starter-{role}")


def test_inspect_and_check_the_starter_zoo(app: tuple[Client, StudioSettings]) -> None:
    client, settings = app
    info, markdown = client.predict(starter(settings, "cpt"), api_name="/inspect")
    assert (info["num_layers"], info["hidden_size"], info["architecture"]) == (
        2,
        32,
        "LlamaForCausalLM",
    )
    assert "starter-cpt" in markdown
    report, text = client.predict(
        starter(settings, "cpt"),
        starter(settings, "chat"),
        starter(settings, "base"),
        "ties",
        "",
        api_name="/check",
    )
    assert report["ok"] is True and report["problems"] == []
    assert "Compatible" in text


def test_recipe_reflects_the_sliders(app: tuple[Client, StudioSettings]) -> None:
    client, settings = app
    params = {"models": {"cpt": {"weight": 0.7, "density": 0.4}, "chat": {"weight": 0.3}}}
    text = client.predict(
        starter(settings, "cpt"),
        starter(settings, "chat"),
        starter(settings, "base"),
        "ties",
        json.dumps(params),
        "",
        "",
        "float32",
        api_name="/recipe",
    )
    assert "merge_method: ties" in text
    assert f"base_model: {starter(settings, 'base')}" in text
    assert "density: 0.4" in text and "weight: 0.7" in text and "weight: 0.3" in text


def test_merge_start_then_status_until_done(
    app: tuple[Client, StudioSettings], tmp_path: Path
) -> None:
    client, settings = app
    text = client.predict(
        starter(settings, "cpt"),
        starter(settings, "chat"),
        "",
        "slerp",
        json.dumps({"global": {"t": 0.3}}),
        "",
        "",
        "float32",
        api_name="/recipe",
    )
    out_dir = tmp_path / "slerp-merge"
    started = client.predict(text, str(out_dir), api_name="/merge_start")
    assert started["kind"] == "merge" and started["state"] in {"queued", "running"}
    final = wait_for_job(client, started["id"])
    assert final["state"] == "succeeded", final["log_tail"]
    assert final["progress_done"] == final["progress_total"] > 0
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "README.md").is_file()
    history = client.predict(api_name="/jobs")
    assert started["id"] in [job["id"] for job in history]


def test_cancel_mid_merge_leaves_no_output(
    app: tuple[Client, StudioSettings], tmp_path: Path
) -> None:
    client, settings = app
    text = client.predict(
        starter(settings, "cpt"),
        starter(settings, "chat"),
        "",
        "linear",
        "",
        "",
        "",
        "float32",
        api_name="/recipe",
    )
    out_dir = tmp_path / "cancelled"
    started = client.predict(text, str(out_dir), api_name="/merge_start")
    # The worker needs seconds just to import torch and mergekit: cancelling now is mid-job.
    cancelled = client.predict(started["id"], api_name="/job_cancel")
    assert cancelled["state"] == "cancelled"
    assert not out_dir.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("cancelled")] == []


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("merge_method: frobnicate\nmodels: []\n", "unknown merge method 'frobnicate'"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_bad_recipes_get_a_sentence_and_the_app_keeps_serving(
    app: tuple[Client, StudioSettings], recipe: str, message: str
) -> None:
    client, settings = app
    with pytest.raises(Exception, match=message):
        client.predict(recipe, "", api_name="/merge_start")
    info, _ = client.predict(starter(settings, "base"), api_name="/inspect")
    assert info["name"] == "starter-base"


def test_inspect_a_missing_folder_is_a_sentence(app: tuple[Client, StudioSettings]) -> None:
    client, _ = app
    with pytest.raises(Exception, match="does not exist"):
        client.predict("/no/such/model", api_name="/inspect")
