"""Plotly figure builders: every number in a figure's data is the report's number, read back exactly."""

from __future__ import annotations

import math
from pathlib import Path

import plotly.io as pio
import pytest
from safetensors.torch import load_file

from studio import plots
from studio.merging.diagnostics import DiagnosticsReport, diagnose_models
from studio.merging.live import LiveMergeStats
from studio.merging.preview import PreviewResult, ProbeResult, TokenProbability


@pytest.fixture(scope="module")
def report(tiny_family: dict[str, Path]) -> DiagnosticsReport:
    files = [load_file(tiny_family[k] / "model.safetensors") for k in ("base", "cpt", "chat")]
    names = tuple(str(tiny_family[k]) for k in ("base", "cpt", "chat"))
    return diagnose_models(*files, density=0.4, names=names)  # type: ignore[arg-type]


def cell(trace, row_layer: int | None, group: str) -> float | None:
    x = list(trace.x).index(plots.layer_label(row_layer))
    return trace.z[list(trace.y).index(group)][x]


def test_heatmap_cells_are_the_report_rows(report: DiagnosticsReport) -> None:
    """One heatmap per metric; cell (layer, group) holds that row's value exactly; layers run
    'outside', 0, 1 on x and module groups on y; cells without tensors are empty."""
    fig = plots.diagnostics_heatmap(report)
    cosine, conflicts = fig.data
    assert list(cosine.x) == ["outside", "0", "1"]
    assert list(cosine.y) == ["embeddings", "attention", "mlp", "norms"]
    for row in report.rows:
        assert cell(cosine, row.layer, row.group) == row.task_vector_cosine
        assert cell(conflicts, row.layer, row.group) == row.sign_conflict_fraction
    assert cell(cosine, None, "attention") is None  # no attention outside the layer stack
    assert cell(cosine, 0, "embeddings") is None
    filled = sum(v is not None for line in cosine.z for v in line)
    assert filled == len(report.rows)
    assert "density 0.4" in fig.layout.title.text
    pio.from_json(fig.to_json())  # serialisable as gr.Plot sends it


def test_nan_cells_are_empty_and_other_metrics_work(
    tiny_family: dict[str, Path], report: DiagnosticsReport
) -> None:
    """A parent equal to the base has no task vector: its cosine is NaN, drawn as an empty cell."""
    base = load_file(tiny_family["base"] / "model.safetensors")
    chat = load_file(tiny_family["chat"] / "model.safetensors")
    unchanged = diagnose_models(base, base, chat)
    assert all(math.isnan(r.task_vector_cosine) for r in unchanged.rows)
    fig = plots.diagnostics_heatmap(unchanged, metrics=["task_vector_cosine"])
    assert all(v is None for line in fig.data[0].z for v in line)
    parent = plots.diagnostics_heatmap(report.rows, metrics=["parent_cosine"]).data[0]
    assert [cell(parent, r.layer, r.group) for r in report.rows] == [
        r.parent_cosine for r in report.rows
    ]
    with pytest.raises(ValueError, match="unknown diagnostics metrics"):
        plots.diagnostics_heatmap(report, metrics=["nope"])


def test_norms_chart_bars_are_the_norms(report: DiagnosticsReport) -> None:
    """Two bar traces named after the parents' folders; bar i is row i's task-vector norm."""
    fig = plots.norms_chart(report)
    a, b = fig.data
    assert (a.name, b.name) == ("cpt", "chat")
    assert list(a.y) == [r.task_vector_norm_a for r in report.rows]
    assert list(b.y) == [r.task_vector_norm_b for r in report.rows]
    assert list(a.x)[:2] == ["embeddings", "norms"] and "L0 attention" in a.x


def probe(label: str, domain: float | None, general: float) -> ProbeResult:
    token = TokenProbability(token_id=7, token="paris", text="paris", probability=0.25)
    return ProbeResult(
        label=label,
        domain_perplexity=domain,
        general_perplexity=general,
        domain_tokens=9,
        general_tokens=11,
        top_tokens=(token,),
    )


def test_probe_chart_merged_then_parents() -> None:
    """One trace per model (merged first), y = (domain, general) perplexity; a perplexity that
    was not finite (None) leaves a gap; a PreviewResult's JSON round-trips to the same chart."""
    merged, cpt, chat = (
        probe("merged", 12.5, 30.25),
        probe("cpt", 8.0, 55.5),
        probe("chat", None, 9.0),
    )
    fig = plots.probe_chart(merged, [cpt, chat])
    assert [t.name for t in fig.data] == ["merged", "cpt", "chat"]
    assert [list(t.y) for t in fig.data] == [[12.5, 30.25], [8.0, 55.5], [None, 9.0]]
    assert list(fig.data[0].x) == ["domain text", "general text"]
    assert [t.name for t in plots.probe_chart(merged).data] == ["merged"]

    result = PreviewResult(
        method="linear",
        merged=merged,
        parents=(cpt, chat),
        stats=LiveMergeStats("linear", "fast", 21, 0.01, 0, 0),
        merger_reused=True,
        load_seconds=0.0,
        merge_seconds=0.01,
        probe_seconds=0.02,
        parents_seconds=0.0,
        weights_version=3,
        prompt="paris is",
    )
    back = PreviewResult.model_validate(result.to_json())
    assert back == result
    assert plots.probe_chart(back.merged, back.parents).to_json() == fig.to_json()
