"""Assemble the tabs into one Blocks app; launch settings shared by app.py and the tests.

One `Selection` per browser session (a gr.State, see common.py) carries the Merge tab's choice
to Chat and Score. Login comes from settings: STUDIO_AUTH -> `launch(auth=...)`; on a Space
with STUDIO_OAUTH=1 a "Sign in with Hugging Face" button. Tests: tests/test_app.py,
tests/test_api_names.py, tests/test_access.py, tests/test_browser.py.
"""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from studio import access
from studio.settings import StudioSettings, load_settings
from studio.ui.chat_tab import build_chat_tab
from studio.ui.common import initial_selection
from studio.ui.jobs_tab import build_jobs_tab
from studio.ui.merge_tab import build_merge_tab, default_recipe
from studio.ui.models_tab import build_models_tab
from studio.ui.score_tab import build_score_tab
from studio.ui.train_tab import build_train_tab

TITLE = "Merge Studio"
CSS = ".studio-progress{margin:4px 0}"


def build_app(settings: StudioSettings | None = None) -> gr.Blocks:
    """The whole studio. Per-user state lives in gr.State; the job runner is per studio home."""
    settings = settings or load_settings()
    settings.ensure_dirs()
    access.check_oauth_available(settings)
    with gr.Blocks(title=TITLE) as demo:
        with gr.Row():
            gr.Markdown(
                f"# {TITLE}\nMerge a domain (CPT) checkpoint with a chat model of the same base, "
                "then chat with and score the result."
            )
            if settings.oauth:
                gr.LoginButton(scale=0)
        selection = gr.State(initial_selection(settings, default_recipe(settings)))
        with gr.Tabs():
            build_models_tab(settings)
            build_merge_tab(settings, selection)
            build_chat_tab(settings, selection)
            build_score_tab(settings, selection)
            build_train_tab(settings)
            build_jobs_tab(settings)
    _hide_load_endpoints(demo)
    return demo


def launch_kwargs(settings: StudioSettings | None = None) -> dict[str, Any]:
    """Server settings from the environment (GRADIO_SERVER_NAME/PORT are read by gradio), the
    upload limit (STUDIO_MAX_UPLOAD_MB), and the password login of STUDIO_AUTH when it is set."""
    settings = settings or load_settings()
    kwargs: dict[str, Any] = {
        "theme": gr.themes.Soft(),
        "css": CSS,
        "server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        # gradio refuses a larger upload while it streams in, before it fills the disk;
        # check_upload_size repeats the check for files that reach the core by other ways.
        "max_file_size": settings.max_upload_bytes,
    }
    auth = access.launch_auth(settings)
    if auth:
        kwargs["auth"] = auth
        kwargs["auth_message"] = f"Sign in to {TITLE}: each user sees only their own jobs."
    return kwargs


def _hide_load_endpoints(demo: gr.Blocks) -> None:
    """A component whose value is a function gets a page-load event that gradio names after the
    function (/lambda_1, /partial_7): fill-ins for the page, not API. Keep them off the API."""
    for block in demo.blocks.values():
        event = getattr(block, "load_event", None)
        if event and "id" in event:
            demo.fns[event["id"]].api_visibility = "private"
