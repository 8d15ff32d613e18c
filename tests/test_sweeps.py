"""Score runs and sweeps on real tiny Llamas: live-merged points, parents, the cache, the job.

Properties: a linear sweep's endpoints ARE its parents (weight 0 scores exactly like the first
model, weight 1 like the second); a second identical sweep is answered entirely from the cache
with the same numbers; the job path gives the same report as the in-process run; a bad request
is one sentence before any job starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from studio.errors import RecipeError, StudioError
from studio.evaluation.checkpoint_sweep import (
    CheckpointSweepRequest,
    checkpoint_folders,
    run_checkpoint_sweep,
)
from studio.evaluation.jobs import read_report, start_score_job, start_sweep_job
from studio.evaluation.results import ResultStore
from studio.evaluation.scoring import ScoreSettings
from studio.evaluation.sweeps import (
    ScoreReport,
    ScoreRequest,
    ScoreTarget,
    SweepError,
    SweepRequest,
    run_scores,
    run_sweep,
    with_parameter,
)
from studio.jobs import get_runner
from studio.plots import scores_chart, sweep_chart
from studio.recipes import MergeRecipe, RecipeModel, recipe_to_yaml
from studio.recipes.recipe import FilteredValue
from studio.settings import load_settings

QUESTIONS = [
    ("the capital of france is", ["paris", "rome", "a cat", "blue"], 0),
    ("water is made of hydrogen and", ["oxygen", "gold", "music", "paris"], 0),
    ("the patient was given", ["aspirin", "a river", "the moon", "seven"], 0),
    ("two plus two is", ["four", "green", "london", "a dog"], 0),
]


@pytest.fixture
def mc_task(tmp_path: Path) -> Path:
    path = tmp_path / "mini_mc.jsonl"
    lines = [
        json.dumps({"question": q, "options": options, "answer": answer})
        for q, options, answer in QUESTIONS
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def text_task(tmp_path: Path) -> Path:
    path = tmp_path / "domain.txt"
    path.write_text(
        "the patient was given aspirin for the fever. the doctor wrote a note.\n", encoding="utf-8"
    )
    return path


def linear(family: dict[str, Path]) -> MergeRecipe:
    return MergeRecipe(
        method="linear",
        models=(
            RecipeModel(path=str(family["cpt"]), parameters={"weight": 0.5}),
            RecipeModel(path=str(family["chat"]), parameters={"weight": 0.5}),
        ),
        dtype="float32",
    )


def test_weight_axis_runs_from_the_first_model_to_the_second(tiny_family: dict[str, Path]) -> None:
    """weight=v on a two-model merge: the first model gets 1 - v, the second v."""
    swept = with_parameter(linear(tiny_family), "weight", 0.25)
    assert [m.parameters["weight"] for m in swept.models] == [0.75, 0.25]
    only_first = with_parameter(linear(tiny_family), "weight", 0.9, model_index=0)
    assert [m.parameters["weight"] for m in only_first.models] == [0.9, 0.5]


def test_only_filter_varies_the_parameter_on_matching_tensors_only(
    tiny_family: dict[str, Path],
) -> None:
    """weight[mlp]=v: the MLP tensors move along the axis, every other tensor keeps the recipe's
    value; a filtered recipe value keeps its other entries; no value to keep is a sentence."""
    swept = with_parameter(linear(tiny_family), "weight", 0.75, only_filter="mlp")
    assert [m.parameters["weight"] for m in swept.models] == [
        [FilteredValue(filter="mlp", value=0.25), FilteredValue(value=0.5)],
        [FilteredValue(filter="mlp", value=0.75), FilteredValue(value=0.5)],
    ]
    again = with_parameter(swept, "weight", 0.1, only_filter="mlp")  # replaces, never stacks
    assert again.models[1].parameters["weight"] == [
        FilteredValue(filter="mlp", value=0.1),
        FilteredValue(value=0.5),
    ]
    slerp = MergeRecipe(
        method="slerp",
        models=(
            RecipeModel(path=str(tiny_family["cpt"])),
            RecipeModel(path=str(tiny_family["chat"])),
        ),
    )
    with pytest.raises(SweepError, match="give t a value in the recipe"):
        with_parameter(slerp, "t", 0.3, only_filter="self_attn")
    request = SweepRequest(
        recipe=recipe_to_yaml(linear(tiny_family)),
        parameter="weight",
        values=(0.5,),
        tasks=("x.txt",),
        only_filter="  ",
    )
    assert request.only_filter is None and request.point_name == "weight"
    assert request.model_copy(update={"only_filter": "mlp"}).point_name == "weight[mlp]"


def test_filtered_sweep_point_merges_mlp_from_one_parent_and_the_rest_from_the_other(
    tiny_family: dict[str, Path], text_task: Path, tmp_path: Path
) -> None:
    """A weight[mlp]=1 point of a chat(1)/cpt(0) recipe is the chat model with the CPT's MLP
    tensors: scored like a model written that way by hand."""
    recipe = MergeRecipe(
        method="linear",
        models=(
            RecipeModel(path=str(tiny_family["chat"]), parameters={"weight": 1.0}),
            RecipeModel(path=str(tiny_family["cpt"]), parameters={"weight": 0.0}),
        ),
        dtype="float32",
    )
    report = run_sweep(
        SweepRequest(
            recipe=recipe_to_yaml(recipe),
            parameter="weight",
            values=(1.0,),
            only_filter="mlp",
            tasks=(str(text_task),),
            include_parents=False,
        )
    )
    (row,) = report.rows
    assert row.label == "weight[mlp]=1"
    hand = tmp_path / "hand"
    shutil.copytree(tiny_family["chat"], hand)
    chat = load_file(tiny_family["chat"] / "model.safetensors")
    cpt = load_file(tiny_family["cpt"] / "model.safetensors")
    mixed = {k: (cpt[k] if ".mlp." in k else v) for k, v in chat.items()}
    assert any(not torch.equal(chat[k], mixed[k]) for k in chat)
    save_file(mixed, hand / "model.safetensors", metadata={"format": "pt"})
    (expected,) = run_scores(
        ScoreRequest(targets=(ScoreTarget(label="hand", model=str(hand)),), tasks=(str(text_task),))
    ).rows
    assert row.score == pytest.approx(expected.score, rel=1e-5)


def test_global_and_per_model_parameters(tiny_family: dict[str, Path]) -> None:
    slerp = MergeRecipe(
        method="slerp",
        models=(
            RecipeModel(path=str(tiny_family["cpt"])),
            RecipeModel(path=str(tiny_family["chat"])),
        ),
        parameters={"t": 0.5},
    )
    assert with_parameter(slerp, "t", 0.3).parameters["t"] == 0.3
    ties = MergeRecipe(
        method="ties",
        base=str(tiny_family["base"]),
        models=(
            RecipeModel(path=str(tiny_family["cpt"]), parameters={"weight": 1.0, "density": 0.5}),
            RecipeModel(path=str(tiny_family["chat"]), parameters={"weight": 1.0, "density": 0.5}),
        ),
    )
    swept = with_parameter(ties, "density", 0.2)
    assert [m.parameters["density"] for m in swept.models] == [0.2, 0.2]
    with pytest.raises(RecipeError, match="no parameter 'density'"):
        with_parameter(slerp, "density", 0.2)
    with pytest.raises(RecipeError, match="density"):
        with_parameter(ties, "density", 1.5)
    with pytest.raises(SweepError, match="model_index 5"):
        with_parameter(ties, "density", 0.2, model_index=5)


def test_linear_sweep_endpoints_equal_the_parents_and_the_cache_answers_the_rerun(
    tiny_family: dict[str, Path], mc_task: Path, text_task: Path, tmp_path: Path
) -> None:
    store = ResultStore(tmp_path / "scores.db")
    request = SweepRequest(
        recipe=recipe_to_yaml(linear(tiny_family)),
        parameter="weight",
        values=(0.0, 0.5, 1.0),
        tasks=(str(mc_task), str(text_task)),
    )
    seen: list[tuple[int, int]] = []
    report = run_sweep(request, store=store, progress=lambda d, t, _m: seen.append((d, t)))

    # 3 points + 2 parents, each on 2 tasks; nothing cached the first time
    assert len(report.rows) == 10 and not any(r.cached for r in report.rows)
    assert seen[-1][0] == seen[-1][1] > 0  # progress ends at its total
    by = {(r.label, r.task): r for r in report.rows}
    for task in {r.task for r in report.rows}:
        assert by[("weight=0", task)].score == pytest.approx(by[("cpt", task)].score, abs=1e-5)
        assert by[("weight=1", task)].score == pytest.approx(by[("chat", task)].score, abs=1e-5)
    assert {r.kind for r in report.rows} == {"merge", "parent"}

    again = run_sweep(request, store=store)
    assert all(r.cached for r in again.rows)
    assert [(r.label, r.task, r.score) for r in again.rows] == [
        (r.label, r.task, r.score) for r in report.rows
    ]
    assert store.count() == 10


def test_score_run_table_and_csv(tiny_family: dict[str, Path], mc_task: Path) -> None:
    request = ScoreRequest(
        targets=(
            ScoreTarget(label="cpt", model=str(tiny_family["cpt"])),
            ScoreTarget(label="merged", recipe=recipe_to_yaml(linear(tiny_family))),
        ),
        tasks=(str(mc_task),),
        settings=ScoreSettings(limit=3),
    )
    report = run_scores(request)
    assert [r.label for r in report.rows] == ["cpt", "merged"]
    assert all(r.n == 3 for r in report.rows)
    headers, rows = report.table()
    assert headers[0] == "model" and len(rows) == 2
    csv_lines = report.to_csv().strip().splitlines()
    assert csv_lines[0].startswith("label,kind,value,task,metric,score")
    assert len(csv_lines) == 3
    fig = scores_chart(report)
    assert [trace.name for trace in fig.data] == ["cpt", "merged"]
    assert fig.data[0].y[0] == pytest.approx(report.rows[0].score)


def test_sweep_chart_draws_points_and_parent_lines(
    tiny_family: dict[str, Path], mc_task: Path
) -> None:
    report = run_sweep(
        SweepRequest(
            recipe=recipe_to_yaml(linear(tiny_family)),
            parameter="weight",
            values=(0.0, 1.0),
            tasks=(str(mc_task),),
            settings=ScoreSettings(limit=2),
        )
    )
    fig = sweep_chart(report)
    curve = fig.data[0]
    assert list(curve.x) == [0.0, 1.0]
    assert list(curve.y) == [r.score for r in report.rows if r.value is not None]
    # Parents: horizontal lines in the task's colour, one dash style each.
    references = [t for t in fig.data if t.mode == "lines"]
    assert {t.name.split(" · ")[0] for t in references} == {"cpt", "chat"}
    assert len({t.line.dash for t in references}) == 2
    assert {t.line.color for t in references} == {curve.line.color}
    assert ScoreReport.from_json(report.to_json()) == report


def test_sweep_job_reports_through_the_runner(tiny_family: dict[str, Path], mc_task: Path) -> None:
    settings = load_settings()
    request = SweepRequest(
        recipe=recipe_to_yaml(linear(tiny_family)),
        parameter="weight",
        values=(0.0, 1.0),
        tasks=(str(mc_task),),
        include_parents=False,
        settings=ScoreSettings(limit=2),
    )
    record = start_sweep_job(request, settings=settings)
    status = get_runner(settings).wait(record.id, timeout=180)
    assert status.record.state.value == "succeeded", status.log_tail
    assert status.record.progress_done == status.record.progress_total == 4
    report = read_report(record.id, settings=settings)
    assert report is not None and [r.value for r in report.rows] == [0.0, 1.0]


def test_bad_requests_are_refused_before_a_job_starts(
    tiny_family: dict[str, Path], mc_task: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    recipe = recipe_to_yaml(linear(tiny_family))
    with pytest.raises(RecipeError, match="no parameter 't'"):
        start_sweep_job(
            SweepRequest(recipe=recipe, parameter="t", values=(0.5,), tasks=(str(mc_task),)),
            settings=settings,
        )
    with pytest.raises(StudioError):
        start_score_job(
            ScoreRequest(
                targets=(ScoreTarget(label="x", model=str(tiny_family["cpt"])),),
                tasks=(str(tmp_path / "missing.jsonl"),),
            ),
            settings=settings,
        )
    assert get_runner(settings).list() == []
    with pytest.raises(ValueError, match="either a model folder or a recipe"):
        ScoreTarget(label="x")


def test_checkpoint_sweep_scores_each_step_alone_and_merged(
    tiny_family: dict[str, Path], mc_task: Path, tmp_path: Path
) -> None:
    """Merged with weight 1 on the checkpoint, each merged point equals its checkpoint alone;
    each checkpoint alone equals the model it was copied from."""
    run = tmp_path / "run"
    for step, source in ((2, "base"), (4, "cpt")):
        shutil.copytree(tiny_family[source], run / f"step-{step:08d}")
    recipe = MergeRecipe(
        method="linear",
        models=(
            RecipeModel(path=str(tiny_family["cpt"]), parameters={"weight": 1.0}),
            RecipeModel(path=str(tiny_family["chat"]), parameters={"weight": 0.0}),
        ),
        dtype="float32",
    )
    request = CheckpointSweepRequest(
        run_dir=str(run), recipe=recipe_to_yaml(recipe), tasks=(str(mc_task),)
    )
    report = run_checkpoint_sweep(request)
    assert report.parameter == "step"
    assert [(r.kind, r.value) for r in report.rows] == [
        ("checkpoint", 2.0),
        ("checkpoint", 4.0),
        ("merge", 2.0),
        ("merge", 4.0),
    ]
    alone = {r.value: r.score for r in report.rows if r.kind == "checkpoint"}
    merged = {r.value: r.score for r in report.rows if r.kind == "merge"}
    assert merged[2.0] == pytest.approx(alone[2.0], abs=1e-5)
    assert merged[4.0] == pytest.approx(alone[4.0], abs=1e-5)
    cpt_alone = run_scores(
        ScoreRequest(
            targets=(ScoreTarget(label="cpt", model=str(tiny_family["cpt"])),),
            tasks=(str(mc_task),),
        )
    )
    assert alone[4.0] == pytest.approx(cpt_alone.rows[0].score, abs=1e-6)
    fig = sweep_chart(report)
    assert [t.name for t in fig.data] == ["mini_mc (checkpoint)", "mini_mc (merge)"]

    with pytest.raises(SweepError, match="has no checkpoints yet"):
        checkpoint_folders(CheckpointSweepRequest(run_dir=str(tmp_path), tasks=(str(mc_task),)))


def test_merge_points_are_scored_in_the_requests_dtype_which_keys_the_cache(
    tiny_family: dict[str, Path], mc_task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bfloat16 recipe swept with dtype float32: every merged model that is scored is fp32,
    the dtype the cache key names (transformers/float32), not the recipe's bf16."""
    from studio.merging.preview import LivePreview

    scored_dtypes: list[object] = []
    merge = LivePreview.merge

    def spy(self: LivePreview, recipe: object) -> object:
        engine, stats = merge(self, recipe)  # type: ignore[arg-type]
        scored_dtypes.append(engine.model.dtype)
        return engine, stats

    monkeypatch.setattr(LivePreview, "merge", spy)
    recipe = linear(tiny_family).model_copy(update={"dtype": "bfloat16"})
    report = run_sweep(
        SweepRequest(
            recipe=recipe_to_yaml(recipe),
            parameter="weight",
            values=(0.0, 1.0),
            tasks=(str(mc_task),),
            include_parents=False,
            dtype="float32",
        )
    )
    import torch

    assert scored_dtypes == [torch.float32, torch.float32]
    assert [r.value for r in report.rows] == [0.0, 1.0]


def test_run_scores_releases_the_live_merge_before_a_folder_model_loads(
    tiny_family: dict[str, Path], mc_task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """merge target, then a model folder: the preview (merger + merged model) is closed before
    the folder's model loads, so the two never sit in memory together."""
    from studio.inference.transformers_engine import TransformersEngine
    from studio.merging.preview import LivePreview

    events: list[str] = []
    close, load = LivePreview.close, TransformersEngine.load

    def spy_close(self: LivePreview) -> None:
        events.append("preview closed" if self.engine is not None else "preview empty")
        close(self)

    def spy_load(self: TransformersEngine) -> None:
        events.append(f"load {self.spec.name}")
        load(self)

    monkeypatch.setattr(LivePreview, "close", spy_close)
    monkeypatch.setattr(TransformersEngine, "load", spy_load)
    request = ScoreRequest(
        targets=(
            ScoreTarget(label="merged", recipe=recipe_to_yaml(linear(tiny_family))),
            ScoreTarget(label="chat", model=str(tiny_family["chat"])),
        ),
        tasks=(str(mc_task),),
    )
    report = run_scores(request)
    assert [r.label for r in report.rows] == ["merged", "chat"]
    # the merged model loads from the first parent's folder (cpt); then it is released
    assert events.index("preview closed") < events.index("load chat")
    assert events.index("load cpt") < events.index("preview closed")
