"""The live preview panel launched in a gr.Blocks and driven through gradio_client.

/preview and /diagnose return the core's numbers; each client is its own session; a bad recipe
is a readable error after which the app keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from pipelines.tiny_models import DOMAIN_TEXT, GENERAL_TEXT
from studio.merging.preview import LivePreview, PreviewRegistry, PreviewResult, ProbeSettings
from studio.recipes import MergeRecipe, RecipeModel, recipe_to_yaml
from studio.settings import StudioSettings
from studio.ui.preview_panel import (
    build_preview_panel,
    is_placeholder,
    on_recipe_change,
    rows_json,
)

pytestmark = pytest.mark.app

PROMPT = "paris is the capital of"
PROBE = ProbeSettings(domain_text=DOMAIN_TEXT[0], general_text=GENERAL_TEXT[0], prompt=PROMPT)


def recipe_yaml(family: dict[str, Path], method: str) -> str:
    sparse = {"density": 0.5} if method == "ties" else {}
    recipe = MergeRecipe(
        method=method,
        base=str(family["base"]) if method == "ties" else None,
        models=(
            RecipeModel(path=str(family["cpt"]), parameters={"weight": 0.7, **sparse}),
            RecipeModel(path=str(family["chat"]), parameters={"weight": 0.3, **sparse}),
        ),
        dtype="float32",
    )
    return recipe_to_yaml(recipe)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Blocks holding a YAML box and the panel, launched; yields its URL."""
    settings = StudioSettings(home=tmp_path_factory.mktemp("preview_home"))
    with gr.Blocks() as demo:
        code = gr.Code(language="yaml", label="mergekit YAML")
        build_preview_panel(settings, code)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        yield demo.local_url
    finally:
        demo.close()


def predict_preview(client: Client, text: str) -> dict:
    return client.predict(text, PROMPT, PROBE.domain_text, PROBE.general_text, api_name="/preview")


def test_preview_returns_the_core_numbers_and_keeps_the_session(
    app: str, tiny_family: dict[str, Path]
) -> None:
    """/preview gives the PreviewResult of LivePreview.update for the same recipe and probe; the
    second call of one client reuses its merger, another client gets its own session."""
    text = recipe_yaml(tiny_family, "ties")
    client = Client(app, verbose=False)
    first = predict_preview(client, text)
    core = LivePreview()
    try:
        expected = core.update(text, PROBE)
    finally:
        core.close()
    got = PreviewResult.model_validate(first)
    assert (got.merged, got.parents) == (expected.merged, expected.parents)
    assert (got.method, got.stats.path, got.merger_reused) == ("ties", "fast", False)
    assert first["stats"]["merge_path"] == "fast"  # not "path": gradio_client would fetch a file
    assert predict_preview(client, text)["merger_reused"] is True
    other = Client(app, verbose=False)
    assert predict_preview(other, text)["merger_reused"] is False


def test_preview_uses_the_default_probe_texts(app: str, tiny_family: dict[str, Path]) -> None:
    """Texts left out take the panel's defaults; the prompt sets the top tokens' context."""
    result = Client(app, verbose=False).predict(
        recipe_yaml(tiny_family, "linear"), PROMPT, api_name="/preview"
    )
    assert result["prompt"] == PROMPT and len(result["merged"]["top_tokens"]) == 5
    assert result["merged"]["domain_tokens"] > 20  # the default clinical paragraph


def test_diagnose_returns_rows_plot_and_summary(app: str, tiny_family: dict[str, Path]) -> None:
    """/diagnose gives the core report's rows (NaN as null), a plotly heatmap holding them, the
    norms chart and a whole-model sentence."""
    text = recipe_yaml(tiny_family, "ties")
    rows, heatmap, norms, summary = Client(app, verbose=False).predict(
        text, 0.3, api_name="/diagnose"
    )
    core = LivePreview()
    try:
        report = core.diagnose(text, density=0.3)
    finally:
        core.close()
    assert rows == rows_json(report)
    assert heatmap["type"] == norms["type"] == "plotly"
    figure = json.loads(heatmap["plot"])
    assert [trace["name"] for trace in figure["data"]] == [
        "task_vector_cosine",
        "sign_conflict_fraction",
    ]
    z = figure["data"][0]["z"]
    y, x = figure["data"][0]["y"], figure["data"][0]["x"]
    for row in report.rows:
        label = "outside" if row.layer is None else str(row.layer)
        assert z[y.index(row.group)][x.index(label)] == row.task_vector_cosine
    norm_bars = json.loads(norms["plot"])["data"][0]["y"]
    assert norm_bars == [r.task_vector_norm_a for r in report.rows]
    assert f"task-vector cosine {report.summary.task_vector_cosine:.3f}" in summary


def test_bad_recipes_are_readable_errors_and_the_app_keeps_serving(
    app: str, tiny_family: dict[str, Path]
) -> None:
    """Broken YAML, a recipe for missing models and diagnostics without a base come back as
    the core's sentences; the next good call succeeds."""
    client = Client(app, verbose=False)
    with pytest.raises(AppError, match="the recipe is not valid YAML at line 1"):
        client.predict("merge_method: [", PROMPT, api_name="/preview")
    missing = recipe_yaml(tiny_family, "linear").replace(str(tiny_family["chat"]), "/nowhere/chat")
    with pytest.raises(AppError, match="/nowhere/chat"):
        client.predict(missing, PROMPT, api_name="/preview")
    with pytest.raises(AppError, match="linear recipe has no base model"):
        client.predict(recipe_yaml(tiny_family, "linear"), 0.5, api_name="/diagnose")
    result = client.predict(recipe_yaml(tiny_family, "linear"), PROMPT, api_name="/preview")
    assert result["method"] == "linear"


def test_live_switch_and_placeholder_skip_the_merge(tiny_family: dict[str, Path]) -> None:
    """The YAML-change handler merges only with the switch on and a real recipe in the box."""
    previews = PreviewRegistry(max_sessions=1)
    text = recipe_yaml(tiny_family, "linear")
    args = (PROMPT, PROBE.domain_text, PROBE.general_text, "s1")
    placeholder = "# cannot build this recipe yet:\n# pick a base model"
    assert is_placeholder(placeholder) and is_placeholder("") and not is_placeholder(text)
    skip = gr.skip()
    assert on_recipe_change(previews, False, text, *args) == (skip, skip)
    assert on_recipe_change(previews, True, placeholder, *args) == (skip, skip)
    assert previews.sessions() == ()
    result, key = on_recipe_change(previews, True, text, *args)
    assert key == "s1" and result["method"] == "linear" and previews.sessions() == ("s1",)
    previews.close_all()
