"""Glue every tab shares: StudioError -> gr.Error, catalog choices, small formatters.

The only place (with the tab modules) where gradio is imported; core functions raise
`StudioError` and this layer turns it into the red toast a user reads.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import gradio as gr
from pydantic import BaseModel

from studio import catalog
from studio.errors import StudioError
from studio.settings import StudioSettings

LOG = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Show a StudioError as a readable gr.Error; anything else is logged and said plainly.

    Works for generator handlers too (streaming chat): there the error is raised mid-stream,
    after the call that created the generator has returned."""

    @contextlib.contextmanager
    def translated() -> Iterator[None]:
        try:
            yield
        except StudioError as error:
            raise gr.Error(str(error), print_exception=False) from error
        except gr.Error:
            raise
        except Exception as error:  # a bug, not the user's fault: keep the app serving
            LOG.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Unexpected error ({type(error).__name__}): {error}") from error

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def streaming(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with translated():
                yield from fn(*args, **kwargs)

        return streaming  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with translated():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def parent_dropdowns(settings: StudioSettings) -> tuple[gr.Dropdown, gr.Dropdown, gr.Dropdown]:
    """CPT, chat and base pickers, preselected on the starter zoo (call inside a gr.Row)."""
    choices = model_choices(settings)
    return tuple(  # type: ignore[return-value]
        gr.Dropdown(
            choices, value=starter_path(settings, role), label=label, allow_custom_value=True
        )
        for role, label in (
            ("cpt", "CPT checkpoint"),
            ("chat", "Chat model"),
            ("base", "Base model"),
        )
    )


def api_dict(model: BaseModel, **dump_options: Any) -> dict[str, Any]:
    """A model as API JSON. A top-level "path" key is renamed "folder": gradio_client takes any
    dict with a "path" string for a file to download and fails on a model folder."""
    data = model.model_dump(mode="json", **dump_options)
    if "path" in data:
        data["folder"] = data.pop("path")
    return data


def model_choices(settings: StudioSettings) -> list[tuple[str, str]]:
    """(label, folder) pairs for every model dropdown: the label says where it came from."""
    return [(f"{e.name} ({e.source})", e.path) for e in catalog.list_models(settings)]


def starter_path(settings: StudioSettings, role: str) -> str | None:
    """The starter zoo's model for a role, preselected so the first page has something to do."""
    folder = settings.models_dir / f"starter-{role}"
    return str(folder) if (folder / "config.json").is_file() else None


def refreshed_dropdown(settings: StudioSettings) -> Callable[[str | None], gr.Dropdown]:
    """Event handler factory: re-read the catalog when a dropdown is opened, keep its value."""

    def refresh(value: str | None) -> gr.Dropdown:
        return gr.Dropdown(choices=model_choices(settings), value=value)

    return refresh


def progress_html(done: int, total: int | None, label: str) -> str:
    """A plain HTML progress bar (no JS), readable in screenshots and by screen readers."""
    pct = 0 if not total else round(100 * done / total)
    return (
        f'<div class="studio-progress" role="progressbar" aria-valuenow="{pct}" '
        f'aria-valuemin="0" aria-valuemax="100" aria-label="{label}">'
        f'<div style="background:#e5e7eb;border-radius:6px;height:14px;width:100%">'
        f'<div style="background:#6366f1;height:14px;border-radius:6px;width:{pct}%"></div>'
        f"</div><div>{label}</div></div>"
    )
