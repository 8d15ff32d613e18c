"""Plotly figure builders for the studio's numbers (no gradio here: the UI only displays them).

- `diagnostics_heatmap`: layers x module groups of the task-vector diagnostics, one heatmap per
  metric (default: cosine between the two task vectors, and the sign-conflict fraction at the
  chosen density) -- the picture behind "TIES helps only when task vectors interfere";
- `norms_chart`: ||parent - base|| per (layer, group) for both parents;
- `probe_chart`: domain and general perplexity of the live-merged model next to its parents;
- `sweep_chart`: score against the swept merge parameter, one line per task with error bars,
  the parents as dashed reference lines, one panel per metric (accuracy up, perplexity down);
- `scores_chart`: the primary metric of each scored model per task, side by side;
- `train_chart`: a training run's loss and held-out losses by step, the LR on a second axis.

Every figure's data holds the report's numbers as they are (missing or NaN cells are None), so
a test can read them back exactly.

    fig = diagnostics_heatmap(preview.diagnose(recipe_yaml))
    fig.show()
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from studio.merging.diagnostics import GROUPS, DiagnosticRow, DiagnosticsReport

if TYPE_CHECKING:
    from studio.evaluation.sweeps import ScoreReport, ScoreRow
    from studio.merging.preview import ProbeResult
    from studio.training import TrainStatus

LOG = logging.getLogger(__name__)

OUTSIDE_LAYERS = "outside"  # x label of tensors outside the layer stack (embeddings, final norm)
HEATMAP_METRICS: tuple[str, ...] = ("task_vector_cosine", "sign_conflict_fraction")
METRIC_TITLES = {
    "task_vector_cosine": "cos(task vector A, task vector B): near 0 = orthogonal, little interference",
    "parent_cosine": "cos(parent A, parent B): near 1 = collinear, SLERP ~ linear",
    "sign_conflict_fraction": "sign conflicts among elements both trimmed task vectors keep",
    "trimmed_fraction": "fraction magnitude trimming drops",
    "election_dropped_fraction": "kept elements TIES' sign election drops",
    "kept_norm_share_a": "share of task vector A's norm that trimming keeps",
    "kept_norm_share_b": "share of task vector B's norm that trimming keeps",
}
# Cosines are signed (diverging scale around 0); fractions run 0..1.
_SCALES = {
    "task_vector_cosine": {"colorscale": "RdBu", "zmin": -1.0, "zmax": 1.0},
    "parent_cosine": {"colorscale": "RdBu", "zmin": -1.0, "zmax": 1.0},
}
_FRACTION_SCALE = {"colorscale": "Reds", "zmin": 0.0, "zmax": 1.0}

Rows = DiagnosticsReport | Sequence[DiagnosticRow]


# One colour per task (plotly's default sequence); parents keep their task's colour.
TASK_COLOURS = pcolors.qualitative.Plotly
REFERENCE_DASHES = ("dash", "dot", "dashdot", "longdash")


def _rows(report: Rows) -> tuple[DiagnosticRow, ...]:
    return report.rows if isinstance(report, DiagnosticsReport) else tuple(report)


def _number(value: float | None) -> float | None:
    """The value, or None where plotly should leave a gap (missing, NaN, infinite)."""
    return value if value is not None and math.isfinite(value) else None


def layer_label(layer: int | None) -> str:
    return OUTSIDE_LAYERS if layer is None else str(layer)


def heatmap_grid(
    report: Rows, metric: str
) -> tuple[list[str], list[str], list[list[float | None]]]:
    """(x = layer labels, y = groups, z[y][x]) of one metric; None where no tensor belongs."""
    rows = _rows(report)
    layers = sorted({r.layer for r in rows}, key=lambda x: (x is not None, x or 0))
    groups = [g for g in (*GROUPS, "all") if any(r.group == g for r in rows)]
    x = [layer_label(layer) for layer in layers]
    z: list[list[float | None]] = [[None] * len(x) for _ in groups]
    for row in rows:
        z[groups.index(row.group)][layers.index(row.layer)] = _number(getattr(row, metric))
    return x, groups, z


def diagnostics_heatmap(
    report: Rows, *, metrics: Sequence[str] = HEATMAP_METRICS, title: str | None = None
) -> go.Figure:
    """One heatmap per metric (stacked), layers on x and module groups on y."""
    unknown = [m for m in metrics if m not in METRIC_TITLES]
    if unknown:
        raise ValueError(f"unknown diagnostics metrics {unknown}; known: {list(METRIC_TITLES)}")
    n = len(metrics)
    fig = make_subplots(
        rows=n, cols=1, subplot_titles=[METRIC_TITLES[m] for m in metrics], vertical_spacing=0.12
    )
    for i, metric in enumerate(metrics):
        x, y, z = heatmap_grid(report, metric)
        fig.add_trace(
            go.Heatmap(
                x=x,
                y=y,
                z=z,
                name=metric,
                texttemplate="%{z:.2f}",
                hovertemplate="layer %{x}, %{y}: %{z:.4f}<extra>" + metric + "</extra>",
                colorbar={"len": 1 / n, "y": 1 - (i + 0.5) / n, "yanchor": "middle"},
                **_SCALES.get(metric, _FRACTION_SCALE),
            ),
            row=i + 1,
            col=1,
        )
        fig.update_xaxes(type="category", title_text="layer", row=i + 1, col=1)
        fig.update_yaxes(type="category", row=i + 1, col=1)
    if isinstance(report, DiagnosticsReport):
        title = title or f"Task-vector diagnostics (density {report.density:g})"
    fig.update_layout(title=title, height=260 * n + 80, margin={"t": 90})
    return fig


def norms_chart(
    report: Rows, *, names: tuple[str, str] | None = None, title: str | None = None
) -> go.Figure:
    """Grouped bars of ||a - base|| and ||b - base|| per (layer, group): where each model moved."""
    rows = _rows(report)
    if names is None:
        names = (
            (Path(report.model_a).name, Path(report.model_b).name)
            if isinstance(report, DiagnosticsReport)
            else ("model A", "model B")
        )
    x = [
        f"{r.group}" if r.layer is None else f"L{r.layer} {r.group}" for r in rows
    ]  # one bar pair per row, in the report's order
    fig = go.Figure(
        [
            go.Bar(name=names[0], x=x, y=[_number(r.task_vector_norm_a) for r in rows]),
            go.Bar(name=names[1], x=x, y=[_number(r.task_vector_norm_b) for r in rows]),
        ]
    )
    fig.update_layout(
        barmode="group",
        title=title or "Task-vector norms ||parent - base||",
        yaxis_title="L2 norm",
        xaxis={"type": "category"},
    )
    return fig


PROBE_METRICS = (("domain_perplexity", "domain text"), ("general_perplexity", "general text"))


def probe_chart(
    merged: ProbeResult, parents: Sequence[ProbeResult] = (), *, title: str | None = None
) -> go.Figure:
    """Perplexity on the domain and the general text: the merged model, then each parent."""
    x = [label for _, label in PROBE_METRICS]
    fig = go.Figure(
        [
            go.Bar(
                name=result.label,
                x=x,
                y=[_number(getattr(result, field)) for field, _ in PROBE_METRICS],
                texttemplate="%{y:.1f}",
            )
            for result in (merged, *parents)
        ]
    )
    fig.update_layout(
        barmode="group",
        title=title or "Perplexity (lower is better): merged vs parents",
        yaxis_title="perplexity",
    )
    return fig


def _metric_panels(rows: Sequence[ScoreRow]) -> list[str]:
    return list(dict.fromkeys(r.metric for r in rows))


def sweep_chart(report: ScoreReport, *, title: str | None = None) -> go.Figure:
    """Score vs the swept parameter; parents (and other unswept models) as horizontal lines in
    their task's colour, one dash style per parent. Perplexity panels use a log axis (merges
    and parents differ by orders of magnitude)."""
    rows = report.rows
    metrics = _metric_panels(rows) or ["score"]
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=metrics)
    points = [r for r in rows if r.value is not None]
    xs = sorted({r.value for r in points if r.value is not None})
    lo, hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    # A checkpoint sweep has two valued kinds (checkpoint alone, merged): one line each.
    kinds = list(dict.fromkeys(r.kind for r in points))
    tasks = list(dict.fromkeys(r.task for r in rows))
    colour = {task: TASK_COLOURS[i % len(TASK_COLOURS)] for i, task in enumerate(tasks)}
    references = list(dict.fromkeys(r.label for r in rows if r.value is None))
    dash = {
        label: REFERENCE_DASHES[i % len(REFERENCE_DASHES)] for i, label in enumerate(references)
    }
    for panel, metric in enumerate(metrics, start=1):
        for task in dict.fromkeys(r.task for r in rows if r.metric == metric):
            for kind in kinds:
                line = sorted(
                    (r for r in points if (r.task, r.metric, r.kind) == (task, metric, kind)),
                    key=lambda r: r.value or 0.0,
                )
                if not line:
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=[r.value for r in line],
                        y=[_number(r.score) for r in line],
                        error_y={"type": "data", "array": [r.stderr or 0.0 for r in line]},
                        mode="lines+markers",
                        line={"color": colour[task]},
                        name=task if len(kinds) == 1 else f"{task} ({kind})",
                        legendgroup=task,
                    ),
                    row=panel,
                    col=1,
                )
            for ref in (r for r in rows if r.value is None and r.task == task):
                fig.add_trace(
                    go.Scatter(
                        x=[lo, hi],
                        y=[_number(ref.score)] * 2,
                        mode="lines",
                        line={"dash": dash[ref.label], "color": colour[task], "width": 1},
                        name=f"{ref.label} · {task}",
                        legendgroup=task,
                    ),
                    row=panel,
                    col=1,
                )
        if metric == "perplexity":
            fig.update_yaxes(type="log", row=panel, col=1)
    fig.update_xaxes(title_text=report.parameter or "parameter", row=len(metrics), col=1)
    fig.update_layout(
        title=title or f"Score against {report.parameter or 'the merge parameter'}",
        height=320 * len(metrics),
    )
    return fig


def scores_chart(report: ScoreReport, *, title: str | None = None) -> go.Figure:
    """Grouped bars: per task (x), one bar per scored model, with its standard error."""
    rows = report.rows
    tasks = list(dict.fromkeys(f"{r.task} ({r.metric})" for r in rows))
    fig = go.Figure()
    for label in dict.fromkeys(r.label for r in rows):
        mine = {f"{r.task} ({r.metric})": r for r in rows if r.label == label}
        fig.add_trace(
            go.Bar(
                name=label,
                x=tasks,
                y=[_number(mine[t].score) if t in mine else None for t in tasks],
                error_y={
                    "type": "data",
                    "array": [(mine[t].stderr or 0.0) if t in mine else 0.0 for t in tasks],
                },
                texttemplate="%{y:.3g}",
            )
        )
    fig.update_layout(barmode="group", title=title or "Scores: merged vs parents")
    return fig


def train_chart(status: TrainStatus, *, title: str | None = None) -> go.Figure:
    """Training loss and every eval set's loss against step; learning rate on the right axis."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [p.step for p in status.history]
    fig.add_trace(
        go.Scatter(x=steps, y=[_number(p.loss) for p in status.history], name="train loss"),
        secondary_y=False,
    )
    for name in dict.fromkeys(k for e in status.evals for k in e.losses):
        points = [e for e in status.evals if name in e.losses]
        fig.add_trace(
            go.Scatter(
                x=[e.step for e in points],
                y=[_number(e.losses[name]) for e in points],
                mode="lines+markers",
                name=f"eval loss: {name}",
            ),
            secondary_y=False,
        )
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=[p.lr for p in status.history],
            name="learning rate",
            line={"dash": "dot"},
        ),
        secondary_y=True,
    )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="learning rate", secondary_y=True)
    fig.update_layout(title=title or f"{status.kind.upper()} run: loss and learning rate")
    return fig
