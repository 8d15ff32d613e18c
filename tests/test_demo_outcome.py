"""The README's demo-outcome numbers (docs/outcome/tiny.json, from benchmarks/demo_outcome.py)
re-measured on a subset, so they cannot silently rot when the zoo, the data or the scorer change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.starter_zoo import ensure_starter_zoo
from studio.evaluation.scoring import ScoreSettings
from studio.evaluation.sweeps import SweepRequest, run_sweep
from studio.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO / "docs" / "outcome" / "tiny.json"
EVAL = REPO / "assets" / "demo_domain" / "eval"
# The subset: two tasks that show the effect (domain perplexity, general chat) and one merge
# point with both parents, scored exactly as the benchmark scored them (first 60 items).
TASKS = ("domain_text.txt", "general_chat_qa.jsonl")


@pytest.mark.slow
def test_recorded_linear_sweep_point_and_parents_reproduce() -> None:
    recorded = {
        (r["label"], r["task"]): r["score"] for r in json.loads(RECORDED.read_text())["linear"]
    }
    zoo = ensure_starter_zoo(load_settings())
    recipe = (
        f"merge_method: linear\nmodels:\n  - model: {zoo['chat']}\n    parameters: {{weight: 0.5}}"
        f"\n  - model: {zoo['cpt']}\n    parameters: {{weight: 0.5}}\ndtype: float32\n"
    )
    report = run_sweep(
        SweepRequest(
            tasks=tuple(str(EVAL / t) for t in TASKS),
            settings=ScoreSettings(limit=60, max_new_tokens=24, batch_size=16),
            dtype="float32",
            recipe=recipe,
            parameter="weight",
            values=(0.5,),
        )
    )
    measured = {(r.label, r.task): r.score for r in report.rows}
    labels = ("weight=0.5", "starter-chat", "starter-cpt")
    for label in labels:
        assert measured[(label, "general_chat_qa")] == pytest.approx(
            recorded[(label, "general_chat_qa")], abs=1 / 60 + 1e-9
        )
        assert measured[(label, "domain_text")] == pytest.approx(
            recorded[(label, "domain_text")], rel=0.02
        )
    # ... and the claims the README makes from them still hold.
    assert (
        measured[("starter-cpt", "domain_text")] * 100 < measured[("starter-chat", "domain_text")]
    )
    assert (
        measured[("starter-chat", "general_chat_qa")] > measured[("starter-cpt", "general_chat_qa")]
    )
