"""Score tab: parents and merge side by side on benchmark tasks, domain perplexity and chat QA,
and curves of score against one merge parameter.

Thin wiring: the form becomes a `ScoreRequest` / `SweepRequest` (studio.evaluation.sweeps),
started as a background job (studio.evaluation.jobs); a timer polls the job and, once it has
finished, shows its report as a table, a plotly chart and a CSV file, and a chat-QA task's
replies (question, reference, reply, correct) as a second table and CSV. /score, /sweep and
/score_report are the same calls for gradio_client.

Tests: `.venv/bin/python -m pytest -q tests/test_score_app.py`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from studio.confine import check_path_text
from studio.errors import validated
from studio.evaluation import jobs as scoring_jobs
from studio.evaluation.checkpoint_sweep import CheckpointSweepRequest
from studio.evaluation.scoring import ScoreSettings
from studio.evaluation.sweeps import (
    MAX_SWEEP_POINTS,
    ScoreOptions,
    ScoreReport,
    ScoreRequest,
    ScoreTarget,
    SweepError,
    SweepRequest,
)
from studio.evaluation.tasks import demo_task_paths, preselected_demo_tasks
from studio.forms import MergeChoice, build_recipe, form_float, form_int
from studio.inference import template_choices
from studio.jobs import get_runner
from studio.jobs.store import JobRecord
from studio.plots import scores_chart, sweep_chart
from studio.recipes.yaml_io import recipe_to_yaml
from studio.settings import StudioSettings
from studio.ui.common import (
    bind_settings,
    carry_to_score,
    job_owner,
    own_job,
    parent_dropdowns,
    progress_html,
    start_job_on_click,
    starter_path,
    user_errors,
)
from studio.ui.jobs_tab import status_dict

LOG = logging.getLogger(__name__)

SWEEP_PARAMETERS = ["weight", "t", "density", "lambda", "epsilon"]
ALL_TENSORS = "all"  # the sweep form's "only on tensors named" choice for no filter


def default_recipe_yaml(settings: StudioSettings) -> str:
    """An even linear merge of the starter CPT and chat models ('' without a starter zoo)."""
    cpt, chat = starter_path(settings, "cpt"), starter_path(settings, "chat")
    if not (cpt and chat):
        return ""
    recipe = build_recipe(
        MergeChoice(method="linear", cpt=cpt, chat=chat, model_params={}, dtype="float32")
    )
    return recipe_to_yaml(recipe)


def _tasks(chosen: list[str] | None, extra: str | None) -> tuple[str, ...]:
    files = [str(f) for f in chosen or [] if str(f).strip()]
    files += [line.strip() for line in (extra or "").splitlines() if line.strip()]
    # check_path_text first: a NUL, a lone surrogate or an over-long name would otherwise raise
    # a bare ValueError/UnicodeEncodeError/OSError from resolve(); confinement is load_task's.
    checked = (check_path_text(f, what="task file") for f in dict.fromkeys(files))
    return tuple(str(Path(f).expanduser().resolve()) for f in checked)


def _settings(
    quick: bool,
    limit: float | None,
    fewshot: float | None,
    max_new_tokens: float | None,
    chat_template: str | None,
) -> ScoreSettings:
    defaults = ScoreSettings()
    return validated(
        ScoreSettings,
        SweepError,
        limit=(form_int(limit, field="N (quick mode)") or None) if quick else None,
        num_fewshot=form_int(fewshot, field="few-shot examples") or 0,
        max_new_tokens=(
            form_int(max_new_tokens, field="chat QA reply tokens") or defaults.max_new_tokens
        ),
        chat_template=chat_template or None,
    )


def _options(
    tasks: list[str] | None,
    extra_tasks: str | None,
    quick: bool,
    limit: float | None,
    fewshot: float | None,
    max_new_tokens: float | None,
    chat_template: str | None,
) -> dict[str, Any]:
    """The task and scoring fields every score / sweep request shares."""
    settings = _settings(quick, limit, fewshot, max_new_tokens, chat_template)
    return {"tasks": _tasks(tasks, extra_tasks), "settings": settings}


def _start_job(
    studio: StudioSettings,
    start: Callable[..., JobRecord],
    model: type[ScoreOptions],
    request: gr.Request | None,
    /,
    **fields: Any,
) -> dict[str, Any]:
    """Validate the request (one sentence if bad), start its job, return the job's status.
    Positional-only: `fields` carries the request's own `settings` (the scoring settings)."""
    record = start(
        validated(model, SweepError, **fields), settings=studio, owner=job_owner(request)
    )
    return status_dict(get_runner(studio).status(record.id))


@user_errors
def on_score_start(
    settings: StudioSettings,
    cpt: str | None,
    chat: str | None,
    recipe_yaml: str | None,
    tasks: list[str] | None,
    extra_tasks: str | None,
    quick: bool,
    limit: float | None,
    fewshot: float | None,
    max_new_tokens: float | None = None,
    chat_template: str | None = None,
    request: gr.Request | None = None,
) -> dict[str, Any]:
    """Score the CPT model, the chat model and the merge on the tasks (a job; API: /score)."""
    targets = [
        ScoreTarget(label=f"{role}: {Path(path).name}", model=path)
        for role, path in (("cpt", cpt), ("chat", chat))
        if path
    ]
    if recipe_yaml and recipe_yaml.strip():
        targets.append(ScoreTarget(label="merged", recipe=recipe_yaml))
    return _start_job(
        settings,
        scoring_jobs.start_score_job,
        ScoreRequest,
        request,
        targets=tuple(targets),
        **_options(tasks, extra_tasks, quick, limit, fewshot, max_new_tokens, chat_template),
    )


@user_errors
def on_sweep_start(
    settings: StudioSettings,
    recipe_yaml: str | None,
    parameter: str,
    start: float,
    stop: float,
    points: float,
    tasks: list[str] | None,
    extra_tasks: str | None,
    quick: bool,
    limit: float | None,
    fewshot: float | None,
    max_new_tokens: float | None = None,
    chat_template: str | None = None,
    only_on: str | None = None,
    request: gr.Request | None = None,
) -> dict[str, Any]:
    """Score the merge at `points` values of `parameter` from start to stop (API: /sweep);
    `only_on` (mlp, self_attn, ...; empty or "all": every tensor) limits the change to the
    tensors whose names contain it."""
    count, first, last = _sweep_span(start, stop, points)
    step = (last - first) / (count - 1)
    values = tuple(round(first + i * step, 6) for i in range(count))
    return _start_job(
        settings,
        scoring_jobs.start_sweep_job,
        SweepRequest,
        request,
        recipe=recipe_yaml or "",
        parameter=parameter,
        values=values,
        only_filter=None if (only_on or "").strip() in ("", ALL_TENSORS) else only_on,
        **_options(tasks, extra_tasks, quick, limit, fewshot, max_new_tokens, chat_template),
    )


def _sweep_span(start: Any, stop: Any, points: Any) -> tuple[int, float, float]:
    """(points, from, to) of a sweep form; SweepError naming the empty or non-finite field."""
    count = form_int(points, field="points")
    if count is None or not 2 <= count <= MAX_SWEEP_POINTS:
        raise SweepError(f"points must be between 2 and {MAX_SWEEP_POINTS}; got {count}")
    first, last = form_float(start, field="From"), form_float(stop, field="To")
    if first is None or last is None:
        empty = "From" if first is None else "To"
        raise SweepError(f"the sweep's {empty} value is empty; give the {empty} number")
    if not math.isfinite(last - first):  # e.g. -1e308 to 1e308: the points would be inf/NaN
        raise SweepError(f"the sweep from {first:g} to {last:g} is too wide; choose closer ends")
    return count, first, last


@user_errors
def on_checkpoint_sweep_start(
    settings: StudioSettings,
    run_dir: str,
    recipe_yaml: str | None,
    tasks: list[str] | None,
    extra_tasks: str | None,
    quick: bool,
    limit: float | None,
    fewshot: float | None,
    max_new_tokens: float | None = None,
    chat_template: str | None = None,
    request: gr.Request | None = None,
) -> dict[str, Any]:
    """Score a CPT run's checkpoints by step, alone and merged by the recipe with its first
    model replaced by each checkpoint (API: /checkpoint_sweep)."""
    return _start_job(
        settings,
        scoring_jobs.start_checkpoint_sweep_job,
        CheckpointSweepRequest,
        request,
        run_dir=run_dir.strip() if run_dir and run_dir.strip() else None,
        recipe=recipe_yaml if recipe_yaml and recipe_yaml.strip() else None,
        **_options(tasks, extra_tasks, quick, limit, fewshot, max_new_tokens, chat_template),
    )


@user_errors
def on_score_report(
    settings: StudioSettings, job_id: str, request: gr.Request | None = None
) -> dict[str, Any]:
    """A score/sweep job's status and, once it has finished, its report (API: /score_report);
    another user's job is refused when login is on."""
    status = status_dict(own_job(settings, job_id, request))
    report = scoring_jobs.read_report(job_id.strip(), settings=settings)
    return {"status": status, "report": report.to_json() if report else None}


def show_report(
    settings: StudioSettings, job_id: str, request: gr.Request | None = None
) -> tuple[Any, ...]:
    """Timer tick: progress while the job runs; once it is done, the score table, chart and CSV
    and the chat-QA replies' table and CSV (written once, on the tick that stops the timer).

    Returns (progress, table, chart, CSV, replies table, replies CSV, timer, and the three start
    buttons: enabled again once the job is done)."""
    skip = (gr.skip(),) * 5
    if not job_id:
        return ("", *skip, gr.Timer(active=False), *_start_buttons(True))
    result = on_score_report(settings, job_id, request)
    status = result["status"]
    buttons = _start_buttons(status["done"])
    label = f"{status['state']}: {status['message'] or status['title']}"
    if status.get("error"):
        label += f" · {status['error']}"
    bar = progress_html(status["progress_done"], status["progress_total"], label)
    # The report is written just before the worker exits: keep polling until the job says done.
    if not status["done"] or result["report"] is None:
        return (bar, *skip, gr.Timer(active=not status["done"]), *buttons)
    report = ScoreReport.from_json(result["report"])
    headers, rows = report.table()
    chart = sweep_chart(report) if report.parameter else scores_chart(report)
    folder = Path(settings.jobs_dir) / job_id
    csv_path = folder / "scores.csv"
    csv_path.write_text(report.to_csv(), encoding="utf-8")
    answers_csv: str | None = None
    answer_headers, answer_rows = report.answers_table()
    if report.answers:
        answers_csv = str(folder / "chat_qa_replies.csv")
        Path(answers_csv).write_text(report.answers_csv(), encoding="utf-8")
    return (
        bar,
        gr.Dataframe(value=rows, headers=headers),
        chart,
        str(csv_path),
        gr.Dataframe(value=answer_rows, headers=answer_headers),
        answers_csv,
        gr.Timer(active=False),
        *buttons,
    )


def _start_buttons(enabled: bool) -> tuple[gr.Button, gr.Button, gr.Button]:
    return (
        gr.Button(interactive=enabled),
        gr.Button(interactive=enabled),
        gr.Button(interactive=enabled),
    )


def build_score_tab(settings: StudioSettings, selection: gr.State | None = None) -> None:
    """The Score tab; with `selection` (build_app's per-session Selection) its parents and
    recipe follow the Merge tab's choice when the tab is selected."""
    bind = bind_settings
    demo = demo_task_paths()
    with gr.Tab("Score", id="score", elem_id="score-tab") as block:
        gr.Markdown(
            "Score the CPT checkpoint, the chat model and their merge on multiple-choice tasks "
            "(accuracy, length-normalised as lm-eval's acc_norm), perplexity tasks and chat-QA "
            "tasks (the question asked in the chat template, the greedy reply counted right "
            "when it holds the answer), or sweep one merge parameter and plot score against "
            "it. Scores are cached: a point scored once comes back instantly."
        )
        with gr.Row():
            cpt, chat, _base = parent_dropdowns(settings)
        recipe = gr.Code(
            value=lambda: default_recipe_yaml(settings),
            language="yaml",
            label="Merge to score (mergekit YAML; copy it from the Merge tab; empty: parents only)",
        )
        seen = gr.State(None)  # the (cpt, chat, recipe) Score last took; None: not yet
        with gr.Row():
            tasks = gr.CheckboxGroup(
                [(name, str(path)) for name, path in demo.items()],
                value=[str(path) for path in preselected_demo_tasks()],
                label="Tasks (the studio's demo tasks; the demo domain's sets preselected)",
            )
            extra = gr.Textbox(
                label="More task files, one path per line",
                placeholder="/data/medmcqa_dev.jsonl",
                lines=2,
            )
        with gr.Row():
            quick = gr.Checkbox(value=True, label="Quick mode (first N items)")
            limit = gr.Number(value=20, precision=0, minimum=1, label="N")
            fewshot = gr.Number(value=0, precision=0, minimum=0, label="Few-shot examples")
            max_new_tokens = gr.Number(
                value=ScoreSettings().max_new_tokens,
                precision=0,
                minimum=1,
                label="Chat QA: reply tokens",
            )
            chat_template = gr.Dropdown(
                template_choices(),
                value="auto",
                allow_custom_value=True,
                label="Chat QA: chat template",
                info="auto: each model's own",
            )
        score_btn = gr.Button("Score parents and merge", variant="primary")
        with gr.Accordion("Sweep one merge parameter", open=True):
            with gr.Row():
                parameter = gr.Dropdown(
                    SWEEP_PARAMETERS, value="weight", allow_custom_value=True, label="Parameter"
                )
                start = gr.Number(value=0.0, label="From")
                stop = gr.Number(value=1.0, label="To")
                points = gr.Slider(2, MAX_SWEEP_POINTS, value=5, step=1, label="Points")
                only_on = gr.Dropdown(
                    [ALL_TENSORS, "mlp", "self_attn"],
                    value=ALL_TENSORS,
                    allow_custom_value=True,
                    label="Only on tensors named",
                    info="mlp: the MLP layers move, the rest keeps the recipe's value",
                )
            sweep_btn = gr.Button("Run sweep")
        with gr.Accordion("Checkpoint sweep: a CPT run's checkpoints by step", open=False):
            gr.Markdown(
                "Each checkpoint is scored alone and merged by the recipe above with its first "
                "model replaced by the checkpoint (a better CPT checkpoint, a better merge?)."
            )
            with gr.Row():
                run_dir = gr.Textbox(
                    label="Training run folder", placeholder="~/.merge_studio/runs/tiny-cpt"
                )
                checkpoints_btn = gr.Button("Score checkpoints")
        with gr.Row():
            job_id = gr.Textbox(label="Job id", interactive=False)
            cancel = gr.Button("Cancel", variant="stop")
        progress = gr.HTML()
        table = gr.Dataframe(label="Scores (primary metric ± standard error)", interactive=False)
        chart = gr.Plot(label="Chart")
        csv_file = gr.File(label="Scores as CSV", interactive=False)
        with gr.Accordion("Chat-QA replies: what each model answered", open=False):
            answers = gr.Dataframe(
                label="Question, reference answer, the model's reply, counted right?",
                interactive=False,
                wrap=True,
            )
            answers_file = gr.File(label="Replies as CSV", interactive=False)
        job_json = gr.JSON(visible=False)
        timer = gr.Timer(1.0, active=False)

        options = [tasks, extra, quick, limit, fewshot, max_new_tokens, chat_template]

        def started(status: dict[str, Any]) -> tuple[str, str, gr.Timer]:
            label = f"{status['state']}: {status['title']}"
            return status["id"], progress_html(0, None, label), gr.Timer(active=True)

        # Each start button is disabled on click (no double start); the timer enables all three
        # when the job is done.
        start_job_on_click(
            score_btn,
            bind(on_score_start, settings),
            [cpt, chat, recipe, *options],
            [job_json],
            api_name="score",
        ).success(started, [job_json], [job_id, progress, timer], api_visibility="private")
        start_job_on_click(
            sweep_btn,
            bind(on_sweep_start, settings),
            [recipe, parameter, start, stop, points, *options, only_on],
            [job_json],
            api_name="sweep",
        ).success(started, [job_json], [job_id, progress, timer], api_visibility="private")
        start_job_on_click(
            checkpoints_btn,
            bind(on_checkpoint_sweep_start, settings),
            [run_dir, recipe, *options],
            [job_json],
            api_name="checkpoint_sweep",
        ).success(started, [job_json], [job_id, progress, timer], api_visibility="private")
        timer.tick(
            bind(show_report, settings),
            [job_id],
            [progress, table, chart, csv_file, answers, answers_file, timer]
            + [score_btn, sweep_btn, checkpoints_btn],
            api_visibility="private",
            show_progress="hidden",
        )

        def score_report_api(job_id: str, request: gr.Request | None = None) -> dict[str, Any]:
            """A score/sweep job's status and its report once finished (API: /score_report)."""
            return on_score_report(settings, job_id, request)

        gr.api(score_report_api, api_name="score_report")

        @user_errors
        def cancel_job(jid: str, request: gr.Request | None = None) -> str:
            if not jid:
                return ""
            own_job(settings, jid, request)  # another user's job is refused when login is on
            status = status_dict(get_runner(settings).cancel(jid))
            return progress_html(status["progress_done"], status["progress_total"], "cancelled")

        cancel.click(cancel_job, [job_id], [progress], api_visibility="private")
    if selection is not None:
        block.select(
            bind(carry_to_score, settings),
            [selection, seen],
            [cpt, chat, recipe, seen],
            api_visibility="private",
            queue=False,
        )
