"""The `accelerate launch` command of a training run: for the job runner and for people to read.

The shipped accelerate configs live in pipelines/launch/ (cpu, single_gpu, fsdp,
deepspeed_zero3, multinode_fsdp). The job runner starts `python -m <module> *args --events F`,
so the run is started as module `accelerate.commands.launch` (what the `accelerate` script
runs) with the launch arguments; accelerate hands every argument after the training module,
`--events F` included, to the training script.

    cmd = build_launch_command("/runs/x/config.yml", kind="cpt", launch="fsdp")
    cmd.module, cmd.args      # for JobRunner.start
    cmd.preview               # 'accelerate launch --config_file .../fsdp.yaml -m pipelines.cpt ...'

Multi-node: pass machine_rank / main_process_ip (they override the config file), and run the
preview command on every node with its own rank.
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from studio.training.config import TrainConfigError

LOG = logging.getLogger(__name__)

# The folder holding `studio` and `pipelines`: the job runner starts workers there.
REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH_DIR = REPO_ROOT / "pipelines" / "launch"
LAUNCH_MODULE = "accelerate.commands.launch"
PIPELINE_MODULES = {"cpt": "pipelines.cpt", "sft": "pipelines.sft"}
DEFAULT_LAUNCH = "cpu"


@dataclass(frozen=True)
class LaunchCommand:
    """One training launch: what the runner starts and what a person would type."""

    module: str  # python -m <module>
    args: tuple[str, ...]  # its arguments (the runner appends --events FILE)
    preview: str  # the same as `accelerate launch ...`, shell-quoted

    @property
    def argv(self) -> list[str]:
        """The full command line (without the runner's --events)."""
        return [sys.executable, "-m", self.module, *self.args]


def launch_configs() -> dict[str, Path]:
    """The shipped accelerate configs by name (file stem), e.g. {"cpu": .../cpu.yaml, ...}."""
    return {p.stem: p for p in sorted(LAUNCH_DIR.glob("*.yaml"))}


def launch_config_path(launch: str | Path) -> Path:
    """A shipped config by name, or any accelerate config file by path."""
    named = launch_configs().get(str(launch))
    if named is not None:
        return named
    path = Path(launch).expanduser()
    if path.is_file():
        return path.resolve()
    raise TrainConfigError(
        f"no accelerate config '{launch}'; choose one of {', '.join(launch_configs())} "
        "or give the path of a config file written by `accelerate config`"
    )


def check_launch_config(launch: str | Path) -> Path:
    """Parse the file with accelerate's own config loader; TrainConfigError if it refuses."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = launch_config_path(launch)
    try:
        load_config_from_file(str(path))
    except (ValueError, TypeError, KeyError, OSError) as error:
        raise TrainConfigError(f"accelerate cannot read {path}: {error}") from error
    return path


def build_launch_command(
    config_path: str | Path,
    *,
    kind: str,
    launch: str | Path = DEFAULT_LAUNCH,
    num_processes: int | None = None,
    num_machines: int | None = None,
    machine_rank: int | None = None,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
) -> LaunchCommand:
    """The launch of `python -m pipelines.<kind> CONFIG` under an accelerate config.

    The keyword overrides become accelerate's own flags (they win over the config file).
    """
    if kind not in PIPELINE_MODULES:
        raise TrainConfigError(f"kind must be one of {', '.join(PIPELINE_MODULES)}; got {kind!r}")
    launch_file = check_launch_config(launch)
    flags: list[str] = ["--config_file", str(launch_file)]
    overrides = {
        "--num_processes": num_processes,
        "--num_machines": num_machines,
        "--machine_rank": machine_rank,
        "--main_process_ip": main_process_ip,
        "--main_process_port": main_process_port,
    }
    for flag, value in overrides.items():
        if value is not None:
            flags += [flag, str(value)]
    args = (*flags, "-m", PIPELINE_MODULES[kind], str(Path(config_path)))
    preview = shlex.join(["accelerate", "launch", *args])
    return LaunchCommand(module=LAUNCH_MODULE, args=args, preview=preview)
