"""Every public api_name of the whole studio, called through gradio_client with valid input.

The list of endpoints comes from the launched app's own API info, so an endpoint added without
a call here fails `test_every_endpoint_is_called`. Each call asserts on what came back; the
endpoints that start jobs (merge, score, sweeps, training, synthetic data) are followed to a
terminal state on the starter zoo's tiny models. Slow (about two minutes on two busy cores:
seven worker subprocesses each import torch).

.venv/bin/python -m pytest -q tests/test_api_names.py
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from gradio_client import Client

from pipelines.starter_zoo import ensure_starter_zoo
from studio.settings import StudioSettings
from studio.ui import build_app
from tests.test_gguf_import import write_tiny_gguf

pytestmark = [pytest.mark.app, pytest.mark.slow]


@dataclass
class Api:
    """A gradio_client that remembers which api_names it called."""

    client: Client
    settings: StudioSettings
    exposed: set[str]
    called: set[str] = field(default_factory=set)

    def __call__(self, api_name: str, *args: Any) -> Any:
        self.called.add(api_name)
        return self.client.predict(*args, api_name=api_name)

    def fails(self, api_name: str, *args: Any, match: str) -> None:
        self.called.add(api_name)
        with pytest.raises(Exception, match=match):
            self.client.predict(*args, api_name=api_name)

    def starter(self, role: str) -> str:
        return str(self.settings.models_dir / f"starter-{role}")

    def until(
        self, api_name: str, job_id: str, done: Callable[[dict], bool], timeout: float = 300
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self(api_name, job_id)
            if done(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{api_name} {job_id}: not done after {timeout} s: {result}")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    settings = StudioSettings(home=tmp_path_factory.mktemp("api_home"))
    ensure_starter_zoo(settings)
    demo = build_app(settings)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        exposed = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
        yield Api(client, settings, exposed)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def mc_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tasks") / "mini.jsonl"
    rows = [
        {"question": "the capital of france is", "options": ["paris", "a cat"], "answer": 0},
        {"question": "two plus two is", "options": ["four", "green"], "answer": 0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def linear_recipe(api: Api) -> str:
    params = json.dumps({"models": {"cpt": {"weight": 0.5}, "chat": {"weight": 0.5}}})
    args = (api.starter("cpt"), api.starter("chat"), "", "linear", params, "", "", "float32")
    return api("/recipe", *args)


def test_models_endpoints(api: Api, tmp_path: Path) -> None:
    """/inspect, /check, /add_model, /import_gguf; /add_hub_model says offline in a sentence."""
    info, text = api("/inspect", api.starter("cpt"))
    config = json.loads((Path(api.starter("cpt")) / "config.json").read_text())
    assert (info["architecture"], info["num_layers"], info["hidden_size"], info["name"]) == (
        "LlamaForCausalLM",
        config["num_hidden_layers"],
        config["hidden_size"],
        "starter-cpt",
    )
    assert "starter-cpt" in text
    report, text = api(
        "/check", api.starter("cpt"), api.starter("chat"), api.starter("base"), "ties", ""
    )
    assert report["ok"] is True and "Compatible" in text

    extra = shutil.copytree(api.starter("base"), tmp_path / "extra-model")
    entry, table = api("/add_model", str(extra))
    assert (entry["name"], entry["folder"]) == ("extra-model", str(extra))
    assert str(extra) in [row[2] for row in table["data"]]

    gguf = write_tiny_gguf(Path(api.starter("base")), tmp_path / "tiny.gguf")
    entry, table = api("/import_gguf", str(gguf), "tiny-from-gguf")
    assert entry["name"] == "tiny-from-gguf"
    assert (Path(entry["folder"]) / "model.safetensors").is_file()
    assert "tiny-from-gguf" in [row[0] for row in table["data"]]

    api.fails("/add_hub_model", "org/some-model", match="Hub cannot be reached|offline")


def test_merge_endpoints(api: Api) -> None:
    """/method_defaults, /recipe, /preview, /diagnose, /merge_start followed by /job_status."""
    defaults = api("/method_defaults", "ties")
    assert defaults["models"]["cpt"] == {"weight": 0.5, "density": 1.0}
    assert defaults["global"]["normalize"] is True
    recipe = linear_recipe(api)
    assert "merge_method: linear" in recipe and api.starter("cpt") in recipe

    result = api("/preview", recipe, "The patient", "", "")
    assert result["method"] == "linear" and result["prompt"] == "The patient"
    assert result["merged"]["domain_perplexity"] > 1
    assert [p["label"] for p in result["parents"]] == ["starter-cpt", "starter-chat"]
    ties = api(
        "/recipe", api.starter("cpt"), api.starter("chat"), api.starter("base"), "ties",
        json.dumps({"models": {"cpt": {"density": 0.5}}}), "", "", "float32",
    )  # fmt: skip
    rows, heatmap, norms, summary = api("/diagnose", ties, 0.5)
    assert rows and {"layer", "group", "task_vector_cosine"} <= set(rows[0])
    assert heatmap and norms and "task-vector cosine" in summary

    started = api("/merge_start", recipe, "")
    assert started["kind"] == "merge" and not started["done"]
    final = api.until("/job_status", started["id"], lambda s: s["done"])
    assert final["state"] == "succeeded", final["log_tail"]
    assert (Path(final["output_path"]) / "model.safetensors").is_file()
    assert started["id"] in [job["id"] for job in api("/jobs", 50)]


def test_chat_endpoints(api: Api) -> None:
    """/chat streams three replies; regenerate, stop, vote, clear."""
    models = [api.starter(r) for r in ("cpt", "chat", "base")]
    form = (*models, "alpaca", "auto", "chatml", "", 0.0, 1.0, 8, None, False)
    out = api("/chat", "what is the capital of france ?", *form)
    bots, stats, titles = out[:3], out[3:6], out[6:9]
    for bot in bots:
        assert [m["role"] for m in bot] == ["user", "assistant"]
        assert bot[1]["content"]
    assert all("tokens" in s for s in stats), stats
    assert list(titles) == [
        "**A · starter-cpt (alpaca)**",
        "**B · starter-chat**",  # the model's own template: no suffix
        "**C · starter-base (chatml)**",
    ]
    again = api("/chat_regenerate", *form)
    assert [len(b) for b in again[:3]] == [2, 2, 2]
    # temperature 0: the same prompt gives the same replies
    assert [b[1]["content"] for b in again[:3]] == [b[1]["content"] for b in bots]
    assert api("/chat_stop") == "Nothing is streaming."
    vote = api("/chat_vote", "A")
    assert (vote["choice"], vote["winner_model"]) == ("A", models[0])
    cleared = api("/chat_clear")
    assert [list(b or []) for b in cleared[:3]] == [[], [], []]


def test_score_and_train_endpoints(api: Api, mc_task: Path) -> None:
    """/score, /sweep, /checkpoint_sweep, /score_report; /train_* from config to stop/resume."""
    recipe = linear_recipe(api)
    tasks = ([], str(mc_task), True, 2, 0)
    score = api("/score", api.starter("cpt"), api.starter("chat"), recipe, *tasks)
    sweep = api("/sweep", recipe, "weight", 0, 1, 2, *tasks)

    config = yaml.safe_load(api("/train_config", "tiny_cpt"))
    assert config["kind"] == "cpt"
    config |= {"model": api.starter("base"), "max_steps": 400, "save_every": 1}
    edited = api("/train_form", yaml.safe_dump(config), "", 400, 0.002, "", None)
    assert yaml.safe_load(edited)["schedule"]["lr"] == 0.002
    command = api("/train_preview", edited, "cpu")
    assert command.startswith("accelerate launch") and "pipelines.cpt" in command
    train = api("/train_start", edited, "cpu")
    run_dir = yaml.safe_load(edited)["output_dir"]

    for job in (score, sweep):
        result = api.until("/score_report", job["id"], lambda r: r["status"]["done"])
        assert result["status"]["state"] == "succeeded", result["status"]
    report = api("/score_report", score["id"])["report"]
    assert [r["label"] for r in report["rows"]] == [
        "cpt: starter-cpt",
        "chat: starter-chat",
        "merged",
    ]
    assert all(0 <= r["score"] <= 1 for r in report["rows"])
    report = api("/score_report", sweep["id"])["report"]
    assert report["parameter"] == "weight"

    api.until("/train_status", train["job_id"], lambda s: len(s["checkpoints"]) >= 1)
    api("/train_stop", train["job_id"])
    stopped = api.until("/train_status", train["job_id"], lambda s: s["done"])
    assert stopped["phase"] == "stopped" and stopped["checkpoints"], stopped["log_tail"]
    resumed = api("/train_resume", run_dir)
    assert resumed["job_id"] != train["job_id"]
    api.until("/train_status", resumed["job_id"], lambda s: s["step"] > stopped["step"])
    api("/train_stop", resumed["job_id"])
    final = api.until("/train_status", resumed["job_id"], lambda s: s["done"])
    assert final["phase"] == "stopped" and final["step"] > stopped["step"]

    checkpoints = api("/checkpoint_sweep", run_dir, "", *tasks)
    result = api.until("/score_report", checkpoints["id"], lambda r: r["status"]["done"])
    assert result["report"]["parameter"] == "step"
    assert all(r["kind"] == "checkpoint" for r in result["report"]["rows"])


def test_synth_endpoints(api: Api) -> None:
    """/synth_start with the starter chat model as generator, /synth_status, /synth_cancel."""
    from studio.synth import TASK_NAMES, default_template
    from studio.ui.synth_section import DEMO_DOCUMENTS

    templates = [default_template(task) for task in TASK_NAMES]
    started = api(
        "/synth_start",
        str(DEMO_DOCUMENTS), "", api.starter("chat"), 0.0, 1, 8, "", [TASK_NAMES[0]], *templates,
    )  # fmt: skip
    assert started["state"] in {"queued", "running"}
    status = api("/synth_status", started["job_id"])
    assert status["job_id"] == started["job_id"]
    cancelled = api("/synth_cancel", started["job_id"])
    assert cancelled["done"] and cancelled["state"] in {"cancelled", "succeeded"}


def test_jobs_endpoints(api: Api) -> None:
    """/jobs lists newest first; /job_cancel ends a running merge and leaves no output."""
    started = api("/merge_start", linear_recipe(api), "")
    cancelled = api("/job_cancel", started["id"])
    assert cancelled["state"] == "cancelled" and cancelled["done"]
    assert not Path(started["output_path"]).exists()
    assert api("/jobs", 1)[0]["id"] == started["id"]
    assert api("/job_status", started["id"])["state"] == "cancelled"


def test_every_endpoint_is_called(api: Api, request: pytest.FixtureRequest) -> None:
    """Runs last: each api_name the app exposes was called above (a new one needs a call)."""
    here = [item for item in request.session.items if item.module is request.module]
    if len(here) < len([n for n in dir(request.module) if n.startswith("test_")]):
        pytest.skip("only meaningful when the whole file runs")
    assert sorted(api.exposed - api.called) == []
    assert api.called <= api.exposed
