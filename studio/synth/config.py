"""Typed settings of a synthetic-data run, read from and written to YAML.

The one place the defaults of `python -m pipelines.synth CONFIG.yml`, the Train tab's "Make data
from documents" section and /synth_start live. The shipped prompt templates are text files under
pipelines/synth_templates/ (read here by path, never imported), so a user sees and edits the
very text the generator gets.

    config = load_synth_config("pipelines/configs/synth/demo.yml")
    config.templates.qa                      # the QA prompt, with {passage} and {count}
    text = dump_synth_config(config)         # YAML with every field

Paths: "~" and $VARS are expanded and made absolute by `resolve_synth_paths` (a job's worker runs
in another folder). The generator may be a catalog name, a model folder or a .gguf file.
Tests: tests/test_synth.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal, TypeAlias

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from studio.confine import check_path_text
from studio.errors import StudioError, first_problem

LOG = logging.getLogger(__name__)

TaskName: TypeAlias = Literal["qa", "instruction", "summary"]
EngineChoice: TypeAlias = Literal["auto", "transformers", "vllm"]

TASK_NAMES: tuple[TaskName, ...] = ("qa", "instruction", "summary")
# What the generator's reply is started with when `prefill` is on: the first label of the
# shipped templates' format. Small models (SmolLM2-135M) otherwise often answer a QA template
# with a bare numbered list of questions; started on "Q:" they keep the Q:/A: format.
REPLY_PREFIX: dict[str, str] = {"qa": "Q:", "instruction": "Instruction:", "summary": ""}
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "synth_templates"
PASSAGE = "{passage}"
COUNT = "{count}"


class SynthError(StudioError):
    """A synthetic-data run cannot run as configured (names the field and the fix)."""


def default_template(task: TaskName) -> str:
    """The shipped prompt template for `task` (pipelines/synth_templates/<task>.txt)."""
    path = TEMPLATE_DIR / f"{task}.txt"
    if not path.is_file():
        raise SynthError(f"the shipped template {path} is missing; reinstall the studio")
    return path.read_text(encoding="utf-8").strip() + "\n"


class _Frozen(BaseModel):
    # extra="forbid": a misspelt key in a YAML file must fail loudly, not be ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")


class SynthTemplates(_Frozen):
    """The prompts sent to the generator; {passage} is replaced by a chunk, {count} by a number."""

    qa: str = Field(
        default_factory=lambda: default_template("qa"),
        description="question-answer pairs grounded in a passage (Q: / A: lines)",
    )
    instruction: str = Field(
        default_factory=lambda: default_template("instruction"),
        description="one instruction and its response (Instruction: / Response:)",
    )
    summary: str = Field(
        default_factory=lambda: default_template("summary"),
        description="an abstract of a body text",
    )

    @field_validator("qa", "instruction", "summary")
    @classmethod
    def _has_passage(cls, value: str) -> str:
        if PASSAGE not in value:
            raise ValueError(
                f"every template must contain {PASSAGE} where the document chunk goes; "
                "add it to the template"
            )
        return value

    def render(self, task: TaskName, passage: str, count: int) -> str:
        """The prompt for one chunk. str.replace, not str.format: passages hold braces."""
        return getattr(self, task).replace(COUNT, str(count)).replace(PASSAGE, passage)


class FilterSettings(_Frozen):
    """Quality filters, applied in this order: empty, too_long, copies_question,
    refers_to_passage, duplicates (studio.synth.items)."""

    max_words: int = Field(
        default=300, ge=4, description="drop items whose prompt + response exceed this many words"
    )
    near_duplicate_jaccard: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="drop an item sharing at least this share of word 3-grams with a kept one",
    )
    copy_jaccard: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="drop an answer whose words overlap its question's this much (Jaccard)",
    )
    shingle_words: int = Field(default=3, ge=1, le=8, description="words per shingle")


class SynthConfig(_Frozen):
    """One run: documents in, an SFT set and two perplexity eval sets out."""

    generator: str = Field(
        description="the chat model that writes the data: catalog name, folder or .gguf file"
    )
    inputs: list[str] = Field(
        min_length=1, description="domain documents: txt, JSONL or Parquet files, or folders"
    )
    output_dir: str = Field(
        description="folder to create: sft.jsonl, qa_eval.jsonl, abstract_eval.jsonl, report.json"
    )
    held_out_inputs: list[str] = Field(
        default_factory=list,
        description="documents kept out of training: only the eval sets come from them",
    )
    held_out_fraction: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="share of `inputs` documents also held out (a seeded, reproducible choice)",
    )
    text_field: str = Field(default="text", description="JSONL/Parquet key holding the text")
    id_field: str = Field(
        default="id", description="JSONL key naming a document (else file#line is its id)"
    )
    tasks: list[TaskName] = Field(
        default_factory=lambda: list(TASK_NAMES),
        min_length=1,
        description="what to generate: qa, instruction, summary",
    )
    templates: SynthTemplates = Field(default_factory=SynthTemplates)
    qa_per_chunk: int = Field(default=3, ge=1, le=20, description="questions asked per chunk")
    chunk_tokens: int = Field(
        default=512,
        ge=16,
        description="longest chunk in generator tokens (lowered to fit the model's context)",
    )
    max_chunks: int | None = Field(
        default=None, ge=1, description="stop after this many chunks (a quick look); none = all"
    )
    max_new_tokens: int = Field(default=256, ge=8, le=8192, description="longest generator reply")
    temperature: float = Field(default=0.2, ge=0.0, le=2.0, description="0 = greedy")
    repetition_penalty: float = Field(default=1.1, gt=0.0, description="1 = off")
    prefill: bool = Field(
        default=True,
        description="start each reply with the format's first label (Q:, Instruction:); turn "
        "off if you change the templates' labels",
    )
    seed: int = Field(default=0, ge=0, description="held-out choice and sampling seed")
    engine: EngineChoice = Field(
        default="auto", description="auto: vLLM on a GPU when installed, else transformers"
    )
    filters: FilterSettings = Field(default_factory=FilterSettings)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, value: list[TaskName]) -> list[TaskName]:
        return list(dict.fromkeys(value))


def parse_synth_config(values: Any) -> SynthConfig:
    """A SynthConfig from plain values; SynthError naming the bad field otherwise."""
    if not isinstance(values, dict):
        raise SynthError("the synthetic-data config must be a YAML mapping (key: value lines)")
    try:
        return SynthConfig.model_validate(values)
    except ValidationError as error:
        raise SynthError(f"synthetic-data config: {first_problem(error)}") from error


def load_synth_config(source: str | Path) -> SynthConfig:
    """Read a config from a YAML file path (or YAML text containing a newline)."""
    text = str(source)
    if "\n" not in text:
        path = Path(check_path_text(text, what="synthetic-data config file")).expanduser()
        if not path.is_file():
            raise SynthError(f"synthetic-data config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SynthError(f"the synthetic-data config is not valid YAML: {error}") from error
    return parse_synth_config(values)


def dump_synth_config(config: SynthConfig, *, command: str | None = None) -> str:
    """YAML text with every field (templates included), optionally headed by its command."""
    body = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return f"# {command}\n{body}" if command else body


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expandvars(os.path.expanduser(path)))


def resolve_synth_paths(config: SynthConfig) -> SynthConfig:
    """The same config with absolute input/output paths; a generator path made absolute too
    (a bare catalog name stays as it is). PathNotAllowedError for text no path can be (a NUL, a
    lone surrogate, an over-long name); whether a path may be used is check_synth_config's."""
    generator = check_path_text(config.generator, what="generator")
    for field, paths in (("inputs", config.inputs), ("held_out_inputs", config.held_out_inputs)):
        for path in paths:
            check_path_text(path, what=field)
    check_path_text(config.output_dir, what="output_dir")
    if generator.startswith(("/", ".", "~")) or Path(generator).exists():
        generator = _absolute(generator)
    return config.model_copy(
        update={
            "generator": generator,
            "inputs": [_absolute(p) for p in config.inputs],
            "held_out_inputs": [_absolute(p) for p in config.held_out_inputs],
            "output_dir": _absolute(config.output_dir),
        }
    )
