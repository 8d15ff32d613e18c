"""Train tab: continual pre-training and instruction tuning as background `accelerate launch` jobs.

Thin wiring over studio.training: pick a shipped config (tiny CPU demos, 7B examples), edit its
YAML, preview the exact command, Start; a timer polls `train_status` for progress, ETA,
tokens/s, the realised mixture, checkpoints, the log tail and the loss/LR chart. Stop asks the
run to finish its step and save a checkpoint; Resume continues a stopped run. A page reload
re-attaches to this session's newest training job. /train_config, /train_preview,
/train_start, /train_status, /train_stop and /train_resume are the same calls for gradio_client.
"""

from __future__ import annotations

import logging
from typing import Any, get_args

import gradio as gr

from studio.forms import form_float, form_int
from studio.plots import train_chart
from studio.settings import StudioSettings
from studio.training import (
    TrainStatus,
    launch_configs,
    load_train_config,
    preview_command,
    resume_train_job,
    start_train_job,
    stop_train_job,
    train_status,
)
from studio.training.config import SchedulePreset
from studio.training.presets import apply_form, shipped_config_yaml, shipped_configs
from studio.ui.common import (
    bind_settings,
    job_owner,
    model_choices,
    own_job,
    progress_html,
    start_job_on_click,
    user_errors,
    visible_jobs,
)
from studio.ui.synth_section import build_synth_section

LOG = logging.getLogger(__name__)

DEFAULT_CONFIG = "tiny_cpt"
MIXTURE_HEADERS = ["source", "target share", "realised share"]
SCHEDULE_PRESETS = list(get_args(SchedulePreset))


def status_json(status: TrainStatus) -> dict[str, Any]:
    """TrainStatus as API JSON. Checkpoint "path" keys become "folder": gradio_client would
    take a dict with a "path" string for a file to download."""
    data = status.model_dump(mode="json") | {"done": status.done}
    data["checkpoints"] = [
        {"step": c["step"], "folder": c["path"], "resumable": c["resumable"]}
        for c in data["checkpoints"]
    ]
    return data


@user_errors
def on_config_pick(settings: StudioSettings, name: str) -> str:
    """A shipped config as YAML, with absolute data paths and a fresh run folder."""
    return shipped_config_yaml(name, settings)


@user_errors
def on_form_apply(
    config_yaml: str,
    model: str | None,
    max_steps: float | None,
    lr: float | None,
    preset: str | None,
    seq_len: float | None,
) -> str:
    """The YAML with the form's fields applied (API: /train_form); an empty (or 0) number leaves
    the config's value, NaN or infinity is refused in a sentence."""
    return apply_form(
        config_yaml,
        model=model or None,
        max_steps=form_int(max_steps, field="max_steps") or None,
        lr=form_float(lr, field="lr") or None,
        preset=preset or None,
        seq_len=form_int(seq_len, field="seq_len") or None,
    )


@user_errors
def on_preview(config_yaml: str, launch: str) -> str:
    """The exact `accelerate launch ...` command Start runs (API: /train_preview)."""
    return preview_command(load_train_config(config_yaml), launch=launch)


@user_errors
def on_start(
    settings: StudioSettings, config_yaml: str, launch: str, request: gr.Request | None = None
) -> dict[str, Any]:
    """Start a training run as a background job (API: /train_start)."""
    record = start_train_job(
        load_train_config(config_yaml), launch=launch, settings=settings, owner=job_owner(request)
    )
    return status_json(train_status(record.id, settings=settings))


@user_errors
def on_status(
    settings: StudioSettings, job_id: str, request: gr.Request | None = None
) -> dict[str, Any]:
    """Step/total, ETA, losses, LR, mixture, checkpoints, log tail (API: /train_status)."""
    own_job(settings, job_id, request)  # another user's job is refused when login is on
    return status_json(train_status(job_id.strip(), settings=settings))


@user_errors
def on_stop(
    settings: StudioSettings, job_id: str, request: gr.Request | None = None
) -> dict[str, Any]:
    """Finish the current step, save a checkpoint, end (API: /train_stop)."""
    own_job(settings, job_id, request)
    return status_json(stop_train_job(job_id.strip(), settings=settings))


@user_errors
def on_resume(
    settings: StudioSettings, run_dir: str, request: gr.Request | None = None
) -> dict[str, Any]:
    """Continue a stopped run from its newest checkpoint as a new job (API: /train_resume)."""
    record = resume_train_job(run_dir.strip(), settings=settings, owner=job_owner(request))
    return status_json(train_status(record.id, settings=settings))


def newest_train_job(settings: StudioSettings, request: gr.Request | None = None) -> str:
    """On page load: the newest training job this user may see (everyone's without a login:
    a reload gets a new browser session, so the session cannot be the owner)."""
    for status in visible_jobs(settings, request):
        if status.record.kind == "train":
            return status.record.id
    return ""


def show_status(
    settings: StudioSettings, job_id: str
) -> tuple[str, str, Any, list[list[Any]], str, str, gr.Timer, gr.Button, gr.Button]:
    """Timer tick: progress bar, numbers, chart, mixture table, checkpoints and log tail; Start
    and Resume are enabled again once the job is done."""
    if not job_id:
        idle = gr.Button(interactive=True)
        return "", "", None, [], "", "", gr.Timer(active=False), idle, idle
    status = train_status(job_id, settings=settings)
    label = f"{status.phase}: step {status.step}/{status.max_steps or '?'}"
    if status.eta_seconds is not None and not status.done:
        label += f" · ETA {status.eta_seconds:.0f} s"
    if status.error:
        label += f" · {status.error}"
    bar = progress_html(status.step, status.max_steps, label)
    numbers = " · ".join(
        part
        for part in (
            f"loss {status.loss:.4f}" if status.loss is not None else "",
            f"lr {status.lr:.2e}" if status.lr is not None else "",
            f"{status.tokens_per_s:.0f} tokens/s" if status.tokens_per_s else "",
            f"{status.global_tokens_per_step} tokens/step" if status.global_tokens_per_step else "",
            *(f"eval {k} {v:.4f}" for k, v in status.eval_losses.items()),
        )
        if part
    )
    mixture = [
        [name, round(share, 3), round(status.mixture.get(name, 0.0), 3)]
        for name, share in status.target_mixture.items()
    ]
    checkpoints = "\n".join(
        f"step {c.step}: {c.path}{' (resumable)' if c.resumable else ''}"
        for c in status.checkpoints
    )
    chart = train_chart(status) if status.history else None
    return (
        bar,
        f"{numbers}\n\nRun folder: `{status.run_dir}`",
        chart,
        mixture,
        checkpoints,
        status.log_tail,
        gr.Timer(active=not status.done),
        gr.Button(interactive=status.done),
        gr.Button(interactive=status.done),
    )


def build_train_tab(settings: StudioSettings) -> None:
    bind = bind_settings
    with gr.Tab("Train", id="train", elem_id="train-tab"):
        gr.Markdown(
            "Continual pre-training (packed text, a domain/general mixture, re-warmed LR) and "
            "instruction tuning (loss on the assistant's tokens only) that make the checkpoints "
            "you merge. Runs as `accelerate launch` in the background: one CPU process here, "
            "FSDP or DeepSpeed on GPUs. Checkpoints appear in the model catalog with their step."
        )
        with gr.Row():
            preset = gr.Dropdown(
                list(shipped_configs()), value=DEFAULT_CONFIG, label="Start from a shipped config"
            )
            launch = gr.Dropdown(list(launch_configs()), value="cpu", label="Launch config")
        config = gr.Code(
            value=lambda: shipped_config_yaml(DEFAULT_CONFIG, settings),
            language="yaml",
            label="Run config (YAML): model, data and mixture, schedule, batch, checkpoints",
        )
        with gr.Row():
            model = gr.Dropdown(
                model_choices(settings),
                value=None,
                allow_custom_value=True,
                label="Model (empty: keep the config's)",
            )
            # Empty numbers arrive as 0 from a browser: 0 means "keep the config's value".
            max_steps = gr.Number(value=None, precision=0, label="Max steps")
            lr = gr.Number(value=None, label="Peak learning rate")
            schedule = gr.Dropdown(["", *SCHEDULE_PRESETS], value="", label="LR schedule preset")
            seq_len = gr.Number(value=None, precision=0, label="Sequence length")
            apply_btn = gr.Button("Apply to config")
        command = gr.Textbox(label="Command the job runs", interactive=False)
        with gr.Row():
            preview_btn = gr.Button("Preview command")
            start_btn = gr.Button("Start", variant="primary")
            stop_btn = gr.Button("Stop (save a checkpoint)", variant="stop")
            resume_btn = gr.Button("Resume run")
        job_id = gr.Textbox(label="Training job id")
        progress = gr.HTML()
        numbers = gr.Markdown()
        chart = gr.Plot(label="Loss and learning rate")
        with gr.Row():
            mixture = gr.Dataframe(
                headers=MIXTURE_HEADERS, label="Data mixture (token shares)", interactive=False
            )
            checkpoints = gr.Textbox(label="Checkpoints", lines=4, interactive=False)
        log = gr.Code(label="Log tail", language=None)
        status_box = gr.JSON(visible=False)
        timer = gr.Timer(2.0, active=False)

        preset.change(bind(on_config_pick, settings), [preset], [config], api_name="train_config")
        apply_btn.click(
            on_form_apply,
            [config, model, max_steps, lr, schedule, seq_len],
            [config],
            api_name="train_form",
        )
        preview_btn.click(on_preview, [config, launch], [command], api_name="train_preview")

        def watch(status: dict[str, Any]) -> tuple[str, gr.Timer]:
            return status["job_id"], gr.Timer(active=True)

        # Disabled on click (no double start); the timer enables it when the job is done.
        start_job_on_click(
            start_btn,
            bind(on_start, settings),
            [config, launch],
            [status_box],
            api_name="train_start",
            concurrency_limit=1,
        ).success(watch, [status_box], [job_id, timer], api_visibility="private")
        stop_btn.click(bind(on_stop, settings), [job_id], [status_box], api_name="train_stop")

        def resume_from_config(
            config_yaml: str, request: gr.Request | None = None
        ) -> dict[str, Any]:
            return on_resume(settings, load_train_config(config_yaml).output_dir, request)

        start_job_on_click(
            resume_btn,
            user_errors(resume_from_config),
            [config],
            [status_box],
            api_visibility="private",
        ).success(watch, [status_box], [job_id, timer], api_visibility="private")

        def train_resume_api(run_dir: str, request: gr.Request | None = None) -> dict[str, Any]:
            """Continue the run in `run_dir` from its newest checkpoint (API: /train_resume)."""
            return on_resume(settings, run_dir, request)

        gr.api(train_resume_api, api_name="train_resume")

        def train_status_api(job_id: str, request: gr.Request | None = None) -> dict[str, Any]:
            """A training job's status (API: /train_status)."""
            return on_status(settings, job_id, request)

        gr.api(train_status_api, api_name="train_status")
        outputs = [
            progress,
            numbers,
            chart,
            mixture,
            checkpoints,
            log,
            timer,
            start_btn,
            resume_btn,
        ]
        timer.tick(
            bind(show_status, settings),
            [job_id],
            outputs,
            api_visibility="private",
            show_progress="hidden",
        )
        # A reload re-attaches: the newest training job of this session comes back with its chart.
        gr.on(
            None, bind(newest_train_job, settings), None, [job_id], api_visibility="private"
        ).then(
            bind(show_status, settings),
            [job_id],
            outputs,
            api_visibility="private",
            show_progress="hidden",
        )
        build_synth_section(settings)  # issue 9: SFT and QA data from the user's documents
