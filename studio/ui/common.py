"""Glue every tab shares: StudioError -> gr.Error, catalog choices, who is asking, the
choice carried between tabs, small formatters.

The only place (with the tab modules) where gradio is imported; core functions raise
`StudioError` and this layer turns it into the red toast a user reads.

Carrying a choice between tabs: `build_app` keeps one `Selection` per browser session in a
gr.State. The Merge tab writes it (parents, the current recipe, the last finished merge); the
Chat and Score tabs read it when their tab is selected (`carry_to_chat`, `carry_to_score`),
and only overwrite their own fields when the selection changed since they last took it, so a
model a user picked by hand in Chat stays picked. Tests: tests/test_app.py, tests/test_browser.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
from pydantic import BaseModel

from studio import access, catalog
from studio.errors import JobError, StudioError
from studio.jobs import JobStatus, get_runner
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


def bind_settings(fn: Callable[..., Any], settings: StudioSettings) -> Callable[..., Any]:
    """`fn` with `settings` as its first argument, as a real function: gradio reads the type
    hints of a functools.partial's __call__ (none), so a partial never gets its `gr.Request`
    (nor gr.OAuthProfile, gr.Progress) injected and every job would have no owner."""
    signature = inspect.signature(fn)
    rest = list(signature.parameters.values())[1:]

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def streaming(*args: Any, **kwargs: Any) -> Iterator[Any]:
            yield from fn(settings, *args, **kwargs)

        bound: Callable[..., Any] = streaming
    else:

        @functools.wraps(fn)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return fn(settings, *args, **kwargs)

    bound.__signature__ = signature.replace(parameters=rest)  # type: ignore[attr-defined]
    return bound


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


def model_choices(
    settings: StudioSettings, extra: tuple[str | None, ...] = ()
) -> list[tuple[str, str]]:
    """(label, folder) pairs for every model dropdown: the label says where it came from.
    `extra` folders not in the catalog (a merge written outside the studio home) are added."""
    choices = [(f"{e.name} ({e.source})", e.path) for e in catalog.list_models(settings)]
    known = {path for _, path in choices}
    for path in dict.fromkeys(p for p in extra if p and p not in known):
        choices.append((f"{Path(path).name} (merge)", path))
    return choices


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


# -- who is asking --------------------------------------------------------------------------


def request_user(request: gr.Request | None) -> str | None:
    """The logged-in user of a request: the password login's name, or the Hugging Face
    username of an OAuth session; None when nobody is logged in."""
    if request is None:
        return None
    if request.username:
        return str(request.username)
    try:  # OAuth keeps the profile in the session cookie (only with SessionMiddleware)
        info = request.request.session.get("oauth_info") or {}  # type: ignore[union-attr]
    except (AssertionError, AttributeError):
        return None
    name = (info.get("userinfo") or {}).get("preferred_username")
    return str(name) if name else None


def job_owner(request: gr.Request | None) -> str | None:
    """What a new job's `owner` is: the logged-in user, else the browser session (which the
    Jobs tab ignores without a login)."""
    return request_user(request) or getattr(request, "session_hash", None)


def visible_jobs(
    settings: StudioSettings, request: gr.Request | None, limit: int = 50
) -> list[JobStatus]:
    """Newest first: every job without a login, only the caller's own with one."""
    owner = access.visible_owner(settings, request_user(request))
    return get_runner(settings).list(limit=limit, owner=owner)


def own_job(settings: StudioSettings, job_id: str, request: gr.Request | None) -> JobStatus:
    """A job's status, refused in a sentence when it is another user's (login on)."""
    status = get_runner(settings).status(job_id.strip())
    access.check_job_access(settings, status.record, request_user(request))
    return status


# -- the choice carried between tabs --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Selection:
    """What the Merge tab has chosen, for the tabs after it (one per browser session)."""

    cpt: str | None = None
    chat: str | None = None
    base: str | None = None
    recipe: str = ""  # the Merge tab's current, valid mergekit YAML ("": none yet)
    merged: str | None = None  # folder of the last export merge that succeeded

    def chat_models(self) -> tuple[str | None, str | None, str | None]:
        """Chat's three columns: the merge next to its parents once there is one."""
        if self.merged:
            return (self.merged, self.cpt, self.chat)
        return (self.cpt, self.chat, self.base)

    def score_inputs(self) -> tuple[str | None, str | None, str]:
        """Score's CPT, chat and recipe fields."""
        return (self.cpt, self.chat, self.recipe)


def initial_selection(settings: StudioSettings, recipe: str = "") -> Selection:
    """The starter zoo preselected, so the first page has something to do."""
    return Selection(
        cpt=starter_path(settings, "cpt"),
        chat=starter_path(settings, "chat"),
        base=starter_path(settings, "base"),
        recipe=recipe,
    )


def carry_to_chat(
    settings: StudioSettings, selection: Selection, seen: tuple[Any, ...] | None
) -> tuple[Any, ...]:
    """Chat tab selected: re-read the catalog into the three model dropdowns and, if the
    selection changed since Chat last took it, put the merge and its parents in the columns.
    Returns (dropdown 1, 2, 3, seen)."""
    wanted = selection.chat_models()
    choices = model_choices(settings, extra=wanted)
    if wanted == (tuple(seen) if seen else None):
        return (*(gr.Dropdown(choices=choices) for _ in wanted), seen)
    return (*(gr.Dropdown(choices=choices, value=v) for v in wanted), wanted)


def carry_to_score(
    settings: StudioSettings, selection: Selection, seen: tuple[Any, ...] | None
) -> tuple[Any, ...]:
    """Score tab selected: the same for its CPT and chat dropdowns and its recipe box (the
    Merge tab's current recipe is what "merged" scores). Returns (cpt, chat, recipe, seen)."""
    wanted = selection.score_inputs()
    choices = model_choices(settings, extra=wanted[:2])
    if wanted == (tuple(seen) if seen else None) or not wanted[2]:
        return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices), gr.skip(), seen
    cpt, chat, recipe = wanted
    return (
        gr.Dropdown(choices=choices, value=cpt),
        gr.Dropdown(choices=choices, value=chat),
        recipe,
        wanted,
    )


def start_job_on_click(
    button: gr.Button,
    fn: Callable[..., Any],
    inputs: list[Any],
    outputs: list[Any],
    **listener: Any,
) -> Any:
    """`button.click(fn, inputs, outputs, **listener)` that cannot be double-fired: the button
    is disabled at once (queue=False, before the job is even asked for) and enabled again if
    `fn` fails. Returns fn's dependency (chain `.success(...)`); the caller's job poller enables
    the button when the job ends: return `gr.Button(interactive=done)` from its timer tick."""
    lock = button.click(
        lambda: gr.Button(interactive=False), None, [button], queue=False, api_visibility="private"
    )
    start = lock.then(fn, inputs, outputs, **listener)
    start.failure(lambda: gr.Button(interactive=True), None, [button], api_visibility="private")
    return start


def refuse_second_start(settings: StudioSettings, job_id: str | None, what: str) -> None:
    """Refuse to start another `what` from a page whose last one is still queued or running
    (a double click, or a click while the button is re-enabling)."""
    if not job_id:
        return
    try:
        status = get_runner(settings).status(job_id)
    except StudioError:  # forgotten (another studio home): nothing to protect
        return
    if not status.done:
        raise JobError(
            f"this page's {what} (job {job_id}) is still {status.state.value}; wait for it to "
            "finish or cancel it before starting another"
        )
