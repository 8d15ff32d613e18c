"""Column layouts of task files: detect the layout of a row, turn rows into task items.

Each multiple-choice layout is the one its dataset uses on the Hugging Face Hub, and its query
follows lm-eval-harness's default template for that task (so a model scores the same prompt):

- studio:    question, options (list, or {"A": ...}), answer (0-based index or letter)
             -> "Question: {question}\nAnswer:" + " {option}"
- medmcqa:   question, opa, opb, opc, opd, cop (0-based, 0 = opa, as the Hub's ClassLabel
             stores it; a letter a-d also works) -> lettered options, choices A-D
- medqa:     question, options {"A": ...}, answer_idx (the USMLE JSON layout), or
             sent1, ending0..ending3, label (GBaker/MedQA-USMLE-4-options-hf) -> choices A-D
- pubmedqa:  question, context ({"contexts": [...]}, list or text; also contexts / CONTEXTS),
             final_decision yes|no|maybe -> "Abstract: ...\nQuestion: ...\nAnswer:"
- arc:       question, choices {"text": [...], "label": [...]}, answerKey
- hellaswag: ctx (or ctx_a + ctx_b), endings, label (activity_label optional)
- mmlu:      question, choices, answer (index or letter); subject optional -> choices A-D
- text:      text (JSONL/Parquet/CSV), or a .txt file split into paragraphs at blank lines
- prompt_reference: prompt, reference (the reference's perplexity given the prompt)
- chat_qa:   question, answer (text), aliases (optional list; in CSV JSON text, or several
             answers split by "|") -> the question asked in the model's chat template, the
             reply scored against the answer (studio.evaluation.chat_qa). Detected from
             question + answer when the row has no options / choices column.

Tests: `.venv/bin/python -m pytest -q tests/test_evaluation_tasks.py`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from studio.evaluation.tasks import ChoiceItem, QAItem, TaskError, TaskItems, TextItem

LETTERS = string.ascii_uppercase

# Columns each layout needs; the first alternative of a group is the one named in messages.
REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "studio": (("question",), ("options",), ("answer",)),
    "medmcqa": (("question",), ("opa",), ("opb",), ("opc",), ("opd",), ("cop",)),
    "medqa": (("question", "sent1"), ("options", "ending0"), ("answer_idx", "label")),
    "pubmedqa": (
        ("question", "QUESTION"),
        ("context", "contexts", "CONTEXTS"),
        ("final_decision",),
    ),
    "arc": (("question",), ("choices",), ("answerKey",)),
    "hellaswag": (("ctx", "ctx_a"), ("endings",), ("label",)),
    "mmlu": (("question",), ("choices",), ("answer",)),
    "text": (("text",),),
    "prompt_reference": (("prompt",), ("reference",)),
    "chat_qa": (("question",), ("answer",)),
}


def detect_format(row: Mapping[str, Any], source: Path) -> str:
    """The layout of a row, from its column names."""
    cols = set(row)
    rules: list[tuple[str, set[str]]] = [
        ("medmcqa", {"opa", "cop"}),
        ("medqa", {"sent1", "ending0"}),
        ("medqa", {"options", "answer_idx"}),
        ("pubmedqa", {"final_decision"}),
        ("arc", {"answerKey", "choices"}),
        ("hellaswag", {"endings"}),
        ("mmlu", {"question", "choices"}),
        ("studio", {"question", "options"}),
        # After every layout with options/choices: question + answer alone is a chat question.
        ("chat_qa", {"question", "answer"}),
        ("prompt_reference", {"prompt", "reference"}),
        ("text", {"text"}),
    ]
    for name, needed in rules:
        if needed <= cols:
            return name
    shown = ", ".join(sorted(cols)[:12]) or "none"
    raise TaskError(
        f"cannot tell the format of {source.name} from its columns ({shown}); pass format= one "
        "of studio, medmcqa, medqa, pubmedqa, arc, hellaswag, mmlu, text, prompt_reference, "
        "chat_qa, or write the studio format: question, options, answer (or question, answer "
        "for chat QA)"
    )


def parse_rows(fmt: str, rows: Sequence[tuple[str, Mapping[str, Any]]], source: Path) -> TaskItems:
    """Items from (where, row) pairs; TaskError naming the file, line and missing column."""
    builder = _BUILDERS[fmt]
    items = []
    for index, (where, row) in enumerate(rows):
        _check_columns(fmt, row, where, source)
        item_id = str(row.get("id", index)) if row.get("id") not in (None, "") else str(index)
        try:
            items.append(builder(item_id, row))
        except _RowProblem as problem:
            raise TaskError(f"{source.name} {where}: {problem}") from None
    return tuple(items)  # type: ignore[return-value]


def text_items_from_txt(source: Path) -> tuple[TextItem, ...]:
    """A plain-text corpus: one item per paragraph (paragraphs are split at blank lines)."""
    text = source.read_text(encoding="utf-8")
    chunks = [c.strip() for c in re.split(r"\n\s*\n", text)]
    items = tuple(
        TextItem(id=str(i), prompt="", reference=c) for i, c in enumerate(c for c in chunks if c)
    )
    if not items:
        raise TaskError(f"{source.name} holds no text; add a paragraph to score")
    return items


# -- checks -----------------------------------------------------------------------------------


class _RowProblem(Exception):
    """A bad value in one row; parse_rows adds the file and line."""


def _check_columns(fmt: str, row: Mapping[str, Any], where: str, source: Path) -> None:
    for group in REQUIRED[fmt]:
        if not any(_present(row.get(col)) for col in group):
            needs = ", ".join(g[0] for g in REQUIRED[fmt])
            raise TaskError(
                f"{source.name} {where}: missing column '{group[0]}' ({fmt} needs {needs})"
            )


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _first(row: Mapping[str, Any], *columns: str) -> Any:
    for col in columns:
        if _present(row.get(col)):
            return row[col]
    return None


def _as_list(value: Any, column: str) -> list[Any]:
    """A list column; CSV cells hold it as JSON text ('["a", "b"]')."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _RowProblem(f"column '{column}' must be a list (in CSV: JSON text)") from None
    if isinstance(value, Mapping):
        return [value[k] for k in sorted(value)]
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise _RowProblem(f"column '{column}' must be a list; got {type(value).__name__}")
    return list(value)


def _as_mapping(value: Any, column: str) -> Mapping[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _RowProblem(f"column '{column}' must be an object (in CSV: JSON text)") from None
    if not isinstance(value, Mapping):
        raise _RowProblem(f"column '{column}' must be an object; got {type(value).__name__}")
    return value


def _gold(value: Any, n: int, column: str) -> int:
    """An answer given as a 0-based index (int or digits) or a letter (A = first option)."""
    if isinstance(value, bool):
        raise _RowProblem(f"column '{column}' must be an option index or letter; got {value}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            value = int(text)
        elif len(text) == 1 and text.upper() in LETTERS:
            value = LETTERS.index(text.upper())
        else:
            raise _RowProblem(
                f"column '{column}' is {value!r}; give the 0-based option index or its letter"
            )
    if not isinstance(value, int) or not 0 <= value < n:
        raise _RowProblem(
            f"column '{column}' is {value!r} but there are {n} options (0-{n - 1}, or "
            f"A-{LETTERS[n - 1]})"
        )
    return value


def _texts(values: Sequence[Any], column: str) -> tuple[str, ...]:
    out = tuple(str(v).strip() for v in values)
    if len(out) < 2:
        raise _RowProblem(f"column '{column}' needs at least 2 options; got {len(out)}")
    if any(not v for v in out):
        raise _RowProblem(f"column '{column}' has an empty option; every option needs text")
    return out


def _lettered(question: str, options: Sequence[str]) -> str:
    lines = "".join(f"{LETTERS[i]}. {option}\n" for i, option in enumerate(options))
    return f"{question}\n{lines}Answer:"


# -- one builder per layout -------------------------------------------------------------------


def _studio(item_id: str, row: Mapping[str, Any]) -> ChoiceItem:
    raw = row["options"]
    options = _texts(_as_list(raw, "options"), "options")
    answer = row["answer"]
    if isinstance(answer, str) and answer.strip() in options and len(answer.strip()) > 1:
        gold = options.index(answer.strip())  # the answer given as the option's text
    else:
        gold = _gold(answer, len(options), "answer")
    query = f"Question: {str(row['question']).strip()}\nAnswer:"
    return ChoiceItem(item_id, query, options, gold)


def _medmcqa(item_id: str, row: Mapping[str, Any]) -> ChoiceItem:
    options = _texts([row[c] for c in ("opa", "opb", "opc", "opd")], "opa..opd")
    query = _lettered(f"Question: {str(row['question']).strip()}\nChoices:", options)
    return ChoiceItem(item_id, query, ("A", "B", "C", "D"), _gold(row["cop"], 4, "cop"))


def _medqa(item_id: str, row: Mapping[str, Any]) -> ChoiceItem:
    if _present(row.get("sent1")):
        endings = [row.get(f"ending{i}") for i in range(10) if _present(row.get(f"ending{i}"))]
        options = _texts(endings, "ending0..")
        gold = _gold(row.get("label"), len(options), "label")
        question = str(row["sent1"]).strip()
    else:
        mapping = _as_mapping(row["options"], "options")
        options = _texts([mapping[k] for k in sorted(mapping)], "options")
        gold = _gold(row.get("answer_idx"), len(options), "answer_idx")
        question = str(row["question"]).strip()
    query = _lettered(f"Question: {question}", options)
    return ChoiceItem(item_id, query, tuple(LETTERS[: len(options)]), gold)


_PUBMEDQA_CHOICES = ("yes", "no", "maybe")


def _pubmedqa(item_id: str, row: Mapping[str, Any]) -> ChoiceItem:
    context = _first(row, "context", "contexts", "CONTEXTS")
    if isinstance(context, str) and context.lstrip().startswith(("{", "[")):
        context = json.loads(context)
    if isinstance(context, Mapping):  # the Hub's pubmed_qa: {"contexts": [...], "labels": ...}
        context = context.get("contexts", context.get("CONTEXTS", []))
    abstract = context if isinstance(context, str) else "\n".join(str(c) for c in context)
    decision = str(row["final_decision"]).strip().lower()
    if decision not in _PUBMEDQA_CHOICES:
        raise _RowProblem(f"column 'final_decision' is {decision!r}; use yes, no or maybe")
    question = str(_first(row, "question", "QUESTION")).strip()
    query = f"Abstract: {abstract.strip()}\nQuestion: {question}\nAnswer:"
    return ChoiceItem(item_id, query, _PUBMEDQA_CHOICES, _PUBMEDQA_CHOICES.index(decision))


def _arc(item_id: str, row: Mapping[str, Any]) -> ChoiceItem:
    choices = _as_mapping(row["choices"], "choices")
    if "text" not in choices or "label" not in choices:
        raise _RowProblem("column 'choices' must hold 'text' and 'label' lists")
    texts = _texts(_as_list(choices["text"], "choices.text"), "choices.text")
    labels = [str(x) for x in _as_list(choices["label"], "choices.label")]
    key = str(row["answerKey"]).strip()
    if key not in labels:
        raise _RowProblem(f"column 'answerKey' is {key!r}, not one of the labels {labels}")
    query = f"Question: {str(row['question']).strip()}\nAnswer:"
    return ChoiceItem(item_id, query, texts, labels.index(key))


def _hellaswag_clean(text: str) -> str:
    # lm-eval's hellaswag preprocess: WikiHow "[title]" markers become sentence breaks.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(item_id: str, row: Mapping[str, Any]) -> ChoiceItem:
    if _present(row.get("ctx_a")):
        ctx = f"{row['ctx_a']} {str(row.get('ctx_b') or '').capitalize()}"
    else:
        ctx = str(row["ctx"])
    label = row.get("activity_label")
    query = _hellaswag_clean(f"{label}: {ctx}" if _present(label) else ctx)
    endings = _texts(
        [_hellaswag_clean(str(e)) for e in _as_list(row["endings"], "endings")], "endings"
    )
    return ChoiceItem(item_id, query.rstrip(), endings, _gold(row["label"], len(endings), "label"))


def _mmlu(item_id: str, row: Mapping[str, Any]) -> ChoiceItem:
    options = _texts(_as_list(row["choices"], "choices"), "choices")
    query = _lettered(str(row["question"]).strip(), options)
    letters = tuple(LETTERS[: len(options)])
    return ChoiceItem(item_id, query, letters, _gold(row["answer"], len(options), "answer"))


def _text(item_id: str, row: Mapping[str, Any]) -> TextItem:
    return TextItem(item_id, "", str(row["text"]))


def _prompt_reference(item_id: str, row: Mapping[str, Any]) -> TextItem:
    return TextItem(item_id, str(row["prompt"]), str(row["reference"]))


def _chat_qa(item_id: str, row: Mapping[str, Any]) -> QAItem:
    from studio.evaluation.chat_qa import normalize_answer

    question = str(row["question"]).strip()
    answer = str(row["answer"]).strip()
    raw = row.get("aliases")
    aliases: list[Any] = []
    if _present(raw):
        # CSV: JSON text ('["a", "b"]') or answers split by "|"; JSON/Parquet: a list.
        if isinstance(raw, str) and not raw.lstrip().startswith("["):
            aliases = raw.split("|")
        else:
            aliases = _as_list(raw, "aliases")
    texts = tuple(str(a).strip() for a in aliases)
    for column, value in (("question", question), ("answer", answer)):
        if not value:
            raise _RowProblem(f"column '{column}' is empty; give it text")
    for column, value in (("answer", answer), *(("aliases", a) for a in texts)):
        if not normalize_answer(value):
            raise _RowProblem(
                f"column '{column}' holds {value!r}, which has no letters or digits to look for "
                "in a reply; give a word or a number"
            )
    return QAItem(item_id, question, answer, tuple(dict.fromkeys(t for t in texts if t != answer)))


_BUILDERS: dict[str, Callable[[str, Mapping[str, Any]], ChoiceItem | TextItem | QAItem]] = {
    "studio": _studio,
    "medmcqa": _medmcqa,
    "medqa": _medqa,
    "pubmedqa": _pubmedqa,
    "arc": _arc,
    "hellaswag": _hellaswag,
    "mmlu": _mmlu,
    "text": _text,
    "prompt_reference": _prompt_reference,
    "chat_qa": _chat_qa,
}
