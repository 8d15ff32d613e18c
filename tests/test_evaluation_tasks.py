"""Task files: every Hub column layout, JSONL / Parquet / CSV, format detection, clear errors.

Properties: each layout becomes the query lm-eval's default template builds and the right gold
index; the same rows in JSONL, Parquet and CSV give the same items and fingerprint; a
mis-shaped row is named by file, line and missing column; the demo tasks all load.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from studio.evaluation.tasks import (
    ChoiceItem,
    TaskError,
    TextItem,
    demo_task_paths,
    load_task,
    preselected_demo_tasks,
)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


LAYOUTS: list[tuple[str, dict[str, Any], str, tuple[str, ...], int]] = [
    (
        "studio",
        {"question": "What is 2 + 2?", "options": ["3", "4", "5"], "answer": "B"},
        "Question: What is 2 + 2?\nAnswer:",
        ("3", "4", "5"),
        1,
    ),
    (
        "medmcqa",
        {"question": "Which bone?", "opa": "a1", "opb": "b1", "opc": "c1", "opd": "d1", "cop": 2},
        "Question: Which bone?\nChoices:\nA. a1\nB. b1\nC. c1\nD. d1\nAnswer:",
        ("A", "B", "C", "D"),
        2,
    ),
    (
        "medqa",
        {
            "question": "Next step?",
            "options": {"A": "x", "B": "y", "C": "z", "D": "w"},
            "answer_idx": "D",
            "answer": "w",
        },
        "Question: Next step?\nA. x\nB. y\nC. z\nD. w\nAnswer:",
        ("A", "B", "C", "D"),
        3,
    ),
    (
        "medqa",
        {
            "sent1": "Next step?",
            "ending0": "x",
            "ending1": "y",
            "ending2": "z",
            "ending3": "w",
            "label": 0,
        },
        "Question: Next step?\nA. x\nB. y\nC. z\nD. w\nAnswer:",
        ("A", "B", "C", "D"),
        0,
    ),
    (
        "pubmedqa",
        {
            "question": "Does it work?",
            "context": {"contexts": ["First.", "Second."]},
            "final_decision": "maybe",
        },
        "Abstract: First.\nSecond.\nQuestion: Does it work?\nAnswer:",
        ("yes", "no", "maybe"),
        2,
    ),
    (
        "arc",
        {
            "question": "Which is a metal?",
            "answerKey": "3",
            "choices": {"text": ["wood", "iron", "glass"], "label": ["1", "3", "4"]},
        },
        "Question: Which is a metal?\nAnswer:",
        ("wood", "iron", "glass"),
        1,
    ),
    (
        "hellaswag",
        {
            "activity_label": "Cooking",
            "ctx": "A man cracks an egg [title] He",
            "label": "1",
            "endings": ["sings.", "stirs it.", "sleeps.", "runs."],
        },
        "Cooking: A man cracks an egg. He",
        ("sings.", "stirs it.", "sleeps.", "runs."),
        1,
    ),
    (
        "mmlu",
        {
            "question": "Largest organ?",
            "subject": "anatomy",
            "choices": ["skin", "liver"],
            "answer": 0,
        },
        "Largest organ?\nA. skin\nB. liver\nAnswer:",
        ("A", "B"),
        0,
    ),
]


@pytest.mark.parametrize(("fmt", "row", "query", "choices", "gold"), LAYOUTS)
def test_each_hub_layout_is_detected_and_builds_lm_eval_query(
    tmp_path: Path, fmt: str, row: dict[str, Any], query: str, choices: tuple[str, ...], gold: int
) -> None:
    """Auto-detection picks the layout; the item is the query, choices and gold lm-eval uses."""
    task = load_task(write_jsonl(tmp_path / "t.jsonl", [row, row]))
    assert task.format == fmt
    assert task.kind == "multiple_choice"
    assert task.items[0] == ChoiceItem(task.items[0].id, query, choices, gold)
    assert not task.items[0].query.endswith((" ", "\n"))


def test_jsonl_parquet_and_csv_give_the_same_task(tmp_path: Path) -> None:
    """Same rows in three containers: same items, same fingerprint (the cache key part)."""
    rows = [
        {"question": f"q{i}?", "options": ["red", "green", "blue"], "answer": i % 3}
        for i in range(5)
    ]
    jsonl = write_jsonl(tmp_path / "t.jsonl", rows)
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    csv_path = tmp_path / "t.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "options", "answer"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "options": json.dumps(row["options"])})
    tasks = [load_task(p) for p in (jsonl, parquet, csv_path)]
    assert tasks[0].items == tasks[1].items == tasks[2].items
    assert len({t.fingerprint for t in tasks}) == 1
    assert [i.gold for i in tasks[0].items] == [0, 1, 2, 0, 1]


def test_fingerprint_changes_with_any_item_content(tmp_path: Path) -> None:
    rows = [{"question": "q?", "options": ["a", "b"], "answer": 0}]
    first = load_task(write_jsonl(tmp_path / "a.jsonl", rows)).fingerprint
    assert load_task(write_jsonl(tmp_path / "b.jsonl", rows)).fingerprint == first
    rows[0]["answer"] = 1
    assert load_task(write_jsonl(tmp_path / "c.jsonl", rows)).fingerprint != first


def test_missing_column_names_the_column_the_line_and_the_layout(tmp_path: Path) -> None:
    good = {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 0}
    path = tmp_path / "med.jsonl"
    lines = [json.dumps(good), "", json.dumps({k: v for k, v in good.items() if k != "cop"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TaskError) as error:
        load_task(path)
    assert str(error.value) == (
        "med.jsonl line 3: missing column 'cop' (medmcqa needs question, opa, opb, opc, opd, cop)"
    )


def test_parquet_and_csv_errors_name_the_row_and_line(tmp_path: Path) -> None:
    rows = [{"question": "q", "options": ["a", "b"], "answer": 0}] * 2
    bad = [rows[0], {"question": "q", "options": ["a", "b"], "answer": 5}]
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(bad), parquet)
    with pytest.raises(TaskError, match=r"t\.parquet row 2: column 'answer' is 5 but there are 2"):
        load_task(parquet)
    csv_path = tmp_path / "t.csv"
    csv_path.write_text('question,options\nq,"[""a"", ""b""]"\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"line 2: missing column 'answer' \(studio needs"):
        load_task(csv_path, format="studio")


def test_unknown_layout_and_bad_json_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="cannot tell the format of t.jsonl from its columns"):
        load_task(write_jsonl(tmp_path / "t.jsonl", [{"foo": 1, "bar": 2}]))
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"question": "q"}\n{oops\n', encoding="utf-8")
    with pytest.raises(TaskError, match="b.jsonl line 2: not valid JSON"):
        load_task(broken)
    with pytest.raises(TaskError, match="does not exist"):
        load_task(tmp_path / "nope.jsonl")
    with pytest.raises(TaskError, match="task format 'wikitext' is unknown"):
        load_task(broken, format="wikitext")


def test_mmlu_subject_keeps_one_subject(tmp_path: Path) -> None:
    rows = [
        {"question": f"q{i}", "subject": s, "choices": ["a", "b", "c", "d"], "answer": "C"}
        for i, s in enumerate(["anatomy", "virology", "anatomy"])
    ]
    path = write_jsonl(tmp_path / "mmlu.jsonl", rows)
    task = load_task(path, subject="anatomy")
    assert [i.query.split("\n")[0] for i in task.items] == ["q0", "q2"]
    assert task.name == "mmlu/anatomy"
    assert {i.gold for i in task.items} == {2}
    with pytest.raises(TaskError, match="no rows with subject 'law'; choose one of anatomy"):
        load_task(path, subject="law")


def test_perplexity_layouts(tmp_path: Path) -> None:
    """A .txt splits at blank lines; JSONL text rows; prompt -> reference pairs."""
    txt = tmp_path / "corpus.txt"
    txt.write_text("first paragraph\nstill first\n\n\nsecond one\n", encoding="utf-8")
    task = load_task(txt)
    assert (task.kind, task.format) == ("perplexity", "text")
    assert task.items == (
        TextItem("0", "", "first paragraph\nstill first"),
        TextItem("1", "", "second one"),
    )
    texts = load_task(write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}]))
    assert texts.format == "text" and texts.items == (TextItem("0", "", "hello"),)
    pairs = load_task(
        write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Q: hi?", "reference": "yes"}])
    )
    assert pairs.format == "prompt_reference"
    assert pairs.items == (TextItem("a", "Q: hi?", "yes"),)
    assert pairs.fewshot_items == ()


def test_fewshot_context_takes_the_first_items_but_never_the_item_itself(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "options": ["x", "y"], "answer": i % 2} for i in range(4)]
    task = load_task(write_jsonl(tmp_path / "t.jsonl", rows))
    first, second = task.items[0], task.items[1]
    assert task.fewshot_context(second, 0) == second.query
    assert task.fewshot_context(second, 2) == (
        "Question: q0\nAnswer: x\n\nQuestion: q2\nAnswer: x\n\nQuestion: q1\nAnswer:"
    )
    assert task.fewshot_context(first, 1).startswith("Question: q1\nAnswer: y\n\n")
    with pytest.raises(TaskError, match="only 3 few-shot examples"):
        task.fewshot_context(first, 4)


def test_demo_tasks_load() -> None:
    """The shipped demo tasks: the demo domain's evaluation sets (preselected) and the small
    hand-written clinic tasks (MC, two corpora, prompt -> reference pairs, chat QA)."""
    paths = demo_task_paths()
    demo_sets = {
        "domain_completion", "domain_mc", "domain_chat_qa", "general_mc", "general_chat_qa",
        "domain_text", "general_text",
    }  # fmt: skip
    clinic = {"clinic_general_mc", "clinic_notes", "clinic_general_text", "clinic_qa_reference"}
    assert set(paths) == demo_sets | clinic | {"clinic_chat_qa"}
    assert {p.stem for p in preselected_demo_tasks()} == demo_sets
    tasks = {name: load_task(path) for name, path in paths.items()}
    assert tasks["clinic_general_mc"].kind == "multiple_choice"
    assert len(tasks["clinic_general_mc"].items) == 20
    assert {tasks[n].format for n in ("clinic_notes", "general_text")} == {"text"}
    assert tasks["clinic_qa_reference"].format == "prompt_reference"
    assert (tasks["clinic_chat_qa"].kind, tasks["clinic_chat_qa"].format) == ("chat_qa", "chat_qa")
    assert (tasks["domain_chat_qa"].kind, tasks["domain_mc"].format) == ("chat_qa", "medmcqa")
    assert all(Path(t.source).is_absolute() for t in tasks.values())


def test_hub_task_is_refused_offline_in_a_sentence() -> None:
    """HF_HUB_OFFLINE=1 (set for every test): a Hub task says how to use a file instead."""
    with pytest.raises(TaskError, match="HF_HUB_OFFLINE is set; download the split"):
        load_task("hub:openlifescienceai/medmcqa@validation")
    with pytest.raises(TaskError, match="is not a Hub task"):
        load_task("hub:@test")


def test_hub_task_reads_rows_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online, the rows come from datasets.load_dataset (the Hub itself is mocked: it cannot be
    reached here) and are parsed exactly like a local file in the same layout."""
    import datasets

    calls: list[tuple[str, str | None, str]] = []
    rows = [
        {"question": "Which vitamin?", "opa": "A", "opb": "B12", "opc": "C", "opd": "D", "cop": 1},
        {
            "question": "Which organ?",
            "opa": "liver",
            "opb": "skin",
            "opc": "eye",
            "opd": "ear",
            "cop": 0,
        },
    ]

    def fake_load_dataset(name: str, config: str | None = None, *, split: str) -> datasets.Dataset:
        calls.append((name, config, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_task("hub:openlifescienceai/medmcqa@validation")
    assert calls == [("openlifescienceai/medmcqa", None, "validation")]
    assert (task.name, task.format, task.source) == (
        "medmcqa",
        "medmcqa",
        "hub:openlifescienceai/medmcqa@validation",
    )
    assert [item.gold for item in task.items] == [1, 0]
    assert "B12" in task.items[0].query  # lettered layout: the options are in the question

    def failing(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no route to host")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(TaskError, match="could not read cais/mmlu:anatomy split 'test'"):
        load_task("hub:cais/mmlu:anatomy")
