"""Training through the job runner: the accelerate launch command, shipped launch configs,
start -> status -> graceful stop -> resume, and refusals before anything starts.

    .venv/bin/python -m pytest -q tests/test_training_jobs.py
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from pipelines.tiny_models import DOMAIN_TEXT, GENERAL_TEXT
from studio.catalog.registry import list_models
from studio.jobs.runner import get_runner
from studio.jobs.store import JobState
from studio.settings import load_settings
from studio.training import (
    CPTConfig,
    TrainConfigError,
    TrainStatus,
    build_launch_command,
    launch_configs,
    preview_command,
    resume_train_job,
    start_train_job,
    stop_train_job,
    train_status,
)
from studio.training.checkpoints import list_checkpoints
from studio.training.config import registers_checkpoints, resolve_paths
from studio.training.jobs import default_run_dir, resolve_train_model

TIMEOUT = 180.0


@pytest.fixture()
def cpt(tiny_family: dict[str, Path], tmp_path: Path):
    """A tiny CPT config factory writing its data next to the run."""
    data = tmp_path / "data"
    data.mkdir()
    for name, texts in (("domain", DOMAIN_TEXT), ("general", GENERAL_TEXT)):
        rows = [{"text": t} for _ in range(6) for t in texts]
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "held.txt").write_text(" ".join(DOMAIN_TEXT[:2]))

    def make(out: str = "run", **overrides) -> CPTConfig:
        values = {
            "kind": "cpt",
            "model": str(tiny_family["base"]),
            "output_dir": str(tmp_path / out),
            "micro_batch_size": 2,
            "max_steps": 6,
            "schedule": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1},
            "eval_every": 3,
            "save_every": 3,
            "data": {
                "seq_len": 16,
                "sources": [
                    {"name": "domain", "paths": [str(data / "domain.jsonl")], "weight": 0.8},
                    {"name": "general", "paths": [str(data / "general.jsonl")], "weight": 0.2},
                ],
                "eval_sets": [{"name": "domain", "paths": [str(data / "held.txt")]}],
            },
        }
        values.update(overrides)
        return CPTConfig.model_validate(values)

    return make


def wait_for(job_id: str, predicate, timeout: float = TIMEOUT) -> TrainStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = train_status(job_id)
        if predicate(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


# ---------------------------------------------------------------------- commands and configs


def test_launch_command_runs_the_pipeline_module_and_passes_events_through(tmp_path: Path) -> None:
    """The runner's `python -m accelerate.commands.launch ARGS --events F` reaches the training
    script with --events (accelerate's own parser, as `accelerate launch` uses it)."""
    config = tmp_path / "run" / "config.yml"
    command = build_launch_command(config, kind="sft", launch="fsdp", machine_rank=1)
    assert command.module == "accelerate.commands.launch"
    assert command.preview == shlex.join(["accelerate", "launch", *command.args])
    assert command.preview.startswith("accelerate launch --config_file ")
    assert command.args[-3:] == ("-m", "pipelines.sft", str(config))
    parsed = launch_command_parser().parse_args([*command.args, "--events", "/x/events.jsonl"])
    assert parsed.module and parsed.training_script == "pipelines.sft"
    assert parsed.training_script_args == [str(config), "--events", "/x/events.jsonl"]
    assert parsed.machine_rank == 1


@pytest.mark.parametrize("name", ["cpu", "single_gpu", "fsdp", "deepspeed_zero3", "multinode_fsdp"])
def test_shipped_launch_configs_parse_with_accelerate(name: str) -> None:
    """Each accelerate config loads with accelerate's own loader and passes launch validation
    (GPU runs cannot happen here; this is what can be checked without one)."""
    path = launch_configs()[name]
    assert path.read_text().startswith("# ")
    loaded = load_config_from_file(str(path))
    args = launch_command_parser().parse_args(
        ["--config_file", str(path), "-m", "pipelines.cpt", "c.yml"]
    )
    args, _, _ = _validate_launch_command(args)
    expected = {
        "cpu": "NO",
        "single_gpu": "NO",
        "fsdp": "FSDP",
        "deepspeed_zero3": "DEEPSPEED",
        "multinode_fsdp": "FSDP",
    }[name]
    assert loaded.distributed_type.value == expected
    if name == "multinode_fsdp":
        assert (loaded.num_machines, loaded.num_processes) == (2, 16)
        assert loaded.main_process_ip and loaded.main_process_port
    if expected == "FSDP":
        assert args.use_fsdp and args.fsdp_transformer_layer_cls_to_wrap == "LlamaDecoderLayer"
    if expected == "DEEPSPEED":
        assert args.use_deepspeed and args.zero_stage == 3


def test_preview_names_the_run_config(cpt) -> None:
    config = cpt()
    preview = preview_command(config, launch="deepspeed_zero3")
    assert preview.endswith(f"-m pipelines.cpt {Path(config.output_dir) / 'config.yml'}")
    assert "deepspeed_zero3.yaml" in preview
    with pytest.raises(TrainConfigError, match="no accelerate config 'tpu'"):
        preview_command(config, launch="tpu")


def test_start_refuses_bad_inputs_before_any_job(cpt, tmp_path: Path) -> None:
    """Missing data, a model that is nowhere, a used run folder, nothing to resume: refused
    with a sentence, and no job is recorded."""
    with pytest.raises(TrainConfigError, match="neither a model folder nor a catalog name"):
        start_train_job(cpt(model="no-such-model"))
    bad = cpt().model_copy(deep=True)
    broken = bad.model_dump()
    broken["data"]["sources"][0]["paths"] = [str(tmp_path / "gone.jsonl")]
    with pytest.raises(TrainConfigError, match=r"data.sources \(domain\): file .*gone.jsonl"):
        start_train_job(CPTConfig.model_validate(broken))
    with pytest.raises(TrainConfigError, match="no resumable checkpoint"):
        start_train_job(cpt(resume="latest"))
    used = tmp_path / "run" / "step-00000003"
    used.mkdir(parents=True)
    (used / "config.json").write_text("{}")
    with pytest.raises(TrainConfigError, match="already holds checkpoints"):
        start_train_job(cpt())
    assert get_runner().list() == []


def test_runs_under_studio_home_are_not_registered_twice(cpt, tiny_family) -> None:
    """register_checkpoints unset: a run in STUDIO_HOME/runs is not registered (the catalog
    lists its checkpoints as "train"), a run elsewhere is; a value given wins. A checkpoint's
    catalog name (<run>/step-NNNNNNNN) works as `model:` and stays a name in the job's config."""
    settings = load_settings()
    inside = cpt(output_dir=str(default_run_dir("demo", settings)))
    assert Path(inside.output_dir).parent == settings.runs_dir
    assert registers_checkpoints(inside, settings.runs_dir) is False
    assert registers_checkpoints(cpt(), settings.runs_dir) is True
    forced = cpt(output_dir=inside.output_dir, register_checkpoints=True)
    assert registers_checkpoints(forced, settings.runs_dir) is True
    assert registers_checkpoints(cpt(register_checkpoints=False), settings.runs_dir) is False

    checkpoint = settings.runs_dir / "demo" / "step-00000003"
    shutil.copytree(tiny_family["base"], checkpoint)
    config = resolve_paths(cpt(model="demo/step-00000003"))
    assert config.model == "demo/step-00000003"
    assert resolve_train_model(config.model, settings) == checkpoint.resolve()


# ---------------------------------------------------------------------- real jobs


@pytest.mark.slow
def test_train_job_stops_gracefully_then_resumes_to_completion(cpt) -> None:
    """Through the runner and `accelerate launch`: stop makes the trainer finish its step, save
    step-N and exit 0 (SUCCEEDED, phase 'stopped'); resume_train_job continues from step N in a
    new job and runs to completion; status has steps, losses, evals, mixture and checkpoints,
    which are in the catalog. (One test, two launches: each launch costs seconds here.)"""
    # 1) a long run, stopped once it has done two steps
    record = start_train_job(cpt(max_steps=100_000, save_every=100_000, eval_every=3))
    assert record.kind == "train"
    running = wait_for(record.id, lambda s: s.step >= 2 or s.done)
    assert running.state == JobState.RUNNING, (running.error, running.log_tail)
    assert running.preview_command.startswith("accelerate launch --config_file ")
    assert stop_train_job(record.id).phase == "stopping"
    stopped = wait_for(record.id, lambda s: s.done, timeout=60)
    assert stopped.state == JobState.SUCCEEDED, (stopped.error, stopped.log_tail)
    assert stopped.phase == "stopped"
    step = stopped.step
    assert step >= 2
    assert [(c.step, c.resumable) for c in stopped.checkpoints] == [(step, True)]
    assert not (Path(stopped.run_dir) / "STOP").exists()
    assert get_runner().status(record.id).record.output_path == stopped.checkpoints[-1].path

    # 2) resumed, with the run shortened to end 4 steps later
    again = resume_train_job(stopped.run_dir, max_steps=step + 4)
    final = wait_for(again.id, lambda s: s.done)
    assert final.state == JobState.SUCCEEDED, (final.error, final.log_tail)
    assert final.phase == "completed"
    assert (final.step, final.max_steps, final.fraction) == (step + 4, step + 4, 1.0)
    assert [p.step for p in final.history] == list(range(1, step + 5))  # none repeated
    assert all(p.loss > 0 and p.lr > 0 and p.tokens_per_s > 0 for p in final.history)
    assert final.tokens == (step + 4) * 2 * 16 and final.global_tokens_per_step == 32
    assert final.evals and set(final.eval_losses) == {"domain"}
    assert final.target_mixture == {"domain": 0.8, "general": 0.2}
    assert abs(final.mixture["domain"] - 0.8) < 0.1
    checkpoints = list_checkpoints(final.run_dir)
    assert [(c.step, c.resumable) for c in checkpoints] == [(step, False), (step + 4, True)]
    catalog = {m.path for m in list_models()}
    assert all(c.path in catalog for c in checkpoints)
