"""The studio as a person uses it, in headless Chromium: pick models, run a merge, see it done.

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


def test_merge_tab_runs_a_merge_to_done(page: object, app_url: tuple[str, StudioSettings]) -> None:
    """Switching to TIES shows its sliders; Run merge ends in 'succeeded' with the folder."""
    page.get_by_role("tab", name="Merge").click()
    code = page.locator(".cm-content").first
    code.wait_for()
    assert "merge_method: linear" in code.inner_text()
    page.get_by_label("Merge method").click()
    page.get_by_role("option", name="TIES", exact=True).click()
    page.get_by_text("density (CPT)").wait_for(timeout=20_000)
    page.wait_for_function(
        "() => document.querySelector('.cm-content').innerText.includes('merge_method: ties')",
        timeout=20_000,
    )
    out_dir = app_url[1].merges_dir / "browser-ties"
    page.get_by_label("Output folder (empty: under the studio home)").fill(str(out_dir))
    page.get_by_role("button", name="Run merge").click()
    page.locator("#merge-tab").get_by_text(re.compile("succeeded")).first.wait_for(timeout=120_000)
    assert (out_dir / "model.safetensors").is_file()
    page.screenshot(path=str(SCREENSHOTS / "merge.png"), full_page=True)


def test_jobs_tab_shows_the_merge_after_a_reload(page: object) -> None:
    """History lives in SQLite: a page reload still lists the finished job."""
    page.reload(wait_until="load")
    page.get_by_role("tab", name="Jobs").click()
    page.wait_for_function(
        "() => document.querySelector('#jobs-tab')?.innerText.includes('succeeded')",
        timeout=20_000,
    )
    page.screenshot(path=str(SCREENSHOTS / "jobs.png"), full_page=True)


def test_score_tab_quick_score_draws_the_chart(page: object) -> None:
    """Demo tasks are preselected; a quick score of parents + merge ends in a table and chart."""
    page.get_by_role("tab", name="Score").click()
    page.get_by_label("N", exact=True).fill("4")
    page.get_by_role("button", name="Score parents and merge").click()
    page.wait_for_function(
        "() => document.querySelector('#score-tab')?.innerText.includes('succeeded')",
        timeout=180_000,
    )
    page.locator("#score-tab .js-plotly-plot").first.wait_for(timeout=30_000)
    assert page.locator("#score-tab").get_by_text("merged").count() >= 1
    page.screenshot(path=str(SCREENSHOTS / "score.png"), full_page=True)


def test_train_tab_starts_and_stops_a_run_and_reattaches(page: object) -> None:
    """A tiny CPT starts from the shipped config; Stop saves a checkpoint; a reload shows it."""
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Max steps").fill("5000")
    page.get_by_role("button", name="Apply to config").click()
    page.wait_for_function(
        "() => document.querySelector('#train-tab .cm-content')?.innerText"
        ".includes('max_steps: 5000')",
        timeout=20_000,
    )
    page.get_by_role("button", name="Start", exact=True).click()
    page.wait_for_function(
        "() => /running: step [1-9]/.test(document.querySelector('#train-tab')?.innerText)",
        timeout=120_000,
    )
    page.get_by_role("button", name="Stop (save a checkpoint)").click()
    page.wait_for_function(
        "() => document.querySelector('#train-tab')?.innerText.includes('stopped: step')",
        timeout=120_000,
    )
    page.locator("#train-tab .js-plotly-plot").first.wait_for(timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "train.png"), full_page=True)
    page.reload(wait_until="load")
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function(
        "() => document.querySelector('#train-tab')?.innerText.includes('stopped: step')",
        timeout=30_000,
    )
