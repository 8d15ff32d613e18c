"""Live preview panel of the Merge tab: re-merge in memory on every slider release, probe, diagnose.

`build_preview_panel(settings, recipe_yaml)` is called inside the Merge tab with the tab's YAML
box. With "Live preview" ticked, every change of that YAML (the tab rewrites it when a slider is
released) re-merges the session's loaded model in place and refreshes the probe: perplexity on a
domain and a general text, and the top next tokens for a probe prompt, next to the parents'.
"Diagnose" shows the task-vector heatmaps. Each browser session (and each gradio_client) gets its
own `LivePreview` from a registry owned by this panel; the session's key lives in a `gr.State`
whose expiry unloads it.

API (explicit api_names; the events that merge share concurrency_id "live_merge"):
- /preview (recipe YAML, probe prompt, [domain text, general text]) -> PreviewResult as JSON
- /diagnose (recipe YAML, density) -> (rows as JSON, heatmap figure, norms figure, summary)
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from studio import plots
from studio.demo_assets import DemoProbe, demo_probe
from studio.forms import form_float
from studio.merging.diagnostics import DiagnosticsReport
from studio.merging.preview import (
    DEFAULT_DOMAIN_TEXT,
    DEFAULT_GENERAL_TEXT,
    DEFAULT_PROBE_PROMPT,
    LivePreview,
    PreviewError,
    PreviewRegistry,
    PreviewResult,
    ProbeResult,
    probe_settings,
)
from studio.settings import StudioSettings
from studio.ui.common import user_errors

LOG = logging.getLogger(__name__)

CONCURRENCY_ID = "live_merge"  # one live merge at a time: they compete for the same cores
SESSION_TTL_S = 1800  # a session idle this long gives its loaded models back


def _session_key(key: str | None) -> str:
    return key or secrets.token_hex(8)


def is_placeholder(recipe_yaml: str | None) -> bool:
    """True for an empty box or the tab's '# cannot build this recipe yet' comment."""
    lines = [line.strip() for line in (recipe_yaml or "").splitlines()]
    return all(not line or line.startswith("#") for line in lines)


@user_errors
def on_preview_click(
    previews: PreviewRegistry,
    recipe_yaml: str,
    prompt: str | None,
    domain_text: str | None,
    general_text: str | None,
    key: str | None,
) -> tuple[dict[str, Any], str]:
    """Re-merge the session's model for `recipe_yaml` and probe it (API: /preview)."""
    probe = probe_settings(
        prompt=prompt or None, domain_text=domain_text or None, general_text=general_text or None
    )
    key = _session_key(key)
    result = previews.get(key).update(recipe_yaml, probe)
    return result.to_json(), key


def on_recipe_change(
    previews: PreviewRegistry,
    live: bool,
    recipe_yaml: str,
    prompt: str | None,
    domain_text: str | None,
    general_text: str | None,
    key: str | None,
) -> tuple[Any, Any]:
    """The live path: preview only when the switch is on and the box holds a recipe."""
    if not live or is_placeholder(recipe_yaml):
        return gr.skip(), gr.skip()
    return on_preview_click(previews, recipe_yaml, prompt, domain_text, general_text, key)


@user_errors
def on_diagnose_click(
    previews: PreviewRegistry, recipe_yaml: str, density: float, key: str | None
) -> tuple[list[dict[str, Any]], go.Figure, go.Figure, str, str]:
    """Task-vector diagnostics of the recipe's parents (API: /diagnose)."""
    key = _session_key(key)
    value = form_float(density, field="density")
    if value is None:  # a cleared number box: say so rather than guess a density
        raise PreviewError("density is empty; choose a value in (0, 1], e.g. 0.5")
    report = previews.get(key).diagnose(recipe_yaml, density=value)
    return (
        rows_json(report),
        plots.diagnostics_heatmap(report),
        plots.norms_chart(report),
        diagnostics_markdown(report),
        key,
    )


def on_result_change(result: dict[str, Any] | None) -> tuple[str, go.Figure | None]:
    """The summary table and perplexity chart of a /preview result."""
    if not result:
        return "", None
    parsed = PreviewResult.model_validate(result)
    return preview_markdown(parsed), plots.probe_chart(parsed.merged, parsed.parents)


# -- formatting -------------------------------------------------------------------------------


def rows_json(report: DiagnosticsReport) -> list[dict[str, Any]]:
    """The report's rows as JSON values (NaN, e.g. the cosine of an unchanged tensor: null)."""
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in report.records()
    ]


def _ppl(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _probe_row(result: ProbeResult) -> str:
    tokens = " · ".join(f"`{t.text}` {t.probability:.1%}" for t in result.top_tokens)
    return (
        f"| {result.label} | {_ppl(result.domain_perplexity)} | "
        f"{_ppl(result.general_perplexity)} | {tokens} |"
    )


def preview_markdown(result: PreviewResult) -> str:
    """One line of timings, then a table: perplexities and next tokens, merged and parents."""
    path = "fast kernels" if result.stats.path == "fast" else "mergekit's executor"
    loaded = "" if result.merger_reused else f" · models loaded in {result.load_seconds:.2f} s"
    lines = [
        f"**{result.method}** ({path}) merged in {result.merge_seconds:.3f} s · probed in "
        f"{result.probe_seconds:.3f} s{loaded}",
        "",
        f"| model | domain perplexity | general perplexity | next tokens after “{result.prompt}” |",
        "|---|---|---|---|",
        _probe_row(result.merged),
        *(_probe_row(p) for p in result.parents),
    ]
    if result.stats.threshold_ties:
        lines.append(
            f"\n{result.stats.threshold_ties} elements tie at a TIES trimming threshold; mergekit"
            " may keep others among them (the export can differ there)."
        )
    return "\n".join(lines)


def _share(value: float) -> str:
    return f"{value:.1%}" if math.isfinite(value) else "n/a (no task vector)"


def diagnostics_markdown(report: DiagnosticsReport) -> str:
    """The whole-model numbers in a sentence each, with what they mean for the merge."""
    s = report.summary
    lines = [
        f"**Whole model** ({s.parameters:,} parameters, density {report.density:g}): task-vector"
        f" cosine {s.task_vector_cosine:.3f} (near 0: nearly orthogonal, TIES changes little),"
        f" parent cosine {s.parent_cosine:.4f} (near 1: SLERP ~ linear), sign conflicts"
        f" {s.sign_conflict_fraction:.1%} of elements both keep. Trimming to the density keeps"
        f" {_share(s.kept_norm_share_a)} of {report.model_a}'s task-vector norm and"
        f" {_share(s.kept_norm_share_b)} of {report.model_b}'s.",
    ]
    for model, rows in report.added_tokens.items():
        lines.append(f"{model} has {rows} vocabulary rows beyond the base (compared separately).")
    if report.skipped:
        lines.append(f"Skipped (shapes differ): {', '.join(report.skipped)}.")
    return "\n\n".join(lines)


# -- layout and wiring ------------------------------------------------------------------------


def build_preview_panel(settings: StudioSettings, recipe_yaml: gr.Code) -> None:
    """The live preview and diagnostics controls, wired to `recipe_yaml` (call inside a tab)."""
    previews = PreviewRegistry(factory=functools.partial(LivePreview, settings=settings))
    bind = functools.partial
    # The app opens on the demo zoo: probe it with the demo domain's own text when shipped.
    probe = demo_probe() or DemoProbe(
        DEFAULT_DOMAIN_TEXT, DEFAULT_GENERAL_TEXT, DEFAULT_PROBE_PROMPT
    )
    with gr.Group():
        gr.Markdown("### Live preview")
        with gr.Row():
            live = gr.Checkbox(
                value=False,
                label="Live preview",
                info="re-merge in memory and probe on every slider release",
            )
            prompt = gr.Textbox(probe.prompt, label="Probe prompt", scale=3)
            preview = gr.Button("Preview now", scale=1)
        with gr.Accordion("Probe texts (perplexity)", open=False):
            domain = gr.Textbox(probe.domain_text, label="Domain text", lines=3)
            general = gr.Textbox(probe.general_text, label="General text", lines=3)
        summary = gr.Markdown()
        probe_plot = gr.Plot(label="Perplexity: merged vs parents")
        result = gr.JSON(label="Preview result", visible=False)
        with gr.Row():
            density = gr.Slider(
                0.05,
                1.0,
                value=0.5,
                step=0.05,
                label="Density",
                info="TIES trimming density at which sign conflicts are counted",
            )
            diagnose = gr.Button("Diagnose")
        diagnosis = gr.Markdown()
        heatmap = gr.Plot(label="Task-vector diagnostics per layer")
        norms = gr.Plot(label="Task-vector norms")
        rows = gr.JSON(label="Diagnostics rows", visible=False)
    session = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=previews.close)

    probe_inputs = [recipe_yaml, prompt, domain, general, session]
    preview.click(
        bind(on_preview_click, previews),
        probe_inputs,
        [result, session],
        api_name="preview",
        concurrency_id=CONCURRENCY_ID,
    ).success(on_result_change, [result], [summary, probe_plot], api_visibility="private")
    gr.on(
        [recipe_yaml.change, live.change],
        bind(on_recipe_change, previews),
        [live, *probe_inputs],
        [result, session],
        api_visibility="private",
        concurrency_id=CONCURRENCY_ID,
        trigger_mode="always_last",  # a burst of slider releases merges once, for the last
    ).success(on_result_change, [result], [summary, probe_plot], api_visibility="private")
    diagnose.click(
        bind(on_diagnose_click, previews),
        [recipe_yaml, density, session],
        [rows, heatmap, norms, diagnosis, session],
        api_name="diagnose",
        concurrency_id=CONCURRENCY_ID,
    )
