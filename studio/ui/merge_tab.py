"""Merge tab: parents + method -> sliders generated from mergekit's registry -> YAML -> job.

Sliders are rendered from the chosen method's `ParamSpec`s (`gr.render`), so a method mergekit
adds appears with its parameters and no code here. Slider values live in a per-session
`gr.State` ({"global": {...}, "models": {"cpt": {...}, "chat": {...}}}); the YAML preview and
the Run button both go through `studio.forms.build_recipe`, the same function /recipe exposes.

Run merge is disabled from the click until its job ends (and a second start from the same page
is refused in a sentence), so a double click cannot start two merges. The tab writes the
session's `Selection` (common.py): its parents and current recipe on every change, the output
folder when an export merge succeeds; Chat and Score take them when selected.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from studio import catalog, recipes
from studio.errors import StudioError
from studio.forms import (
    MERGED_ROLES,
    build_recipe,
    choice_from_form,
    default_params,
)
from studio.jobs import get_runner
from studio.merging import start_merge_job
from studio.settings import StudioSettings
from studio.ui.common import (
    Selection,
    bind_settings,
    job_owner,
    parent_dropdowns,
    progress_html,
    refreshed_dropdown,
    refuse_second_start,
    start_job_on_click,
    starter_path,
    user_errors,
)
from studio.ui.jobs_tab import status_dict
from studio.ui.preview_panel import build_preview_panel, is_placeholder

LOG = logging.getLogger(__name__)

ROLE_LABELS = {"cpt": "CPT", "chat": "chat"}
DTYPES = ["float32", "bfloat16", "float16"]


def fresh_params(method: str) -> dict[str, Any]:
    global_params, per_model = default_params(method)
    return {"global": global_params, "models": per_model}


@user_errors
def recipe_api(
    cpt: str,
    chat: str,
    base: str | None,
    method: str,
    params: str,
    tokenizer_source: str | None,
    chat_template: str | None,
    dtype: str | None,
) -> str:
    """The mergekit YAML for a form, validated (API: /recipe).

    params is JSON: {"global": {"t": 0.3}, "models": {"cpt": {"weight": 0.7}, "chat": {...}}};
    anything left out takes the method's default.
    """
    choice = choice_from_form(
        cpt, chat, base, method, params, tokenizer_source, chat_template, dtype
    )
    recipe = build_recipe(choice)
    recipes.validate_recipe(recipe)
    return recipes.recipe_to_yaml(recipe)


@user_errors
def method_defaults_api(method: str) -> dict[str, Any]:
    """A method's parameters at their defaults, in /recipe's params shape (API:
    /method_defaults): {"global": {...}, "models": {"cpt": {...}, "chat": {...}}}."""
    return fresh_params(method)


def default_recipe(settings: StudioSettings) -> str:
    """The YAML the tab opens with: an even linear merge of the starter zoo's parents."""
    cpt, chat, base = (starter_path(settings, role) for role in ("cpt", "chat", "base"))
    return preview_yaml(cpt, chat, base, "linear", fresh_params("linear"), "", "", "float32")


def preview_yaml(*form: Any) -> str:
    """Like /recipe, but a problem becomes a YAML comment so typing never raises toasts."""
    try:
        recipe = build_recipe(choice_from_form(*form))
        recipes.validate_recipe(recipe)
        return recipes.recipe_to_yaml(recipe)
    except StudioError as error:
        return f"# cannot build this recipe yet:\n# {error}"
    except ValueError as error:  # pydantic: a field of the wrong type
        return f"# cannot build this recipe yet:\n# {error}"


@user_errors
def on_merge_start(
    settings: StudioSettings,
    recipe_yaml: str,
    out_dir: str,
    current_job: str | None = None,
    request: gr.Request | None = None,
) -> dict[str, Any]:
    """Start a background merge of a mergekit YAML (API: /merge_start); returns the job status.

    `current_job` is the page's last merge (a gr.State, not an API input): while it runs, a
    second start is refused."""
    refuse_second_start(settings, current_job, "merge")
    recipe = recipes.recipe_from_yaml(recipe_yaml)
    runner = get_runner(settings)
    record = start_merge_job(
        recipe, (out_dir or "").strip() or None, runner=runner, settings=settings,
        owner=job_owner(request),
    )  # fmt: skip
    return status_dict(runner.status(record.id))


def remember_recipe(
    selection: Selection, cpt: str | None, chat: str | None, base: str | None, recipe_yaml: str
) -> Selection:
    """The YAML box changed: a valid recipe (not the '# cannot build' comment) is carried on."""
    if is_placeholder(recipe_yaml):
        return selection
    return dataclasses.replace(selection, cpt=cpt, chat=chat, base=base or None, recipe=recipe_yaml)


def remember_merged(
    settings: StudioSettings, selection: Selection, status: dict[str, Any]
) -> Selection:
    """A merge succeeded: its folder becomes the session's merged model. A folder outside the
    studio's merges folder is registered in the catalog so every model list offers it."""
    folder = status.get("output_path")
    if status.get("state") != "succeeded" or not folder or folder == selection.merged:
        return selection
    if not Path(folder).resolve().is_relative_to(settings.merges_dir.resolve()):
        try:
            catalog.add_local_model(folder, settings=settings)
        except StudioError:  # still chat-able by path; the catalog just will not list it
            LOG.warning("merged folder %s could not be added to the catalog", folder, exc_info=True)
    return dataclasses.replace(selection, merged=folder)


def on_param_release(
    scope: str, role: str | None, name: str, value: Any, params: dict[str, Any]
) -> dict[str, Any]:
    params = {
        "global": dict(params.get("global", {})),
        "models": {k: dict(v) for k, v in params.get("models", {}).items()},
    }
    if scope == "global":
        params["global"][name] = value
    else:
        params["models"].setdefault(role, {})[name] = value
    return params


def _param_component(spec: recipes.ParamSpec, value: Any, label: str) -> gr.Component:
    # interactive=True: a component made inside gr.render is not seen as an event input when
    # gradio decides interactivity, and would be drawn disabled (found by the browser test).
    common = {"label": label, "info": spec.description or None, "interactive": True}
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if spec.kind in ("float", "int") and spec.minimum is not None and spec.maximum is not None:
        step = spec.step or (1 if spec.kind == "int" else 0.01)
        return gr.Slider(spec.minimum, spec.maximum, value=value, step=step, **common)
    if spec.kind in ("float", "int"):
        return gr.Number(value=value, **common)
    return gr.Textbox(value=str(value or ""), **common)


def build_merge_tab(settings: StudioSettings, selection: gr.State | None = None) -> None:
    """The Merge tab; with `selection` (build_app's per-session Selection) it carries on."""
    bind = functools.partial
    methods = recipes.list_methods()
    with gr.Tab("Merge", id="merge", elem_id="merge-tab"):
        with gr.Row():
            cpt, chat, base = parent_dropdowns(settings)
        method = gr.Dropdown(
            [(m.pretty_name, m.name) for m in methods], value="linear", label="Merge method"
        )
        params = gr.State(fresh_params("linear"))

        @gr.render(inputs=[method])  # runs on page load and whenever the method changes
        def render_params(method_name: str) -> None:
            spec = recipes.get_method(method_name)
            start = fresh_params(method_name)
            gr.Markdown(_method_note(spec))
            with gr.Row():
                for p in (p for p in spec.parameters if p.scope == recipes.ParamScope.GLOBAL):
                    comp = _param_component(p, start["global"][p.name], p.name)
                    _wire(comp, bind(on_param_release, "global", None, p.name), params)
            for role in MERGED_ROLES:
                with gr.Row():
                    for p in (
                        p for p in spec.parameters if p.scope == recipes.ParamScope.PER_MODEL
                    ):
                        comp = _param_component(
                            p, start["models"][role][p.name], f"{p.name} ({ROLE_LABELS[role]})"
                        )
                        _wire(comp, bind(on_param_release, "model", role, p.name), params)

        with gr.Row():
            tok = gr.Dropdown(
                ["", "base", "union"], value="", label="Tokenizer source", allow_custom_value=True
            )
            template = gr.Dropdown(
                [""] + recipes.chat_template_names(),
                value="",
                label="Chat template",
                allow_custom_value=True,
            )
            dtype = gr.Dropdown(DTYPES, value="float32", label="dtype")
        first_yaml = preview_yaml(
            cpt.value, chat.value, base.value, "linear", params.value, "", "", "float32"
        )
        yaml_box = gr.Code(first_yaml, language="yaml", label="mergekit YAML (what Run will merge)")
        with gr.Row():
            out_dir = gr.Textbox(label="Output folder (empty: under the studio home)")
            run = gr.Button("Run merge", variant="primary")
            cancel = gr.Button("Cancel", variant="stop")
        progress = gr.HTML()
        build_preview_panel(settings, yaml_box)
        job_id = gr.State("")
        timer = gr.Timer(1.0, active=False)

        form = [cpt, chat, base, method, params, tok, template, dtype]
        gr.api(recipe_api, api_name="recipe")
        method.change(fresh_params, [method], [params], api_visibility="private")
        gr.api(method_defaults_api, api_name="method_defaults")
        for trigger in (
            params.change,
            cpt.change,
            chat.change,
            base.change,
            tok.change,
            template.change,
            dtype.change,
        ):
            trigger(preview_yaml, form, [yaml_box], api_visibility="private", queue=False)

        _wire_run(settings, RunControls(run, cancel, yaml_box, out_dir, progress, job_id, timer))
        if selection is not None:
            yaml_box.change(
                remember_recipe,
                [selection, cpt, chat, base, yaml_box],
                [selection],
                api_visibility="private",
                queue=False,
            )
            # The timer's last tick redraws the bar with the job done: its folder carries on.
            progress.change(
                bind(on_progress_change, settings),
                [selection, job_id],
                [selection],
                api_visibility="private",
                queue=False,
            )
        refresh = refreshed_dropdown(settings)
        for dd in (cpt, chat, base):
            dd.focus(refresh, [dd], [dd], api_visibility="private")


def on_progress_change(settings: StudioSettings, selection: Selection, jid: str) -> Selection:
    if not jid:
        return selection
    return remember_merged(settings, selection, status_dict(get_runner(settings).status(jid)))


@dataclasses.dataclass(frozen=True)
class RunControls:
    """The components of the export row, so the wiring can be written apart from the layout."""

    run: gr.Button
    cancel: gr.Button
    yaml_box: gr.Code
    out_dir: gr.Textbox
    progress: gr.HTML
    job_id: gr.State
    timer: gr.Timer


def on_run_click(
    settings: StudioSettings,
    recipe_yaml: str,
    out_dir: str,
    current_job: str | None,
    request: gr.Request | None = None,
) -> tuple[dict[str, Any], str]:
    """Run merge (API: /merge_start -> the job status): the job id goes straight into the
    page's state (hidden from the API), so a second click queued behind this one sees it."""
    status = on_merge_start(settings, recipe_yaml, out_dir, current_job, request)
    return status, status["id"]


def _wire_run(settings: StudioSettings, c: RunControls) -> None:
    """Run merge is disabled at once on click (queue=False: before the job is even asked for)
    and enabled again when the start fails or the job ends; Cancel stops this page's job."""
    job_json = gr.JSON(visible=False)
    start = start_job_on_click(
        c.run,
        bind_settings(on_run_click, settings),
        [c.yaml_box, c.out_dir, c.job_id],
        [job_json, c.job_id],
        api_name="merge_start",
        concurrency_limit=1,
    )
    start.success(
        lambda status: (_progress(status), gr.Timer(active=True)),
        [job_json],
        [c.progress, c.timer],
        api_visibility="private",
    )

    def tick(jid: str) -> tuple[str, gr.Timer, gr.Button]:
        if not jid:
            return "", gr.Timer(active=False), gr.Button(interactive=True)
        status = status_dict(get_runner(settings).status(jid))
        return (
            _progress(status),
            gr.Timer(active=not status["done"]),
            gr.Button(interactive=status["done"]),
        )

    c.timer.tick(
        tick, [c.job_id], [c.progress, c.timer, c.run], api_visibility="private",
        show_progress="hidden",
    )  # fmt: skip

    def cancel_job(jid: str) -> str:
        if not jid:
            return ""
        return _progress(status_dict(get_runner(settings).cancel(jid)))

    c.cancel.click(cancel_job, [c.job_id], [c.progress], api_visibility="private")


def _wire(comp: gr.Component, handler: Any, params: gr.State) -> None:
    """Sliders update on release (not on every pixel); other inputs on change.

    Through the queue on purpose: gradio 6.31 fires a gr.State's .change (which rewrites the
    YAML) only for queued events; with queue=False the slider moved and the YAML did not."""
    event = comp.release if isinstance(comp, gr.Slider) else comp.change
    event(handler, [comp, params], [params], api_visibility="private")


def _method_note(spec: recipes.MethodSpec) -> str:
    base = {"required": "needs the base model", "optional": "may use the base model"}.get(
        spec.base, "does not use a base model"
    )
    if spec.base_is_first_model:
        base = "interpolates between the two models (the CPT checkpoint is the t=0 end)"
    link = f" · [paper]({spec.reference_url})" if spec.reference_url else ""
    return f"**{spec.pretty_name}** {base}{link}"


def _progress(status: dict[str, Any]) -> str:
    label = f"{status['state']}: {status['message'] or status['title']}"
    if status.get("eta_seconds") is not None and not status["done"]:
        label += f" · ETA {status['eta_seconds']:.0f} s"
    if status.get("error"):
        label += f" · {status['error']}"
    if status.get("output_path") and status["state"] == "succeeded":
        label += f" · saved to {status['output_path']}"
    return progress_html(status["progress_done"], status["progress_total"], label)
