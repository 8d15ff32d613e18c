"""The launched app through gradio_client: the public api_names a script or the UI calls; the
choice carried from Merge to Chat and Score; a second merge start from one page refused.

.venv/bin/python -m pytest -q tests/test_app.py   (every api_name: tests/test_api_names.py)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from gradio_client import Client

from pipelines.starter_zoo import ensure_starter_zoo
from studio import catalog
from studio.settings import StudioSettings
from studio.ui import build_app
from studio.ui.common import carry_to_chat, carry_to_score, initial_selection
from studio.ui.merge_tab import default_recipe, remember_merged, remember_recipe

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
    config = json.loads((Path(starter(settings, "cpt")) / "config.json").read_text())
    assert (info["num_layers"], info["hidden_size"], info["architecture"]) == (
        config["num_hidden_layers"],
        config["hidden_size"],
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


def test_a_second_merge_from_the_same_page_is_refused(
    app: tuple[Client, StudioSettings], tmp_path: Path
) -> None:
    """One client is one page: while its merge runs, another start is a sentence, not a job."""
    client, settings = app
    text = client.predict(
        starter(settings, "cpt"), starter(settings, "chat"), "", "linear", "", "", "", "float32",
        api_name="/recipe",
    )  # fmt: skip
    first = client.predict(text, str(tmp_path / "first"), api_name="/merge_start")
    with pytest.raises(Exception, match=f"this page's merge \\(job {first['id']}\\) is still"):
        client.predict(text, str(tmp_path / "second"), api_name="/merge_start")
    assert [j["id"] for j in client.predict(api_name="/jobs")].count(first["id"]) == 1
    assert not (tmp_path / "second").exists()
    client.predict(first["id"], api_name="/job_cancel")


def test_page_load_fill_ins_are_not_api(app: tuple[Client, StudioSettings]) -> None:
    """Components whose value is a function get load events; none leaks as /lambda_N."""
    client, _ = app
    names = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [n for n in names if n.startswith(("/lambda", "/partial", "/<lambda>"))] == []


def dropdown_values(updates: tuple[object, ...]) -> list[object]:
    return [u.constructor_args.get("value", "kept") for u in updates if isinstance(u, gr.Dropdown)]


def test_the_merge_carries_to_chat_and_score(tmp_path: Path) -> None:
    """Chat and Score take the Merge tab's choice when it changed, and keep a hand-picked one
    otherwise; a merge written outside the studio home joins the catalog."""
    settings = StudioSettings(home=tmp_path / "home")
    ensure_starter_zoo(settings)
    cpt, chat, base = (starter(settings, r) for r in ("cpt", "chat", "base"))
    start = initial_selection(settings, default_recipe(settings))
    assert start.chat_models() == (cpt, chat, base)
    assert "merge_method: linear" in start.recipe

    # 1) first visit to Chat: the starter trio; a second visit with nothing new keeps values
    *boxes, seen = carry_to_chat(settings, start, None)
    assert dropdown_values(tuple(boxes)) == [cpt, chat, base] and seen == (cpt, chat, base)
    *boxes, seen = carry_to_chat(settings, start, seen)
    assert dropdown_values(tuple(boxes)) == ["kept"] * 3

    # 2) a placeholder YAML is not carried; a real one is, with the parents
    assert remember_recipe(start, cpt, chat, base, "# cannot build this recipe yet") is start
    recipe = start.recipe.replace("weight: 0.5", "weight: 0.9", 1)
    picked = remember_recipe(start, cpt, chat, "", recipe)
    assert (picked.recipe, picked.base) == (recipe, None)
    cpt_box, chat_box, recipe_box, seen = carry_to_score(settings, picked, None)
    assert dropdown_values((cpt_box, chat_box)) == [cpt, chat] and recipe_box == recipe
    again = carry_to_score(settings, picked, seen)
    assert isinstance(again[2], type(gr.skip())) and dropdown_values(again[:2]) == ["kept"] * 2

    # 3) a merge that succeeded outside the merges folder: column 1 of Chat, in the catalog
    outside = Path(shutil.copytree(cpt, tmp_path / "elsewhere" / "my-merge"))
    status = {"state": "succeeded", "output_path": str(outside)}
    merged = remember_merged(settings, picked, status)
    assert merged.merged == str(outside)
    assert str(outside) in [e.path for e in catalog.list_models(settings)]
    *boxes, seen = carry_to_chat(settings, merged, (cpt, chat, base))
    assert dropdown_values(tuple(boxes)) == [str(outside), cpt, chat]
    assert ("my-merge (local)", str(outside)) in boxes[0].constructor_args["choices"]
    failed = remember_merged(settings, merged, {"state": "failed", "output_path": "/x"})
    assert failed is merged
    assert dataclasses.replace(merged, merged=None).chat_models() == (cpt, chat, None)
