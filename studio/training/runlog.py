"""The training run's metrics log: one JSON object per line in `<run>/metrics.jsonl`.

The trainer (pipelines.cpt / pipelines.sft, main process only) appends; the Train tab, the CLI
and `train_status` read. Lines are flushed as written, so a reader sees every finished step
even while the run goes on; a torn last line is left for the next read.

    log = RunLogWriter(run_dir / "metrics.jsonl")
    log.write(StepRecord(step=3, loss=2.1, lr=1e-5, tokens=3072, tokens_per_s=410.0))
    records = read_run_log(run_dir / "metrics.jsonl")

Record types: start (the run's shape), data (sources, tokens, dropped remainder), step (loss,
lr, tokens, tokens/s, realised mixture), eval (held-out losses by set: domain AND general),
checkpoint (a step-NNNNNNNN folder written) and end (completed or stopped).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Literal, TextIO

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

LOG = logging.getLogger(__name__)


class _Record(BaseModel, frozen=True):
    time: float = Field(default_factory=time.time, description="seconds since the epoch")


class StartRecord(_Record, frozen=True):
    type: Literal["start"] = "start"
    kind: str = Field(description="cpt or sft")
    step: int = Field(description="the step the run starts at (0, or the resumed step)")
    max_steps: int
    global_tokens_per_step: int
    num_processes: int
    started_from: str = Field(description="the model folder the weights came from")
    resumed_from: str | None = Field(default=None, description="checkpoint resumed, if any")


class SourceStats(BaseModel, frozen=True):
    name: str
    documents: int
    tokens: int = Field(description="tokens including one EOS per document")
    blocks: int = Field(description="full blocks packed")
    dropped_tokens: int = Field(description="the remainder shorter than one block")
    target_share: float


class DataRecord(_Record, frozen=True):
    type: Literal["data"] = "data"
    seq_len: int
    sources: list[SourceStats]
    eval_blocks: dict[str, int] = Field(default_factory=dict)


class StepRecord(_Record, frozen=True):
    type: Literal["step"] = "step"
    step: int
    loss: float
    lr: float
    tokens: int = Field(description="training tokens seen so far, all processes")
    tokens_per_s: float
    grad_norm: float | None = None
    mixture: dict[str, float] = Field(default_factory=dict, description="realised token shares")


class EvalRecord(_Record, frozen=True):
    type: Literal["eval"] = "eval"
    step: int
    losses: dict[str, float] = Field(description="held-out loss per eval set")


class CheckpointRecord(_Record, frozen=True):
    type: Literal["checkpoint"] = "checkpoint"
    step: int
    path: str
    resumable: bool


class EndRecord(_Record, frozen=True):
    type: Literal["end"] = "end"
    step: int
    reason: Literal["completed", "stopped"]
    checkpoint: str | None = None


RunRecord = Annotated[
    StartRecord | DataRecord | StepRecord | EvalRecord | CheckpointRecord | EndRecord,
    Field(discriminator="type"),
]
_RECORD: TypeAdapter[RunRecord] = TypeAdapter(RunRecord)


class RunLogWriter:
    """Appends records to metrics.jsonl, one flushed line each."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, record: BaseModel) -> None:
        self._file.write(record.model_dump_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RunLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_run_log(path: str | Path) -> list[RunRecord]:
    """Every complete record in the file (a missing file reads as none; bad lines skipped)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n")
    records: list[RunRecord] = []
    for line in data[: end + 1].splitlines():
        if not line.strip():
            continue
        try:
            records.append(_RECORD.validate_python(json.loads(line)))
        except (ValueError, ValidationError) as error:
            LOG.warning("skipping a malformed metrics line in %s: %s", path, error)
    return records
