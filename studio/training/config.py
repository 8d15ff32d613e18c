"""Typed settings of a training run (CPT or SFT), read from and written to YAML.

This is the one place the training defaults live: the shipped YAML files under
pipelines/configs/, the Train tab's form and the CLI all fill these models, and the pipelines
(`python -m pipelines.cpt CONFIG.yml`, `python -m pipelines.sft CONFIG.yml`) read them back.
The schema sits in the core (not in pipelines/) so the app can validate a config and preview
its command without importing the training code.

    config = load_train_config("pipelines/configs/tiny_cpt.yml")   # CPTConfig | SFTConfig
    config.global_tokens_per_step(num_processes=8)
    text = dump_train_config(config)                                # YAML with every field

Paths: "~" and $VARS are expanded; a relative path is taken against the working directory
when the config is loaded (`resolve_paths` makes them absolute before a job starts). The model
may also be a catalog name ("starter-base").
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from studio.confine import check_path_text
from studio.errors import StudioError, first_problem

LOG = logging.getLogger(__name__)
_TRAIN_CHECKPOINT_NAME = re.compile(r"[^/\\.~$][^/\\]*/step-\d{8}")

Dtype: TypeAlias = Literal["float32", "bfloat16", "float16"]
SchedulePreset: TypeAlias = Literal["rewarm_cosine", "wsd", "constant"]
DataFormat: TypeAlias = Literal["auto", "txt", "jsonl", "parquet"]
ResumeMode: TypeAlias = Literal["latest"]


class TrainConfigError(StudioError):
    """A training config is invalid or cannot be read (names the field and the fix)."""


class _Frozen(BaseModel):
    # extra="forbid": a misspelt key in a YAML file must fail loudly, not be ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")


class TextSource(_Frozen):
    """One source of training text (a domain corpus, general replay text...)."""

    name: str = Field(description="a short label shown in the realised-mixture table")
    paths: list[str] = Field(min_length=1, description="txt, JSONL or Parquet files")
    format: DataFormat = Field(default="auto", description="auto: from each file's extension")
    text_field: str = Field(default="text", description="the column/key holding the text")
    weight: float = Field(default=1.0, gt=0, description="share of training tokens (normalised)")


class EvalSet(_Frozen):
    """Held-out text whose loss is measured every `eval_every` steps (domain AND general)."""

    name: str = Field(description="label in the logs and charts: domain, general, ...")
    paths: list[str] = Field(min_length=1, description="txt, JSONL or Parquet files")
    format: DataFormat = "auto"
    text_field: str = "text"


class CPTData(_Frozen):
    """Text sources, their mixture weights, packing and held-out sets."""

    sources: list[TextSource] = Field(min_length=1, description="weighted training sources")
    eval_sets: list[EvalSet] = Field(default_factory=list, description="held-out text")
    seq_len: int = Field(default=4096, ge=8, description="tokens per packed block")
    eval_blocks: int = Field(default=16, ge=1, description="at most this many blocks per eval set")

    @model_validator(mode="after")
    def _unique_names(self) -> CPTData:
        for what, names in (
            ("data.sources", [s.name for s in self.sources]),
            ("data.eval_sets", [e.name for e in self.eval_sets]),
        ):
            if len(set(names)) != len(names):
                raise ValueError(f"{what}: names must be unique; got {names}")
        return self

    def weights(self) -> dict[str, float]:
        """Each source's target share of training tokens (weights normalised to sum to 1)."""
        total = sum(s.weight for s in self.sources)
        return {s.name: s.weight / total for s in self.sources}


class SFTData(_Frozen):
    """Chat-format data: JSONL lines {"messages": [{"role", "content"}, ...]}."""

    paths: list[str] = Field(min_length=1, description="messages JSONL files")
    eval_paths: list[str] = Field(default_factory=list, description="held-out messages JSONL")
    messages_field: str = Field(default="messages", description="the key holding the turns")
    chat_template: str | None = Field(
        default=None, description="None: the model's own template; or a name (chatml) or jinja"
    )
    seq_len: int = Field(default=4096, ge=8, description="longest example / packed block")
    packing: bool = Field(default=False, description="pack several examples per block")
    eval_blocks: int = Field(default=16, ge=1)


class Schedule(_Frozen):
    """Learning-rate schedule. Defaults follow the reference CPT study (lr 1.5e-5)."""

    preset: SchedulePreset = Field(
        default="rewarm_cosine",
        description=(
            "rewarm_cosine: linear re-warm then cosine re-decay (Gupta et al. 2023); "
            "wsd: warmup-stable-decay; constant: warmup then flat"
        ),
    )
    lr: float = Field(default=1.5e-5, gt=0, description="peak learning rate")
    min_lr: float = Field(default=1.5e-6, ge=0, description="floor the decay ends at")
    warmup_steps: int = Field(default=100, ge=0, description="linear re-warm from 0 to lr")
    decay_fraction: float = Field(
        default=0.2, gt=0, le=1, description="wsd only: share of steps spent decaying at the end"
    )

    @model_validator(mode="after")
    def _floor_below_peak(self) -> Schedule:
        if self.min_lr > self.lr:
            raise ValueError(f"schedule.min_lr ({self.min_lr}) must not exceed schedule.lr")
        return self


class Optim(_Frozen):
    """AdamW settings."""

    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float | None = Field(default=1.0, description="max grad norm; None: no clipping")


LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(_Frozen):
    """Train a low-rank adapter (peft LoRA) instead of every weight.

    Checkpoints then hold the merged weights (a normal model the studio can chat with, score
    and merge) plus the adapter alone in `adapter/`, small enough to ship.
    """

    rank: int = Field(default=16, ge=1, description="LoRA rank r")
    alpha: float = Field(default=32.0, gt=0, description="scale = alpha / rank")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: list(LINEAR_MODULES),
        min_length=1,
        description="names of the linear layers that get an adapter (Llama naming)",
    )


class TrainRunConfig(_Frozen):
    """What every training run has, whatever its data."""

    model: str = Field(
        description=(
            "starting weights: a model folder or catalog name; a step-NNNNNNNN checkpoint here "
            "means 'start from checkpoint' (fresh optimizer and re-warmed schedule)"
        )
    )
    output_dir: str = Field(description="run folder: checkpoints step-NNNNNNNN/, metrics.jsonl")
    resume: str | None = Field(
        default=None,
        description=(
            "'latest' or a checkpoint folder: restore optimizer, schedule, RNG, step and data "
            "position and continue the same run"
        ),
    )
    seed: int = 0
    dtype: Dtype = Field(default="float32", description="weights' dtype while training")
    micro_batch_size: int = Field(default=1, ge=1, description="blocks per process per forward")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    max_steps: int = Field(default=1000, ge=1, description="optimizer steps in the whole run")
    schedule: Schedule = Schedule()
    optim: Optim = Optim()
    log_every: int = Field(default=1, ge=1, description="steps between metric lines")
    eval_every: int = Field(default=100, ge=1, description="steps between eval-loss measurements")
    save_every: int = Field(default=500, ge=1, description="steps between checkpoints")
    keep_trainer_state: int = Field(
        default=1,
        ge=1,
        description="newest checkpoints that keep their optimizer state (older: weights only)",
    )
    lora: LoraSettings | None = Field(
        default=None, description="train a LoRA adapter instead of every weight (one process)"
    )
    register_checkpoints: bool | None = Field(
        default=None,
        description=(
            "add each checkpoint to the catalog as a local model; empty: only when output_dir "
            "is outside STUDIO_HOME/runs (the catalog lists runs there itself, as 'train')"
        ),
    )

    def global_tokens_per_step(self, num_processes: int = 1) -> int:
        """Tokens per optimizer step over all processes (the batch size people compare)."""
        return self.seq_len * self.micro_batch_size * self.grad_accum * num_processes

    @property
    def seq_len(self) -> int:
        return self.data.seq_len  # type: ignore[attr-defined]

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainRunConfig:
        if self.schedule.warmup_steps > self.max_steps:
            raise ValueError(
                f"schedule.warmup_steps ({self.schedule.warmup_steps}) exceeds max_steps "
                f"({self.max_steps}); lower the warmup or train longer"
            )
        return self


class CPTConfig(TrainRunConfig):
    """Continual pre-training on packed, mixed text."""

    kind: Literal["cpt"] = "cpt"
    data: CPTData


class SFTConfig(TrainRunConfig):
    """Instruction tuning on chat turns, loss on the assistant's tokens only."""

    kind: Literal["sft"] = "sft"
    data: SFTData


TrainConfig = Annotated[CPTConfig | SFTConfig, Field(discriminator="kind")]
_TRAIN_CONFIG: TypeAdapter[CPTConfig | SFTConfig] = TypeAdapter(TrainConfig)


def parse_train_config(values: dict[str, Any]) -> CPTConfig | SFTConfig:
    """A config from a mapping; TrainConfigError naming the first bad field."""
    if not isinstance(values, dict):
        raise TrainConfigError("a training config must be a YAML mapping (key: value lines)")
    if values.get("kind") not in ("cpt", "sft"):
        raise TrainConfigError(
            f"kind must be 'cpt' or 'sft' (got {values.get('kind')!r}); add `kind: cpt` at the top"
        )
    try:
        return _TRAIN_CONFIG.validate_python(values)
    except ValidationError as error:
        raise TrainConfigError(f"training config: {first_problem(error)}") from error


def load_train_config(source: str | Path) -> CPTConfig | SFTConfig:
    """Read a config from a YAML file path (or YAML text containing a newline)."""
    text = str(source)
    if "\n" not in text:
        path = Path(check_path_text(text, what="training config file")).expanduser()
        if not path.is_file():
            raise TrainConfigError(f"training config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TrainConfigError(f"the training config is not valid YAML: {error}") from error
    return parse_train_config(values)


def dump_train_config(config: CPTConfig | SFTConfig, *, command: str | None = None) -> str:
    """YAML text with every field (defaults included), optionally headed by its run command."""
    body = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    return f"# {command}\n{body}" if command else body


def expand_path(path: str) -> str:
    """ "~" and $VARS expanded, made absolute against the working directory."""
    return os.path.abspath(os.path.expandvars(os.path.expanduser(path)))


def resolve_paths(config: CPTConfig | SFTConfig) -> CPTConfig | SFTConfig:
    """The same config with every file path absolute (the model may stay a catalog name).

    A job's worker runs in another working directory, so the config it gets must not depend
    on where the app was started.
    """
    values = config.model_dump(mode="json")
    values["output_dir"] = expand_path(values["output_dir"])
    if values["model"] and _looks_like_path(values["model"]):
        values["model"] = expand_path(values["model"])
    if values.get("resume") not in (None, "latest"):
        values["resume"] = expand_path(values["resume"])
    data = values["data"]
    if config.kind == "cpt":
        for group in ("sources", "eval_sets"):
            for item in data[group]:
                item["paths"] = [expand_path(p) for p in item["paths"]]
    else:
        data["paths"] = [expand_path(p) for p in data["paths"]]
        data["eval_paths"] = [expand_path(p) for p in data["eval_paths"]]
    return parse_train_config(values)


def registers_checkpoints(config: TrainRunConfig, runs_dir: Path) -> bool:
    """Whether a run adds its checkpoints to the catalog by path (`register_checkpoints`).

    Unset: only a run outside `runs_dir`; the catalog lists `runs_dir/<run>/step-*` itself
    (source "train"), so registering those too would list them twice.
    """
    if config.register_checkpoints is not None:
        return config.register_checkpoints
    return Path(config.output_dir).resolve().parent != runs_dir.resolve()


def _looks_like_path(ref: str) -> bool:
    expanded = os.path.expandvars(os.path.expanduser(ref))
    if Path(expanded).exists():
        return True
    # "<run>/step-NNNNNNNN" is the catalog's name for a checkpoint under STUDIO_HOME/runs.
    if _TRAIN_CHECKPOINT_NAME.fullmatch(ref):
        return False
    return os.sep in expanded or expanded.startswith(".")
