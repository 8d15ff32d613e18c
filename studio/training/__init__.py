"""Training runs (CPT, SFT) for the Train tab, the Gradio API and the CLI; no gradio here.

The pipelines themselves live in `pipelines.cpt` / `pipelines.sft` (the core never imports
them: a run is a subprocess started as `accelerate launch -m pipelines.<kind> CONFIG.yml`).
This package holds what the app needs around them: the typed configs, the launch command,
the job functions and the readers of a run's folder.

    from studio.training import load_train_config, start_train_job, train_status, stop_train_job
"""

from __future__ import annotations

from studio.training.checkpoints import CheckpointInfo, ResumeState, list_checkpoints
from studio.training.config import (
    CPTConfig,
    SFTConfig,
    TrainConfigError,
    dump_train_config,
    load_train_config,
    parse_train_config,
)
from studio.training.jobs import (
    TrainStatus,
    default_run_dir,
    preview_command,
    resume_train_job,
    runs_dir,
    start_train_job,
    stop_train_job,
    train_status,
)
from studio.training.launch import LaunchCommand, build_launch_command, launch_configs

__all__ = [
    "CPTConfig",
    "CheckpointInfo",
    "LaunchCommand",
    "ResumeState",
    "SFTConfig",
    "TrainConfigError",
    "TrainStatus",
    "build_launch_command",
    "default_run_dir",
    "dump_train_config",
    "launch_configs",
    "list_checkpoints",
    "load_train_config",
    "parse_train_config",
    "preview_command",
    "resume_train_job",
    "runs_dir",
    "start_train_job",
    "stop_train_job",
    "train_status",
]
