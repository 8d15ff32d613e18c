"""Evaluation tasks from local files: multiple-choice benchmarks, perplexity corpora, chat QA.

A task file is JSONL, Parquet, CSV (or .txt for a plain corpus) in one of the column layouts the
datasets use on the Hugging Face Hub, or in the studio's own simple format. The format is
detected from the columns of the first row unless named; `studio.evaluation.task_formats`
turns each row into a `ChoiceItem` (multiple choice), a `TextItem` (perplexity) or a `QAItem`
(chat QA: a question the model answers in its chat template, scored against the reference
answer and its aliases; studio.evaluation.chat_qa) and names the missing column and the line
when a row is mis-shaped.

Prompt conventions (what `ChoiceItem.query` holds) follow lm-eval-harness's default task
templates so scores are comparable: the query never ends in whitespace, and each choice is
scored as the continuation `" " + choice` (lm-eval's `target_delimiter`). Few-shot examples are
rendered `query + " " + choices[gold]` and joined with a blank line (lm-eval's
`fewshot_delimiter`).

Few-shot rule: examples come from `Task.fewshot_items`, which is the task's own items (a file
has one split); item i is preceded by the first k items of that list that are not item i
itself, the same choice as lm-eval's `first_n` sampler when the few-shot split is the test split.

    task = load_task("/data/medmcqa_dev.parquet")          # format auto-detected
    task = load_task("mmlu_test.jsonl", subject="anatomy")  # one MMLU subject
    demo_task_paths()["domain_chat_qa"]                   # the demo zoo's evaluation sets

Tests: `.venv/bin/python -m pytest -q tests/test_evaluation_tasks.py`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

from studio.errors import StudioError

LOG = logging.getLogger(__name__)

TaskKind: TypeAlias = Literal["multiple_choice", "perplexity", "chat_qa"]

TASK_FORMATS: tuple[str, ...] = (
    "studio",
    "medmcqa",
    "medqa",
    "pubmedqa",
    "arc",
    "hellaswag",
    "mmlu",
    "text",
    "prompt_reference",
    "chat_qa",
)
FILE_SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".parquet", ".csv", ".txt")
TARGET_DELIMITER = " "  # between query and choice (lm-eval's target_delimiter)
FEWSHOT_DELIMITER = "\n\n"  # between few-shot examples (lm-eval's fewshot_delimiter)

HUB_PREFIX = "hub:"  # hub:ORG/NAME[:CONFIG][@SPLIT] reads a task from the Hub
ASSETS = Path(__file__).resolve().parents[2] / "assets"
# The demo domain's held-out sets (pipelines/demo_domain.py), which the starter zoo is scored
# on, then the small hand-written clinic tasks.
DEMO_TASK_FOLDERS = (ASSETS / "demo_domain" / "eval", ASSETS / "tasks")


class TaskError(StudioError):
    """A task file cannot be read as a task (missing file, unknown format, mis-shaped row)."""


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question.

    `query` is the context the choices continue, with no trailing whitespace; each choice is
    scored as the continuation `" " + choice`, and acc_norm divides by `len(choice)` (the
    choice's characters, without the delimiter), as lm-eval does.
    """

    id: str
    query: str
    choices: tuple[str, ...]
    gold: int

    def fewshot_text(self) -> str:
        """This item as a solved few-shot example (no trailing delimiter)."""
        return f"{self.query}{TARGET_DELIMITER}{self.choices[self.gold]}"


@dataclass(frozen=True)
class TextItem:
    """A perplexity item: `reference` scored given `prompt` ("" for a plain corpus chunk)."""

    id: str
    prompt: str
    reference: str


@dataclass(frozen=True)
class QAItem:
    """A chat-QA item: `question` asked as one user turn; the reply is right when it holds
    `answer` or one of `aliases` (normalised, as whole words: studio.evaluation.chat_qa)."""

    id: str
    question: str
    answer: str
    aliases: tuple[str, ...] = ()

    @property
    def references(self) -> tuple[str, ...]:
        """The answer and its aliases: any of them counts."""
        return (self.answer, *self.aliases)


TaskItems: TypeAlias = tuple[ChoiceItem, ...] | tuple[TextItem, ...] | tuple[QAItem, ...]

_KINDS: dict[str, TaskKind] = {
    "text": "perplexity",
    "prompt_reference": "perplexity",
    "chat_qa": "chat_qa",
}  # every other format is multiple choice


@dataclass(frozen=True)
class Task:
    """A named list of items of one kind, read from `source`."""

    name: str
    kind: TaskKind
    format: str
    source: str
    items: TaskItems
    fewshot_items: tuple[ChoiceItem, ...] = ()

    @property
    def fingerprint(self) -> str:
        """sha256 over the format and every item's content: the task's part of a cache key."""
        digest = hashlib.sha256(f"{self.kind}|{self.format}".encode())
        for group in (self.items, self.fewshot_items):
            digest.update(b"|items|")
            for item in group:
                digest.update(json.dumps(asdict(item), sort_keys=True).encode())
                digest.update(b"\n")
        return digest.hexdigest()

    def fewshot_context(self, item: ChoiceItem, num_fewshot: int) -> str:
        """`item.query` preceded by `num_fewshot` solved examples (see the module docstring)."""
        if num_fewshot <= 0:
            return item.query
        examples = [ex for ex in self.fewshot_items if ex != item][:num_fewshot]
        if len(examples) < num_fewshot:
            raise TaskError(
                f"task '{self.name}' has only {len(examples)} few-shot examples for item "
                f"{item.id} but num_fewshot is {num_fewshot}; lower num_fewshot"
            )
        shots = "".join(ex.fewshot_text() + FEWSHOT_DELIMITER for ex in examples)
        return shots + item.query


def load_task(
    path: str | Path,
    *,
    format: str = "auto",  # noqa: A002 - the contract's name for it
    name: str | None = None,
    subject: str | None = None,
) -> Task:
    """Read a task file; TaskError naming the missing column and the line if it is mis-shaped.

    `format` is one of TASK_FORMATS or "auto" (detected from the first row's columns);
    `subject` keeps only the rows of one MMLU subject (or any file with a `subject` column).
    """
    from studio.evaluation import task_formats

    if format != "auto" and format not in TASK_FORMATS:
        raise TaskError(
            f"task format '{format}' is unknown; choose auto or one of {', '.join(TASK_FORMATS)}"
        )
    if str(path).startswith(HUB_PREFIX):
        return _load_hub_task(str(path), format=format, name=name, subject=subject)
    from studio.confine import confine_path

    source = confine_path(path, what="task file").resolve()  # only under the studio's roots
    if not source.is_file():
        raise TaskError(f"task file {source} does not exist; choose a JSONL, Parquet, CSV or .txt")
    if source.suffix == ".txt":
        if format not in ("auto", "text"):
            raise TaskError(f"{source.name} is plain text; only format 'text' reads it")
        items: tuple[Any, ...] = task_formats.text_items_from_txt(source)
        chosen = "text"
    else:
        return _task_from_rows(
            list(_read_rows(source)), source, str(source), format=format, name=name, subject=subject
        )
    return _task(items, chosen, str(source), name or source.stem)


def _task_from_rows(
    rows: list[Row],
    source: Path,
    where: str,
    *,
    format: str,  # noqa: A002 - as in load_task
    name: str | None,
    subject: str | None,
) -> Task:
    from studio.evaluation import task_formats

    if subject is not None:
        rows = _only_subject(rows, subject, source)
    if not rows:
        raise TaskError(f"task {where} has no rows; add at least one item")
    chosen = task_formats.detect_format(rows[0][1], source) if format == "auto" else format
    items = task_formats.parse_rows(chosen, rows, source)
    return _task(
        items, chosen, where, name or (f"{source.stem}/{subject}" if subject else source.stem)
    )


def _task(items: tuple[Any, ...], chosen: str, source: str, label: str) -> Task:
    kind = _KINDS.get(chosen, "multiple_choice")
    LOG.info("loaded task %s: %d %s items (%s)", label, len(items), kind, chosen)
    return Task(
        name=label,
        kind=kind,
        format=chosen,
        source=source,
        items=items,
        fewshot_items=items if kind == "multiple_choice" else (),
    )


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """ "hub:ORG/NAME[:CONFIG][@SPLIT]" -> (dataset id, config or None, split; default "test")."""
    body = spec.removeprefix(HUB_PREFIX).strip()
    body, _, split = body.partition("@")
    dataset, _, config = body.partition(":")
    if not dataset or " " in dataset:
        raise TaskError(
            f"'{spec}' is not a Hub task; write hub:ORG/NAME[:CONFIG][@SPLIT], e.g. "
            "hub:openlifescienceai/medmcqa@validation"
        )
    return dataset, config or None, split or "test"


def _load_hub_task(
    spec: str,
    *,
    format: str,  # noqa: A002 - as in load_task
    name: str | None,
    subject: str | None,
) -> Task:
    """A task read from the Hugging Face Hub through `datasets` (only when the network is on)."""
    dataset, config, split = parse_hub_spec(spec)
    if os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes"):
        raise TaskError(
            f"cannot read {dataset} from the Hub: HF_HUB_OFFLINE is set; download the split as a "
            "JSONL or Parquet file and choose that file instead"
        )
    try:
        import datasets
    except ImportError as error:
        raise TaskError(
            "reading tasks from the Hub needs the `datasets` package; pip install datasets, or "
            "choose a local task file"
        ) from error
    try:
        table = datasets.load_dataset(dataset, config, split=split)
    except Exception as error:  # network, unknown dataset/config/split: all one sentence
        raise TaskError(
            f"could not read {dataset}{':' + config if config else ''} split '{split}' from the "
            f"Hub ({type(error).__name__}: {error}); check the name, or download it as a file"
        ) from error
    rows = [(f"row {i + 1}", row) for i, row in enumerate(table)]
    label = name or dataset.split("/")[-1] + (f"/{config}" if config else "")
    return _task_from_rows(rows, Path(dataset), spec, format=format, name=label, subject=subject)


def demo_task_paths() -> dict[str, Path]:
    """The studio's own demo tasks: name -> file, the demo domain's evaluation sets first."""
    return {
        path.stem: path
        for folder in DEMO_TASK_FOLDERS
        if folder.is_dir()
        for path in sorted(folder.iterdir())
        if path.suffix in FILE_SUFFIXES and path.is_file()
    }


def preselected_demo_tasks() -> list[Path]:
    """What the Score tab and `python -m studio score` use by default: the demo domain's sets
    (written with the starter zoo's vocabulary; the clinic tasks are English prose)."""
    return [p for p in demo_task_paths().values() if p.parent == DEMO_TASK_FOLDERS[0]]


# -- reading rows -----------------------------------------------------------------------------

Row: TypeAlias = tuple[str, Mapping[str, Any]]  # (where: "line 7" / "row 7", columns)


def _read_rows(source: Path) -> Iterator[Row]:
    suffix = source.suffix.lower()
    if suffix in (".jsonl", ".json"):
        yield from _jsonl_rows(source)
    elif suffix == ".parquet":
        yield from _parquet_rows(source)
    elif suffix == ".csv":
        yield from _csv_rows(source)
    else:
        raise TaskError(
            f"task file {source.name} has suffix '{source.suffix}'; use one of "
            f"{', '.join(FILE_SUFFIXES)}"
        )


def _jsonl_rows(source: Path) -> Iterator[Row]:
    text = source.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if source.suffix == ".json" and stripped.startswith("["):  # a JSON array of rows
        for index, row in enumerate(json.loads(stripped), start=1):
            yield f"row {index}", _require_object(row, f"row {index}", source)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskError(
                f"{source.name} line {number}: not valid JSON ({error.msg}); each line must be "
                "one JSON object"
            ) from error
        yield f"line {number}", _require_object(row, f"line {number}", source)


def _require_object(row: Any, where: str, source: Path) -> Mapping[str, Any]:
    if not isinstance(row, dict):
        raise TaskError(f"{source.name} {where}: expected a JSON object with named columns")
    return row


def _parquet_rows(source: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(source)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise TaskError(f"{source.name} is not a readable Parquet file: {error}") from error
    for index, row in enumerate(table.to_pylist(), start=1):
        yield f"row {index}", row


def _csv_rows(source: Path) -> Iterator[Row]:
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            # The header is line 1; a quoted field may span lines, so ask the reader.
            yield f"line {reader.line_num}", {k: v for k, v in row.items() if k is not None}


def _only_subject(rows: list[Row], subject: str, source: Path) -> list[Row]:
    if rows and "subject" not in rows[0][1]:
        raise TaskError(
            f"{source.name} has no 'subject' column, so subject='{subject}' cannot be chosen; "
            "leave subject empty"
        )
    kept = [row for row in rows if row[1].get("subject") == subject]
    if not kept:
        subjects = sorted({str(r[1].get("subject")) for r in rows})
        raise TaskError(
            f"{source.name} has no rows with subject '{subject}'; choose one of "
            f"{', '.join(subjects[:20])}"
        )
    return kept
