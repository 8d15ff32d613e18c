"""Assemble the tabs into one Blocks app; launch settings shared by app.py and the tests."""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from studio.settings import StudioSettings, load_settings
from studio.ui.chat_tab import build_chat_tab
from studio.ui.jobs_tab import build_jobs_tab
from studio.ui.merge_tab import build_merge_tab
from studio.ui.models_tab import build_models_tab
from studio.ui.score_tab import build_score_tab
from studio.ui.train_tab import build_train_tab

TITLE = "Merge Studio"
CSS = ".studio-progress{margin:4px 0}"


def build_app(settings: StudioSettings | None = None) -> gr.Blocks:
    """The whole studio. Per-user state lives in gr.State; the job runner is per studio home."""
    settings = settings or load_settings()
    settings.ensure_dirs()
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\nMerge a domain (CPT) checkpoint with a chat model of the same base, "
            "then chat with and score the result."
        )
        with gr.Tabs():
            build_models_tab(settings)
            build_merge_tab(settings)
            build_chat_tab(settings)
            build_score_tab(settings)
            build_train_tab(settings)
            build_jobs_tab(settings)
    return demo


def launch_kwargs() -> dict[str, Any]:
    """Server settings from the environment (GRADIO_SERVER_NAME/PORT are read by gradio)."""
    return {
        "theme": gr.themes.Soft(),
        "css": CSS,
        "server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
    }
