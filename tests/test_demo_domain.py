"""The demo domain generator: deterministic per seed, loadable everywhere, eval never in training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.demo_domain import (
    RELATIONS,
    build_world,
    overlapping_lines,
    write_demo_domain,
)
from pipelines.sft import read_conversations
from studio.evaluation.tasks import load_task


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo_domain")
    write_demo_domain(out, seed=0)
    return out


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text("utf-8") for p in sorted(folder.rglob("*.*"))}


def test_same_seed_same_files_other_seed_other_world(demo_dir: Path, tmp_path: Path) -> None:
    write_demo_domain(tmp_path / "again", seed=0)
    assert _tree(tmp_path / "again") == _tree(demo_dir)
    other = build_world(seed=1)
    assert other.entities["drug"] != build_world(seed=0).entities["drug"]


def test_no_evaluation_line_occurs_in_training_text(demo_dir: Path, tmp_path: Path) -> None:
    assert overlapping_lines(demo_dir) == []
    # The check itself can fail: plant one held-out sentence in the training text.
    planted = tmp_path / "planted"
    write_demo_domain(planted, seed=0)
    sentence = (planted / "eval/domain_text.txt").read_text("utf-8").split(" . ")[0] + " ."
    with (planted / "train/domain.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps({"text": sentence}) + "\n")
    assert sentence in overlapping_lines(planted)


def test_chat_data_is_about_the_general_world_only(demo_dir: Path) -> None:
    world = build_world(seed=0)
    domain_words = {
        w for kind in ("drug", "condition", "gene", "maker") for w in world.entities[kind]
    }
    conversations = read_conversations([demo_dir / "train/chat.jsonl"])
    text = " ".join(turn["content"] for conv in conversations for turn in conv)
    assert len(conversations) > 100
    assert not [w for w in domain_words if f" {w} " in f" {text} "]
    # ... while the domain CPT text states every domain fact.
    domain_text = (demo_dir / "train/domain.jsonl").read_text("utf-8")
    for fact in world.of("domain"):
        assert fact.subject in domain_text and fact.object in domain_text


def test_every_domain_fact_is_said_in_eight_paraphrases(demo_dir: Path) -> None:
    world = build_world(seed=0)
    text = (demo_dir / "train/domain.jsonl").read_text("utf-8")
    fact = world.of("domain")[0]
    said = [t.format(s=fact.subject, o=fact.object) for t in RELATIONS[fact.relation].statements]
    assert len(said) == 8 and all(s.rstrip(" .") in text for s in said)


def test_eval_files_load_as_studio_tasks_with_correct_answers(demo_dir: Path) -> None:
    world = build_world(seed=0)
    truth = {(f.relation, f.subject): f.object for f in world.facts}
    mc = load_task(demo_dir / "eval/domain_mc.jsonl")
    assert mc.kind == "multiple_choice" and mc.format == "medmcqa"
    assert len(mc.items) >= 150
    completion = load_task(demo_dir / "eval/domain_completion.jsonl")
    assert completion.format == "hellaswag"
    first = completion.items[0]
    answer = first.choices[first.gold].rstrip(" .").strip()
    assert answer in {o for (_, s), o in truth.items() if s in first.query}
    general = load_task(demo_dir / "eval/general_mc.jsonl")
    assert general.format == "studio" and len(general.items) >= 200
    for name in ("domain_text.txt", "general_text.txt"):
        assert load_task(demo_dir / "eval" / name).kind == "perplexity"


def test_chat_qa_answers_are_the_facts(demo_dir: Path) -> None:
    world = build_world(seed=0)
    objects = {f.object for f in world.of("domain")}
    rows = [
        json.loads(x) for x in (demo_dir / "eval/domain_chat_qa.jsonl").read_text().splitlines()
    ]
    assert len(rows) >= 150
    assert all(r["answer"] in objects and r["question"].endswith("?") for r in rows)
