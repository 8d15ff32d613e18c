"""Jobs tab: history from SQLite, live progress, log tail, cancel; survives page reloads.

With a login (STUDIO_AUTH or OAuth) each user's list, /jobs, /job_status and /job_cancel
cover only the jobs that user started; another user's job id is refused in a sentence.
API: /jobs (limit) -> list of statuses, /job_status (job id), /job_cancel (job id).
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from studio.jobs import JobStatus, get_runner
from studio.settings import StudioSettings
from studio.ui.common import bind_settings, own_job, progress_html, user_errors, visible_jobs

LOG = logging.getLogger(__name__)

JOB_HEADERS = ["id", "kind", "state", "progress", "title", "output", "error"]


def status_dict(status: JobStatus) -> dict[str, Any]:
    """The JSON a /job_status caller gets: the stored record plus live fraction, ETA, log tail."""
    return status.record.model_dump(mode="json") | {
        "fraction": status.fraction,
        "eta_seconds": status.eta_seconds,
        "log_tail": status.log_tail,
        "done": status.done,
    }


def job_rows(settings: StudioSettings, request: gr.Request | None = None) -> list[list[str]]:
    """The table's rows: the caller's jobs (everyone's without a login), newest first."""
    rows = []
    for s in visible_jobs(settings, request):
        r = s.record
        progress = f"{r.progress_done}/{r.progress_total}" if r.progress_total else ""
        rows.append(
            [r.id, r.kind, r.state.value, progress, r.title, r.output_path or "", r.error or ""]
        )
    return rows


@user_errors
def on_job_status(
    settings: StudioSettings, job_id: str, request: gr.Request | None = None
) -> dict[str, Any]:
    """A job's record, progress, ETA and log tail (API: /job_status)."""
    return status_dict(own_job(settings, job_id, request))


@user_errors
def on_job_cancel(
    settings: StudioSettings, job_id: str, request: gr.Request | None = None
) -> dict[str, Any]:
    """Cancel a job: its worker's process group is killed, partial output removed."""
    own_job(settings, job_id, request)  # refuses another user's job before touching it
    return status_dict(get_runner(settings).cancel(job_id.strip()))


def detail(status: dict[str, Any]) -> tuple[str, str]:
    label = f"{status['state']}: {status['message'] or status['title']}"
    if status.get("error"):
        label += f" · {status['error']}"
    return progress_html(status["progress_done"], status["progress_total"], label), status[
        "log_tail"
    ]


def build_jobs_tab(settings: StudioSettings) -> None:
    bind = bind_settings  # not functools.partial: handlers need their gr.Request
    with gr.Tab("Jobs", id="jobs", elem_id="jobs-tab"):
        list_jobs = bind(job_rows, settings)
        table = gr.Dataframe(headers=JOB_HEADERS, label="Jobs (newest first)", interactive=False)
        with gr.Row():
            job_id = gr.Textbox(label="Job id", placeholder="click a row or paste an id")
            status_btn = gr.Button("Status")
            cancel_btn = gr.Button("Cancel job", variant="stop")
        progress = gr.HTML()
        status_json = gr.JSON(label="Status", visible=False)
        log = gr.Code(label="Log tail", language=None)
        timer = gr.Timer(2.0)

        # triggers=None: on every page load too, so a reload shows running jobs again.
        gr.on(None, list_jobs, None, [table], api_visibility="private", show_progress="hidden")
        timer.tick(list_jobs, None, [table], api_visibility="private", show_progress="hidden")

        def pick(evt: gr.SelectData, rows: Any) -> str:
            return (
                str(rows.iloc[evt.index[0], 0])
                if hasattr(rows, "iloc")
                else str(rows[evt.index[0]][0])
            )

        table.select(pick, [table], [job_id], api_visibility="private")
        status_btn.click(
            bind(on_job_status, settings), [job_id], [status_json], api_name="job_status"
        ).success(detail, [status_json], [progress, log], api_visibility="private")
        cancel_btn.click(
            bind(on_job_cancel, settings), [job_id], [status_json], api_name="job_cancel"
        ).success(detail, [status_json], [progress, log], api_visibility="private")

        def jobs_api(limit: int = 50, request: gr.Request | None = None) -> list[dict]:
            """Job history, newest first: the caller's own jobs when login is on (API: /jobs)."""
            return [status_dict(s) for s in visible_jobs(settings, request, limit=int(limit))]

        gr.api(jobs_api, api_name="jobs")
