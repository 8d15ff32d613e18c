"""The shipped training configs (pipelines/configs/*.yml) made ready to run from the app.

A shipped config names its data relative to the repository and its output under `runs/`; the
Train tab and `/train_config` hand out the same config with the data paths made absolute and
the output in a fresh folder under STUDIO_HOME/runs, so a run started from any working
directory reads the right files and never overwrites an earlier run.

    text = shipped_config_yaml("tiny_cpt")          # YAML a user edits, then starts
"""

from __future__ import annotations

from pathlib import Path

import yaml

from studio.settings import StudioSettings
from studio.training.config import (
    TrainConfigError,
    dump_train_config,
    load_train_config,
    parse_train_config,
)
from studio.training.jobs import default_run_dir
from studio.training.launch import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "pipelines" / "configs"


def shipped_configs() -> dict[str, Path]:
    """Shipped training configs by name (file stem): tiny_cpt, tiny_sft, llama2_7b_cpt, ..."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yml"))}


def _absolute(path: str) -> str:
    return str(path if Path(path).is_absolute() else (REPO_ROOT / path).resolve())


def shipped_config_yaml(name: str, settings: StudioSettings | None = None) -> str:
    """The shipped config `name` with absolute data paths and a fresh run folder."""
    source = shipped_configs().get(name)
    if source is None:
        raise TrainConfigError(
            f"no shipped training config '{name}'; choose one of {', '.join(shipped_configs())}"
        )
    values = yaml.safe_load(source.read_text(encoding="utf-8"))
    data = values.get("data", {})
    for group in ("sources", "eval_sets"):
        for item in data.get(group, []):
            item["paths"] = [_absolute(p) for p in item["paths"]]
    for key in ("paths", "eval_paths"):
        if key in data:
            data[key] = [_absolute(p) for p in data[key]]
    values["output_dir"] = str(default_run_dir(Path(values["output_dir"]).name, settings))
    return dump_train_config(parse_train_config(values))


def apply_form(
    config_yaml: str,
    *,
    model: str | None = None,
    max_steps: int | None = None,
    lr: float | None = None,
    preset: str | None = None,
    seq_len: int | None = None,
) -> str:
    """The config with the Train tab's form fields applied (empty fields keep the YAML's value);
    TrainConfigError naming the field if a value is not allowed."""
    values = load_train_config(config_yaml).model_dump(mode="json")
    if model:
        values["model"] = model
    if max_steps is not None:
        values["max_steps"] = int(max_steps)
    if lr is not None:
        values["schedule"]["lr"] = float(lr)
        values["schedule"]["min_lr"] = min(values["schedule"]["min_lr"], float(lr))
    if preset:
        values["schedule"]["preset"] = preset
    if seq_len is not None:
        values["data"]["seq_len"] = int(seq_len)
    return dump_train_config(parse_train_config(values))
