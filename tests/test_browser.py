"""The studio as a person uses it, in headless Chromium, one page through every tab: the
starter models preselected, a dragged slider changing the live probe, an export merge (one job
for a double click) reaching done, the merge carried into Chat (three streamed replies) and
Score (a chart), training started, re-attached after a reload, and stopped.

Needs Debian's `chromium` and the `playwright` Python package (scripts/test.sh installs both;
Playwright's own browser download is never used). Saves the README's screenshots to
docs/screenshots/ as it goes.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.starter_zoo import ensure_starter_zoo
from studio.jobs import JobStore
from studio.settings import StudioSettings
from studio.ui import build_app, launch_kwargs

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, StudioSettings]]:
    settings = StudioSettings(home=tmp_path_factory.mktemp("browser_home"))
    ensure_starter_zoo(settings)
    demo = build_app(settings)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs())  # the real theme
    try:
        yield demo.local_url, settings
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(app_url: tuple[str, StudioSettings]) -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run scripts/test.sh (it installs it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_url[0], wait_until="load")
        page.get_by_role("tab", name="Models").wait_for()
        yield page
        browser.close()


def test_models_tab_lists_the_starter_zoo(page: object) -> None:
    """The first page already has models to work with: the starter zoo is in the catalog."""
    page.get_by_text("starter-cpt", exact=False).first.wait_for()
    for name in ("starter-base", "starter-cpt", "starter-chat"):
        assert page.get_by_text(name, exact=False).count() >= 1
    page.get_by_role("button", name="Inspect").click()
    page.get_by_text("LlamaForCausalLM").first.wait_for(timeout=20_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "models.png"), full_page=True)


def merge_yaml(page: object) -> str:
    return page.locator("#merge-tab .cm-content").first.inner_text()


def probe_table(page: object) -> str:
    """The live preview's summary (timings line + perplexity table) as the page shows it."""
    return (
        page.locator("#merge-tab")
        .get_by_text("domain perplexity")
        .first.evaluate("el => el.closest('.prose, table')?.innerText ?? el.innerText")
    )


def test_merge_tab_live_preview_follows_a_dragged_slider(page: object) -> None:
    """The parents are preselected; with Live preview on, dragging the CPT weight slider
    re-merges in memory and the probe's numbers change."""
    page.get_by_role("tab", name="Merge").click()
    merge = page.locator("#merge-tab")
    assert "starter-cpt" in merge.get_by_label("CPT checkpoint").input_value()
    assert "starter-chat" in merge.get_by_label("Chat model").input_value()
    assert "merge_method: linear" in merge_yaml(page)
    page.get_by_label("Live preview").check()
    merge.get_by_text("domain perplexity").first.wait_for(timeout=60_000)
    before, yaml_before = probe_table(page), merge_yaml(page)

    slider = merge.get_by_role("slider", name="weight (CPT)")
    slider.scroll_into_view_if_needed()  # mouse coordinates are the viewport's
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=5)
    page.mouse.move(box["x"] + box["width"] * 0.95, y, steps=5)
    page.mouse.up()
    page.wait_for_function(
        "before => document.querySelector('#merge-tab .cm-content').innerText !== before",
        arg=yaml_before,
        timeout=20_000,
    )
    page.wait_for_function(
        """before => [...document.querySelectorAll('#merge-tab table')]
            .some(t => t.innerText.includes('domain perplexity') && t.innerText !== before)""",
        arg=before,
        timeout=60_000,
    )
    assert probe_table(page) != before


def test_merge_tab_export_runs_once_to_done(
    page: object, app_url: tuple[str, StudioSettings]
) -> None:
    """Run merge is disabled while its job runs: a double click starts one job, not two."""
    settings = app_url[1]
    out_dir = settings.merges_dir / "browser-linear"
    page.get_by_label("Output folder (empty: under the studio home)").fill(str(out_dir))
    run = page.get_by_role("button", name="Run merge")
    run.dblclick()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#merge-tab button')]"
        ".some(b => b.innerText.trim() === 'Run merge' && b.disabled)",
        timeout=10_000,
    )
    page.locator("#merge-tab").get_by_text(re.compile("succeeded")).first.wait_for(timeout=120_000)
    assert (out_dir / "model.safetensors").is_file()
    merges = [r for r in JobStore(settings.db_path).list() if r.kind == "merge"]
    assert [r.output_path for r in merges] == [str(out_dir)]
    page.wait_for_function(
        "() => [...document.querySelectorAll('#merge-tab button')]"
        ".some(b => b.innerText.trim() === 'Run merge' && !b.disabled)",
        timeout=10_000,
    )
    page.screenshot(path=str(SCREENSHOTS / "merge.png"), full_page=True)


def test_chat_tab_takes_the_merge_and_streams_three_replies(page: object) -> None:
    """The merge just exported is column 1 (next to its parents) without a restart; one
    message gets three replies."""
    page.get_by_role("tab", name="Chat").click()
    chat = page.locator("#chat-tab")
    page.wait_for_function(
        "() => document.querySelector('#chat-tab input[aria-label=\"Model 1\"]')"
        "?.value.includes('browser-linear')",
        timeout=20_000,
    )
    assert "starter-cpt" in chat.get_by_label("Model 2").input_value()
    assert "starter-chat" in chat.get_by_label("Model 3").input_value()
    chat.get_by_placeholder("Ask every model at once…").fill("what is the capital of france ?")
    chat.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#chat-tab [data-testid=\"bot\"]').length >= 3",
        timeout=120_000,
    )
    # Each column's reply ends with its stats line once streaming is over.
    page.wait_for_function(
        "() => (document.querySelector('#chat-tab').innerText.match(/tokens/g) || []).length >= 3",
        timeout=120_000,
    )
    replies = chat.locator('[data-testid="bot"]')
    assert all(replies.nth(i).inner_text().strip() for i in range(3))
    page.screenshot(path=str(SCREENSHOTS / "chat.png"), full_page=True)


def test_score_tab_offers_the_merge_and_draws_the_chart(page: object) -> None:
    """The Merge tab's current recipe is the "merged" row; a quick score ends in a chart."""
    page.get_by_role("tab", name="Merge").click()
    recipe = merge_yaml(page)
    page.get_by_role("tab", name="Score").click()
    page.wait_for_function(
        "want => document.querySelector('#score-tab .cm-content')?.innerText === want",
        arg=recipe,
        timeout=20_000,
    )
    page.get_by_label("N", exact=True).fill("4")
    page.get_by_role("button", name="Score parents and merge").click()
    page.wait_for_function(
        "() => document.querySelector('#score-tab')?.innerText.includes('succeeded')",
        timeout=180_000,
    )
    page.locator("#score-tab .js-plotly-plot").first.wait_for(timeout=30_000)
    assert page.locator("#score-tab").get_by_text("merged").count() >= 1
    page.screenshot(path=str(SCREENSHOTS / "score.png"), full_page=True)


def test_jobs_tab_shows_the_merge_after_a_reload(page: object) -> None:
    """History lives in SQLite: a page reload still lists the finished jobs."""
    page.reload(wait_until="load")
    page.get_by_role("tab", name="Jobs").click()
    page.wait_for_function(
        "() => document.querySelector('#jobs-tab')?.innerText.includes('succeeded')",
        timeout=20_000,
    )
    page.screenshot(path=str(SCREENSHOTS / "jobs.png"), full_page=True)


def test_train_tab_reattaches_to_a_running_job_after_a_reload(page: object) -> None:
    """A tiny CPT starts from the shipped config; a reload while it runs shows it again (Train
    and Jobs tabs); Stop saves a checkpoint and the loss chart stays."""
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Max steps").fill("5000")
    page.get_by_role("button", name="Apply to config").click()
    page.wait_for_function(
        "() => document.querySelector('#train-tab .cm-content')?.innerText"
        ".includes('max_steps: 5000')",
        timeout=20_000,
    )
    page.get_by_role("button", name="Start", exact=True).click()
    running = "() => /running: step [1-9]/.test(document.querySelector('#train-tab')?.innerText)"
    page.wait_for_function(running, timeout=120_000)
    page.reload(wait_until="load")
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function(running, timeout=30_000)
    page.get_by_role("tab", name="Jobs").click()
    page.wait_for_function(
        "() => /train\\s+running/.test(document.querySelector('#jobs-tab')?.innerText)",
        timeout=20_000,
    )
    page.get_by_role("tab", name="Train").click()
    page.get_by_role("button", name="Stop (save a checkpoint)").click()
    page.wait_for_function(
        "() => document.querySelector('#train-tab')?.innerText.includes('stopped: step')",
        timeout=120_000,
    )
    page.locator("#train-tab .js-plotly-plot").first.wait_for(timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "train.png"), full_page=True)
