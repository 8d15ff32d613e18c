"""Train tab section "Make data from documents": synthetic SFT and closed-book QA data (issue 9).

Thin wiring over studio.synth: documents (a file or folder), an optional held-out file or
folder plus a held-out fraction, a generator from the catalog, the three prompt templates as
editable text (the shipped defaults from pipelines/synth_templates/), Start / Cancel; a timer
polls the job for progress, then shows the per-filter counts and a preview of kept items.
API: /synth_start (form fields -> status), /synth_status (job id), /synth_cancel (job id).
Tests: tests/test_synth_app.py.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from studio.confine import SHIPPED_ROOTS
from studio.forms import form_float, form_int
from studio.settings import StudioSettings
from studio.synth import (
    FILTER_NAMES,
    PREVIEW_HEADERS,
    TASK_NAMES,
    SynthStatus,
    cancel_synth_job,
    default_output_dir,
    default_template,
    parse_synth_config,
    start_synth_job,
    synth_status,
)
from studio.ui.common import (
    bind_settings,
    job_owner,
    model_choices,
    own_job,
    progress_html,
    start_job_on_click,
    user_errors,
)

LOG = logging.getLogger(__name__)

COUNT_HEADERS = ["set", "parsed", "kept", *FILTER_NAMES]
DEMO_DOCUMENTS = SHIPPED_ROOTS[1] / "demo_data" / "domain_train.jsonl"


def status_json(status: SynthStatus) -> dict[str, Any]:
    """SynthStatus as API JSON ("output_dir", not "path": gradio_client would fetch a "path")."""
    return status.model_dump(mode="json")


def synth_values(
    *,
    inputs: str,
    held_out: str,
    generator: str | None,
    held_out_fraction: float,
    max_chunks: float | None,
    max_new_tokens: float | None,
    output_dir: str,
    tasks: list[str],
    templates: tuple[str, str, str],
) -> dict[str, Any]:
    """The form as SynthConfig values (empty numbers mean the config's default; NaN, infinity
    or text in a number box is refused naming the field)."""
    values: dict[str, Any] = {
        "generator": (generator or "").strip(),
        "inputs": [p.strip() for p in (inputs or "").split("\n") if p.strip()],
        "held_out_inputs": [p.strip() for p in (held_out or "").split("\n") if p.strip()],
        "output_dir": (output_dir or "").strip(),
        "tasks": list(tasks or []),
        "templates": dict(zip(TASK_NAMES, templates, strict=True)),
    }
    fraction = form_float(held_out_fraction, field="held-out fraction")
    if fraction is not None:
        values["held_out_fraction"] = fraction
    for key, raw in (("max_chunks", max_chunks), ("max_new_tokens", max_new_tokens)):
        number = form_int(raw, field=key.replace("_", " "))
        if number:
            values[key] = number
    return values


@user_errors
def on_start(
    settings: StudioSettings,
    inputs: str,
    held_out: str,
    generator: str | None,
    held_out_fraction: float,
    max_chunks: float | None,
    max_new_tokens: float | None,
    output_dir: str,
    tasks: list[str],
    qa_template: str,
    instruction_template: str,
    summary_template: str,
    request: gr.Request | None = None,
) -> dict[str, Any]:
    """Start a synthetic-data job (API: /synth_start); its first status."""
    config = parse_synth_config(
        synth_values(
            inputs=inputs,
            held_out=held_out,
            generator=generator,
            held_out_fraction=held_out_fraction,
            max_chunks=max_chunks,
            max_new_tokens=max_new_tokens,
            output_dir=output_dir or str(default_output_dir(settings=settings)),
            tasks=tasks,
            templates=(qa_template, instruction_template, summary_template),
        )
    )
    record = start_synth_job(config, settings=settings, owner=job_owner(request))
    return status_json(synth_status(record.id, settings=settings))


@user_errors
def on_status(
    settings: StudioSettings, job_id: str, request: gr.Request | None = None
) -> dict[str, Any]:
    """Progress, then counts per filter and preview rows (API: /synth_status)."""
    own_job(settings, job_id, request)
    return status_json(synth_status(job_id.strip(), settings=settings))


@user_errors
def on_cancel(
    settings: StudioSettings, job_id: str, request: gr.Request | None = None
) -> dict[str, Any]:
    """Stop the job; nothing it wrote is kept (API: /synth_cancel)."""
    own_job(settings, job_id, request)  # refuses another user's job before touching it
    return status_json(cancel_synth_job(job_id.strip(), settings=settings))


def show_status(
    settings: StudioSettings, job_id: str
) -> tuple[str, list[list[Any]], list[list[Any]], str, gr.Timer, gr.Button]:
    """Timer tick: progress bar, counts table, preview table, log tail; Start is enabled again
    once the job is done."""
    if not job_id:
        return "", [], [], "", gr.Timer(active=False), gr.Button(interactive=True)
    status = synth_status(job_id.strip(), settings=settings)
    label = f"{status.state.value}: {status.progress_done}/{status.progress_total or '?'} requests"
    if status.message:
        label += f" · {status.message}"
    if status.eta_seconds is not None and not status.done:
        label += f" · ETA {status.eta_seconds:.0f} s"
    if status.error:
        label += f" · {status.error}"
    if status.report:
        label += f" · written to {status.output_dir}"
    bar = progress_html(status.progress_done, status.progress_total, label)
    return (
        bar,
        status.counts,
        status.preview,
        status.log_tail,
        gr.Timer(active=not status.done),
        gr.Button(interactive=status.done),
    )


def build_synth_section(settings: StudioSettings) -> None:
    """The accordion; call inside the Train tab."""
    bind = bind_settings
    with gr.Accordion("Make data from documents", open=False, elem_id="synth-section"):
        gr.Markdown(
            "A chat model reads your documents chunk by chunk and writes question-answer pairs, "
            "instructions and abstracts. Training documents become an **SFT set** (chat "
            "messages, for instruction tuning above); held-out documents become a **closed-book "
            "QA set** and a **body -> abstract set** for the Score tab's perplexity tasks. Every "
            "item records its document and chunk; held-out documents never reach the SFT set."
        )
        with gr.Row():
            inputs = gr.Textbox(
                value=str(DEMO_DOCUMENTS),
                label="Documents (files or folders, one per line: txt, JSONL, Parquet)",
                lines=2,
            )
            held_out = gr.Textbox(
                label="Held-out documents (optional, one per line): used only for evaluation",
                lines=2,
            )
        with gr.Row():
            generator = gr.Dropdown(
                model_choices(settings),
                value=None,
                allow_custom_value=True,
                label="Generator (a chat model from the catalog)",
            )
            fraction = gr.Slider(
                0.0, 0.9, value=0.2, step=0.05, label="Also hold out this share of the documents"
            )
            max_chunks = gr.Number(value=None, precision=0, label="Max chunks (empty: all)")
            max_new = gr.Number(value=None, precision=0, label="Longest reply (tokens)")
        with gr.Row():
            tasks = gr.CheckboxGroup(list(TASK_NAMES), value=list(TASK_NAMES), label="Generate")
            output_dir = gr.Textbox(
                value=lambda: str(default_output_dir(settings=settings)), label="Output folder"
            )
        with gr.Row():
            templates = [
                gr.Textbox(
                    value=default_template(task),
                    lines=8,
                    label=f"{label} template ({{passage}} = the chunk, {{count}} = how many)",
                )
                for task, label in zip(
                    TASK_NAMES, ("Question-answer", "Instruction", "Abstract"), strict=True
                )
            ]
        with gr.Row():
            start_btn = gr.Button("Make data", variant="primary")
            cancel_btn = gr.Button("Cancel", variant="stop")
        job_id = gr.Textbox(label="Data job id")
        progress = gr.HTML()
        counts = gr.Dataframe(
            headers=COUNT_HEADERS, label="Items per set and drops per filter", interactive=False
        )
        preview = gr.Dataframe(
            headers=PREVIEW_HEADERS, label="Kept items (first of each set)", interactive=False
        )
        log = gr.Code(label="Log tail", language=None)
        status_box = gr.JSON(visible=False)
        timer = gr.Timer(2.0, active=False)

        def watch(status: dict[str, Any]) -> tuple[str, gr.Timer]:
            return status["job_id"], gr.Timer(active=True)

        start_job_on_click(  # disabled on click; the timer enables it when the job is done
            start_btn,
            bind(on_start, settings),
            [inputs, held_out, generator, fraction, max_chunks, max_new, output_dir, tasks]
            + templates,
            [status_box],
            api_name="synth_start",
            concurrency_limit=1,
        ).success(watch, [status_box], [job_id, timer], api_visibility="private")
        cancel_btn.click(bind(on_cancel, settings), [job_id], [status_box], api_name="synth_cancel")

        def synth_status_api(job_id: str, request: gr.Request) -> dict[str, Any]:
            """A synthetic-data job's status (API: /synth_status)."""
            return on_status(settings, job_id, request)

        gr.api(synth_status_api, api_name="synth_status")
        timer.tick(
            bind(show_status, settings),
            [job_id],
            [progress, counts, preview, log, timer, start_btn],
            api_visibility="private",
            show_progress="hidden",
        )
