"""The CPT pipeline on tiny Llamas, in-process: learning, checkpoints, stop/resume, re-warm, and
checkpoints the merge path and the inference engine accept.

    .venv/bin/python -m pytest -q tests/test_cpt.py
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from pipelines.cpt import CPTRecipe, StepResult
from pipelines.schedules import lr_at
from pipelines.tiny_models import DOMAIN_TEXT, GENERAL_TEXT
from studio.catalog.compat import check_compatibility
from studio.catalog.inspect import inspect_model
from studio.catalog.registry import list_models
from studio.inference.engine import ModelSpec, generation_settings
from studio.inference.transformers_engine import TransformersEngine
from studio.merging.live import LiveMerger
from studio.training.checkpoints import (
    RESUME_STATE_FILE,
    TRAINER_STATE_DIR,
    ResumeError,
    list_checkpoints,
    read_resume_state,
    request_stop,
)
from studio.training.config import CPTConfig, Schedule, TrainConfigError, load_train_config
from studio.training.runlog import EndRecord, EvalRecord, StepRecord, read_run_log

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"


@pytest.fixture(autouse=True)
def fresh_accelerate() -> Iterator[None]:
    """Each in-process run gets a fresh Accelerator (accelerate keeps process-wide state)."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A repeated domain corpus, general replay text, and held-out files of each."""
    folder = tmp_path_factory.mktemp("corpus")
    files = {
        "domain": [{"text": t} for _ in range(8) for t in DOMAIN_TEXT],
        "general": [{"text": t} for _ in range(8) for t in GENERAL_TEXT],
    }
    paths = {}
    for name, rows in files.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    paths["domain_eval"] = folder / "domain_eval.txt"
    paths["domain_eval"].write_text(" ".join(DOMAIN_TEXT[:3]), encoding="utf-8")
    paths["general_eval"] = folder / "general_eval.txt"
    paths["general_eval"].write_text(" ".join(GENERAL_TEXT[:3]), encoding="utf-8")
    return paths


def cpt_config(model: Path, corpus: dict[str, Path], out: Path, **overrides) -> CPTConfig:
    values = {
        "kind": "cpt",
        "model": str(model),
        "output_dir": str(out),
        "micro_batch_size": 2,
        "grad_accum": 2,
        "max_steps": 8,
        "schedule": {"preset": "rewarm_cosine", "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        "eval_every": 4,
        "save_every": 4,
        "register_checkpoints": False,
        "data": {
            "seq_len": 16,
            "sources": [
                {"name": "domain", "paths": [str(corpus["domain"])], "weight": 0.75},
                {"name": "general", "paths": [str(corpus["general"])], "weight": 0.25},
            ],
            "eval_sets": [
                {"name": "domain", "paths": [str(corpus["domain_eval"])]},
                {"name": "general", "paths": [str(corpus["general_eval"])]},
            ],
        },
    }
    values.update(overrides)
    return CPTConfig.model_validate(values)


def step_losses(run_dir: Path) -> dict[int, float]:
    return {
        r.step: r.loss for r in read_run_log(run_dir / "metrics.jsonl") if isinstance(r, StepRecord)
    }


class StopAfter(CPTRecipe):
    """The real graceful stop: the STOP file appears once `stop_at` steps are done."""

    stop_at = 4

    def train_step(self) -> StepResult:
        result = super().train_step()
        if self.step == self.stop_at:
            request_stop(self.run_dir)
        return result


@pytest.fixture(scope="module")
def trained(tiny_family: dict[str, Path], corpus: dict[str, Path], tmp_path_factory) -> Path:
    """One uninterrupted 12-step run (shared by the tests that only read its outputs)."""
    out = tmp_path_factory.mktemp("runs") / "whole"
    recipe = CPTRecipe(cpt_config(tiny_family["base"], corpus, out, max_steps=12))
    try:
        end = recipe.run()
    finally:
        recipe.close()
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert end.reason == "completed" and end.step == 12
    return out


def test_cpt_lowers_the_loss_and_writes_step_checkpoints(trained: Path) -> None:
    """A few steps on a repeated corpus lower train and held-out loss; step-NNNNNNNN folders at
    every save_every and the end; only the newest keeps its optimizer state."""
    losses = step_losses(trained)
    assert sorted(losses) == list(range(1, 13))
    assert sum(losses[s] for s in (10, 11, 12)) / 3 < losses[1] - 0.5
    evals = [r for r in read_run_log(trained / "metrics.jsonl") if isinstance(r, EvalRecord)]
    assert [e.step for e in evals] == [4, 8, 12]
    assert set(evals[0].losses) == {"domain", "general"}
    assert evals[-1].losses["domain"] < evals[0].losses["domain"]
    checkpoints = list_checkpoints(trained)
    assert [(Path(c.path).name, c.resumable) for c in checkpoints] == [
        ("step-00000004", False),
        ("step-00000008", False),
        ("step-00000012", True),
    ]
    last = Path(checkpoints[-1].path)
    assert {"config.json", "model.safetensors", "tokenizer.json", RESUME_STATE_FILE} <= {
        p.name for p in last.iterdir()
    }
    assert not list(trained.glob("*.partial"))
    state = read_resume_state(last)
    assert state.step == 12 and state.tokens == 12 * 2 * 2 * 16
    assert sum(state.data_position.values()) == 12 * 2 * 2
    # realised mixture in the log tracks the 75/25 weights
    last_step = [r for r in read_run_log(trained / "metrics.jsonl") if isinstance(r, StepRecord)][
        -1
    ]
    assert abs(last_step.mixture["domain"] - 0.75) <= 0.03


def test_stop_then_resume_gives_the_uninterrupted_loss_sequence(
    tiny_family: dict[str, Path], corpus: dict[str, Path], trained: Path, tmp_path: Path
) -> None:
    """Stop after step 4 (checkpoint, exit), resume from 'latest': the 12 losses equal the
    uninterrupted run's to 1e-5 (optimizer, schedule, data position and RNG restored)."""
    out = tmp_path / "stopped"
    recipe = StopAfter(cpt_config(tiny_family["base"], corpus, out, max_steps=12))
    try:
        end = recipe.run()
    finally:
        recipe.close()
    assert (end.reason, end.step) == ("stopped", 4)
    assert [Path(c.path).name for c in list_checkpoints(out)] == ["step-00000004"]
    assert not (out / "STOP").exists()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()

    resumed = CPTRecipe(cpt_config(tiny_family["base"], corpus, out, max_steps=12, resume="latest"))
    try:
        end = resumed.run()
    finally:
        resumed.close()
    assert (end.reason, end.step) == ("completed", 12)
    expected, got = step_losses(trained), step_losses(out)
    assert sorted(got) == list(range(1, 13))
    assert max(abs(got[s] - expected[s]) for s in expected) < 1e-5
    ends = [r.reason for r in read_run_log(out / "metrics.jsonl") if isinstance(r, EndRecord)]
    assert ends == ["stopped", "completed"]
    final = load_file(out / "step-00000012" / "model.safetensors")
    reference = load_file(trained / "step-00000012" / "model.safetensors")
    assert all(torch.allclose(final[k], reference[k], atol=1e-6) for k in reference)


def test_start_from_checkpoint_resets_optimizer_and_schedule(
    trained: Path, tiny_family: dict[str, Path], corpus: dict[str, Path], tmp_path: Path
) -> None:
    """model: step-00000012 starts fresh (empty optimizer state, LR back at the warmup start);
    resume: latest restores the optimizer moments and the schedule position."""
    checkpoint = trained / "step-00000012"
    fresh = CPTRecipe(cpt_config(checkpoint, corpus, tmp_path / "fresh"))
    fresh.setup()
    try:
        assert len(fresh.optimizer.optimizer.state) == 0
        assert fresh.step == 0 and fresh.scheduler.last_epoch == 0
        warmup_start = lr_at(fresh.config.schedule, step=0, max_steps=8)
        assert math.isclose(fresh.scheduler.get_last_lr()[0], warmup_start)
        assert math.isclose(warmup_start, 3e-3 / 2)
        first = fresh.train_step()
        assert math.isclose(first.lr, warmup_start)
    finally:
        fresh.close()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()

    run = tmp_path / "copy"
    shutil.copytree(trained, run)  # setup appends to the run's log: keep the shared one clean
    base = tiny_family["base"]
    resumed = CPTRecipe(cpt_config(base, corpus, run, max_steps=20, resume="latest"))
    resumed.setup()
    try:
        assert resumed.step == 12 and resumed.scheduler.last_epoch == 12
        states = resumed.optimizer.optimizer.state
        assert len(states) > 0 and all(
            float(s["exp_avg_sq"].abs().sum()) > 0 for s in states.values()
        )
    finally:
        resumed.close()


def test_resume_refuses_a_checkpoint_without_optimizer_state(
    trained: Path, corpus: dict[str, Path], tmp_path: Path
) -> None:
    """Only the newest checkpoints keep optimizer state; resuming an older one says so."""
    old = trained / "step-00000004"
    assert not (old / TRAINER_STATE_DIR).exists()
    recipe = CPTRecipe(cpt_config(old, corpus, tmp_path / "other", resume=str(old)))
    with pytest.raises(ResumeError, match="holds no optimizer state"):
        recipe.setup()
    recipe.close()


def test_training_checkpoint_merges_and_chats(
    trained: Path, tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """A checkpoint from training passes the compatibility report with the chat model, merges
    live (linear: the exact mean), loads in the transformers engine and answers."""
    checkpoint = trained / "step-00000012"
    infos = {"cpt": inspect_model(checkpoint), "chat": inspect_model(tiny_family["chat"])}
    report = check_compatibility(infos, method="linear")
    assert report.ok, report.problems
    recipe = (
        "merge_method: linear\ndtype: float32\nmodels:\n"
        f"  - model: {checkpoint}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {tiny_family['chat']}\n    parameters: {{weight: 0.5}}\n"
    )
    merged = LiveMerger([checkpoint, tiny_family["chat"]], dtype="float32").merge(recipe)
    ours = load_file(checkpoint / "model.safetensors")
    chat = load_file(tiny_family["chat"] / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(merged[name], (ours[name] + chat[name]) / 2)

    engine = TransformersEngine(ModelSpec.from_path(checkpoint, dtype="float32", device="cpu"))
    engine.load()
    try:
        result = engine.generate("zorvex treats the", generation_settings(max_new_tokens=4))
        assert result.tokens >= 1
        score = engine.score_loglikelihood("zorvex treats the", " kelm fever")
        assert math.isfinite(score.logprob) and score.logprob < 0
    finally:
        engine.unload()


def test_checkpoints_are_registered_in_the_catalog(
    tiny_family: dict[str, Path], corpus: dict[str, Path], tmp_path: Path
) -> None:
    """With register_checkpoints on, each step folder appears in the catalog (the unset default
    is checked in tests/test_training_jobs.py)."""
    out = tmp_path / "registered"
    config = cpt_config(
        tiny_family["base"], corpus, out, max_steps=2, save_every=1, register_checkpoints=True
    )
    recipe = CPTRecipe(config)
    try:
        recipe.run()
    finally:
        recipe.close()
    paths = {m.path: m.name for m in list_models()}
    for step in (1, 2):
        assert str((out / f"step-{step:08d}").resolve()) in paths


def test_schedule_presets() -> None:
    """Re-warm then cosine to min_lr; WSD flat then linear decay; constant after warmup."""
    cosine = Schedule(preset="rewarm_cosine", lr=1.0, min_lr=0.1, warmup_steps=4)
    lrs = [lr_at(cosine, step=s, max_steps=20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False)) and lrs[-1] == pytest.approx(
        0.1
    )
    wsd = Schedule(preset="wsd", lr=1.0, min_lr=0.0, warmup_steps=2, decay_fraction=0.25)
    lrs = [lr_at(wsd, step=s, max_steps=20) for s in range(20)]
    assert lrs[2:15] == [1.0] * 13 and lrs[-1] == 0.0 and lrs[15] < 1.0
    constant = Schedule(preset="constant", lr=0.5, warmup_steps=0)
    assert {lr_at(constant, step=s, max_steps=9) for s in range(9)} == {0.5}


def test_every_shipped_config_loads() -> None:
    """Each YAML under pipelines/configs/ validates and starts with the command that runs it."""
    files = sorted(CONFIGS.glob("*.yml"))
    assert len(files) >= 4
    for path in files:
        config = load_train_config(path)
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# ") and f"pipelines.{config.kind}" in first, path
        assert path.name in first, path


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("kind: cpt\nmodel: m\noutput_dir: o\ndata: {sources: []}\n")
    with pytest.raises(TrainConfigError, match="data.sources"):
        load_train_config(bad)
    bad.write_text("kind: cpt\nmodel: m\noutput_dir: o\nlearning_rate: 1\ndata: {sources: []}\n")
    with pytest.raises(TrainConfigError):
        load_train_config(bad)
    with pytest.raises(TrainConfigError, match="kind must be"):
        load_train_config("model: m\n")


def test_lora_run_trains_only_the_adapter_and_checkpoints_the_merged_model(
    tiny_family: dict[str, Path], corpus: dict[str, Path], tmp_path: Path
) -> None:
    """A `lora:` run: the checkpoint is base + B @ A * (alpha / r) on the targeted layers only,
    every other tensor equals the base, and `adapter/` alone reproduces the checkpoint."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "down_proj"]}
    recipe = CPTRecipe(cpt_config(tiny_family["base"], corpus, tmp_path / "run", lora=lora))
    try:
        assert recipe.run().reason == "completed"
    finally:
        recipe.close()
    last = Path(list_checkpoints(tmp_path / "run")[-1].path)
    merged, base = (
        load_file(last / "model.safetensors"),
        load_file(tiny_family["base"] / "model.safetensors"),
    )
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(("q_proj" in k or "down_proj" in k) for k in changed)
    adapter = load_file(last / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    rebuilt = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_family["base"]), last / "adapter"
    ).merge_and_unload()
    for name, tensor in rebuilt.state_dict().items():
        if name in merged:
            torch.testing.assert_close(tensor, merged[name], rtol=0, atol=1e-6)


def test_lora_refuses_layers_the_model_does_not_have(
    tiny_family: dict[str, Path], corpus: dict[str, Path], tmp_path: Path
) -> None:
    lora = {"target_modules": ["c_attn"]}
    recipe = CPTRecipe(cpt_config(tiny_family["base"], corpus, tmp_path / "run", lora=lora))
    try:
        with pytest.raises(TrainConfigError, match="c_attn.*not layers of this model"):
            recipe.setup()
    finally:
        recipe.close()
