"""Shared fixtures: real tiny models built once per session, an isolated studio home per test."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Nothing in the tests may reach a hub; set before transformers/gradio are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipelines.tiny_models import build_tiny_family  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def data_roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Everything the tests make lives under pytest's base temp folder: make it a data root, so
    the studio's path confinement (studio.confine) accepts test models, data and outputs.
    Confinement tests narrow it again with monkeypatch.setenv("STUDIO_DATA_ROOTS", ...)."""
    base = tmp_path_factory.getbasetemp()
    before = os.environ.get("STUDIO_DATA_ROOTS")
    os.environ["STUDIO_DATA_ROOTS"] = str(base)
    yield base
    if before is None:
        os.environ.pop("STUDIO_DATA_ROOTS", None)
    else:
        os.environ["STUDIO_DATA_ROOTS"] = before


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base, cpt and chat tiny Llamas (one tokenizer; cpt/chat fine-tuned from base)."""
    return build_tiny_family(tmp_path_factory.mktemp("tiny_family"), steps=5)


@pytest.fixture(autouse=True)
def studio_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own STUDIO_HOME so job history and outputs never leak between tests."""
    home = tmp_path / "studio_home"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@contextlib.contextmanager
def launched_tab(build: Callable[[StudioSettings], None], home: Path) -> Iterator[str]:
    """One tab of the studio on `home`, launched in its own gr.Blocks; yields its URL."""
    import gradio as gr

    settings = StudioSettings(home=home)
    settings.ensure_dirs()
    with gr.Blocks() as demo:
        build(settings)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        yield demo.local_url
    finally:
        demo.close()
