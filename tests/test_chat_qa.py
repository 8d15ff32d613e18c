"""Chat-QA tasks: reading them, the answer metrics, batched greedy generation, scoring, caching,
sweeps.

Properties: question + answer files are detected as chat_qa (and the multiple-choice layouts
that also have question + answer keep their own format); a mis-shaped row names its column and
line; `contains` is a whole-word match after normalisation and `exact` an equality; batched
greedy replies equal one-by-one replies token for token (fp32); a task whose answers are the
model's own greedy replies scores acc 1.0 and the same answers shuffled score 0.0; the cache
gives back the same numbers and replies; a sweep gives one point per weight.

    .venv/bin/python -m pytest -q tests/test_chat_qa.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from studio.evaluation.chat_qa import (
    answer_contains,
    answer_exact,
    chat_qa_prompt,
    normalize_answer,
)
from studio.evaluation.loglikelihood import ScoringError
from studio.evaluation.results import ResultStore
from studio.evaluation.scoring import ScoreSettings, TaskScore, score_task
from studio.evaluation.sweeps import (
    ScoreRequest,
    ScoreTarget,
    SweepRequest,
    run_scores,
    run_sweep,
)
from studio.evaluation.tasks import QAItem, TaskError, load_task
from studio.inference.engine import GenerationError, GenerationSettings, ModelSpec
from studio.inference.transformers_engine import TransformersEngine
from studio.plots import sweep_chart
from studio.recipes import MergeRecipe, RecipeModel, recipe_to_yaml

QUESTIONS = [
    "what is the capital of france ?",
    "where does the sun rise ?",
    "what does zorvex treat ?",
    "hello",
    "who makes miravine and what does it lower in the eye ?",
    "tell me about the river",
    "what is water ?",
]

ANSWERS = ["paris", "east", "kelm fever", "hello", "altura", "sea", "water"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chat_engine(tiny_family: dict[str, Path]) -> TransformersEngine:
    engine = TransformersEngine(ModelSpec.from_path(tiny_family["chat"], dtype="float32"))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def cpt_engine(tiny_family: dict[str, Path]) -> TransformersEngine:
    engine = TransformersEngine(ModelSpec.from_path(tiny_family["cpt"], dtype="float32"))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def base_engine(tiny_family: dict[str, Path]) -> TransformersEngine:
    engine = TransformersEngine(ModelSpec.from_path(tiny_family["base"], dtype="float32"))
    engine.load()
    return engine


# -- reading tasks ------------------------------------------------------------------------------


def test_question_answer_files_are_chat_qa_in_every_file_type(tmp_path: Path) -> None:
    """JSONL, CSV and Parquet with question + answer (+ aliases) load as chat_qa items."""
    rows = [
        {"id": "a", "question": "What treats kelm fever?", "answer": "Zorvex", "aliases": ["zx"]},
        {"id": "b", "question": "How many doses?", "answer": 2},
    ]
    jsonl = load_task(write_jsonl(tmp_path / "qa.jsonl", rows))
    assert (jsonl.kind, jsonl.format) == ("chat_qa", "chat_qa")
    assert jsonl.items == (
        QAItem("a", "What treats kelm fever?", "Zorvex", ("zx",)),
        QAItem("b", "How many doses?", "2", ()),
    )
    assert jsonl.fewshot_items == ()

    with (tmp_path / "qa.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer", "aliases"])
        writer.writerow(["What treats kelm fever?", "Zorvex", "zx|zorvex tablets"])
        writer.writerow(["Which organ?", "eye", '["the eye", "eyes"]'])
        writer.writerow(["Which maker?", "altura labs", ""])
    from_csv = load_task(tmp_path / "qa.csv")
    assert [item.aliases for item in from_csv.items] == [
        ("zx", "zorvex tablets"),
        ("the eye", "eyes"),
        (),
    ]

    import pyarrow as pa
    import pyarrow.parquet as pq

    typed = [rows[0], {**rows[1], "answer": "2", "aliases": []}]  # one type per column
    pq.write_table(pa.Table.from_pylist(typed), tmp_path / "qa.parquet")
    from_parquet = load_task(tmp_path / "qa.parquet")
    assert from_parquet.items == jsonl.items
    assert from_parquet.fingerprint == jsonl.fingerprint


def test_multiple_choice_layouts_with_question_and_answer_keep_their_format(
    tmp_path: Path,
) -> None:
    """options (studio) and choices (mmlu) decide first: question + answer alone is chat_qa."""
    studio = write_jsonl(
        tmp_path / "studio.jsonl", [{"question": "q", "options": ["a", "b"], "answer": 1}]
    )
    mmlu = write_jsonl(
        tmp_path / "mmlu.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0}]
    )
    assert (load_task(studio).format, load_task(mmlu).format) == ("studio", "mmlu")
    assert load_task(studio).kind == "multiple_choice"


def test_mis_shaped_rows_name_the_column_and_line(tmp_path: Path) -> None:
    good = {"question": "q", "answer": "a"}
    missing = write_jsonl(tmp_path / "missing.jsonl", [good, {"question": "q2"}])
    with pytest.raises(
        TaskError, match=r"missing.jsonl line 2: missing column 'answer' \(chat_qa needs"
    ):
        load_task(missing, format="chat_qa")
    punct = write_jsonl(tmp_path / "punct.jsonl", [good, good, {"question": "q", "answer": "?!"}])
    with pytest.raises(TaskError, match=r"punct.jsonl line 3: column 'answer' holds '\?!'"):
        load_task(punct)
    aliases = write_jsonl(tmp_path / "aliases.jsonl", [{**good, "aliases": 7}])
    with pytest.raises(TaskError, match=r"aliases.jsonl line 1: column 'aliases' must be a list"):
        load_task(aliases)
    blank_alias = write_jsonl(tmp_path / "blank.jsonl", [{**good, "aliases": ["ok", "..."]}])
    with pytest.raises(TaskError, match=r"line 1: column 'aliases' holds '\.\.\.'"):
        load_task(blank_alias)
    empty_question = write_jsonl(tmp_path / "eq.jsonl", [{"question": " ", "answer": "a"}])
    with pytest.raises(TaskError, match=r"eq.jsonl line 1: column 'question' is empty"):
        load_task(empty_question)


def test_the_demo_chat_qa_task_loads() -> None:
    task = load_task(Path(__file__).parents[1] / "assets" / "tasks" / "clinic_chat_qa.jsonl")
    assert task.kind == "chat_qa" and 10 <= len(task.items) <= 20
    assert len({item.id for item in task.items}) == len(task.items)


# -- metrics ------------------------------------------------------------------------------------


def test_normalisation_lowercases_drops_punctuation_and_collapses_spaces() -> None:
    assert normalize_answer("  Kelm-Fever!\n\tIs   HERE. ") == "kelm fever is here"
    assert normalize_answer("«Zorvex», (twice-daily)") == "zorvex twice daily"
    assert normalize_answer("ＡＢＣ") == "abc"  # full-width letters (NFKC)
    assert normalize_answer("?!...") == ""


def test_contains_is_a_whole_word_span_and_exact_is_equality() -> None:
    refs = ["kelm fever"]
    assert answer_contains("Zorvex treats Kelm fever.", refs)
    assert answer_contains("KELM-FEVER", refs)
    assert not answer_contains("zorvex treats kelm fevers", refs)  # not a whole word
    assert not answer_contains("it treats kelm", refs)
    assert not answer_contains("fever kelm", refs)  # the words in order
    assert answer_contains("the answer is 60 beats", ["sixty", "60"])  # any alias counts
    assert not answer_contains("160 beats", ["60"])
    assert answer_exact("Kelm fever.", refs)
    assert not answer_exact("Zorvex treats kelm fever.", refs)
    assert not answer_exact("", ["?"])  # nothing said equals nothing


# -- generation ---------------------------------------------------------------------------------


def test_batched_greedy_replies_equal_one_by_one_replies(
    chat_engine: TransformersEngine, cpt_engine: TransformersEngine, base_engine: TransformersEngine
) -> None:
    """Left-padded batches give each prompt exactly its alone reply (tokens, text, stop reason):
    the chat model in its own template, the CPT and base models (no template of their own:
    chatml named), with replies that end at EOS, at a stop string and at the length limit."""
    reasons = set()
    for engine, template, max_new, stop in (
        (chat_engine, None, 12, ()),
        (chat_engine, None, 3, ("the",)),
        (cpt_engine, "chatml", 12, ()),
        (base_engine, "chatml", 4, ()),
    ):
        prompts = [chat_qa_prompt(engine, q, template) for q in QUESTIONS]
        settings = prompts[0][1].model_copy(update={"max_new_tokens": max_new, "stop": stop})
        texts = [text for text, _ in prompts]
        batched = engine.generate_batch(texts, settings, add_special_tokens=False, batch_size=3)
        alone = [engine.generate(t, settings, add_special_tokens=False) for t in texts]
        assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
        assert [r.text for r in batched] == [r.text for r in alone]
        assert [r.stop_reason for r in batched] == [r.stop_reason for r in alone]
        reasons |= {r.stop_reason for r in batched}
    assert reasons == {"eos", "stop", "length"}


def test_batched_generation_is_greedy_only(chat_engine: TransformersEngine) -> None:
    with pytest.raises(GenerationError, match="greedy only but temperature is 0.7"):
        chat_engine.generate_batch(["hi"], GenerationSettings(temperature=0.7))


# -- scoring ------------------------------------------------------------------------------------


def _own_answers_task(engine: TransformersEngine, tmp_path: Path) -> tuple[Path, Path]:
    """(task whose answers are the model's own greedy replies, the same answers shuffled)."""
    probe = write_jsonl(
        tmp_path / "probe.jsonl", [{"question": q, "answer": "x"} for q in QUESTIONS]
    )
    replies = score_task(engine, load_task(probe), ScoreSettings(max_new_tokens=12))
    said = [(q, item.generation or "") for q, item in zip(QUESTIONS, replies.items, strict=True)]
    # Keep replies that say something, distinct, none a whole-word part of another.
    kept: list[tuple[str, str]] = []
    for question, reply in said:
        if normalize_answer(reply) and not any(
            answer_contains(reply, [other]) or answer_contains(other, [reply]) for _, other in kept
        ):
            kept.append((question, reply))
    assert len(kept) >= 3, said  # the check below needs a few distinct replies
    own = write_jsonl(tmp_path / "own.jsonl", [{"question": q, "answer": a} for q, a in kept])
    rotated = [a for _, a in kept[1:]] + [kept[0][1]]  # every answer moves to another question
    shuffled = write_jsonl(
        tmp_path / "shuffled.jsonl",
        [{"question": q, "answer": a} for (q, _), a in zip(kept, rotated, strict=True)],
    )
    return own, shuffled


def test_own_greedy_replies_score_one_and_shuffled_answers_score_zero(
    chat_engine: TransformersEngine, tmp_path: Path
) -> None:
    """The metric is real: the model's own replies as answers -> acc 1.0 (and exact 1.0);
    the same answers on the wrong questions -> acc 0.0. Batch size changes nothing."""
    own, shuffled = _own_answers_task(chat_engine, tmp_path)
    settings = ScoreSettings(max_new_tokens=12, batch_size=2)
    right = score_task(chat_engine, load_task(own), settings)
    assert right.kind == "chat_qa"
    assert right.primary == ("acc", 1.0, 0.0)
    assert right.metrics["exact"] == 1.0
    assert all(item.contains and item.exact for item in right.items)
    wrong = score_task(chat_engine, load_task(shuffled), settings)
    assert wrong.metrics["acc"] == 0.0 and wrong.metrics["exact"] == 0.0
    one_batch = score_task(
        chat_engine, load_task(own), settings.model_copy(update={"batch_size": 8})
    )
    assert [i.generation for i in one_batch.items] == [i.generation for i in right.items]
    assert TaskScore.from_json(json.loads(json.dumps(right.to_json()))) == right


def test_a_model_without_a_template_needs_one_named(
    cpt_engine: TransformersEngine, tmp_path: Path
) -> None:
    """As in the Chat tab: 'auto' uses the model's own template; a CPT model has none, so the
    error says to set chat_template; naming one scores it."""
    task = load_task(write_jsonl(tmp_path / "qa.jsonl", [{"question": "hello", "answer": "hi"}]))
    with pytest.raises(ScoringError, match=r"model 'cpt' has no chat template .*chat_template"):
        score_task(cpt_engine, task, ScoreSettings(chat_template="auto"))
    score = score_task(cpt_engine, task, ScoreSettings(chat_template="chatml", max_new_tokens=4))
    assert score.n == 1 and score.items[0].tokens is not None and score.items[0].tokens <= 4


def test_settings_key_has_the_generation_settings_for_chat_qa_only() -> None:
    """max_new_tokens and the template change chat-QA scores and keys; other kinds' keys (and
    their cached scores) are unaffected by them."""
    short, long = ScoreSettings(max_new_tokens=8), ScoreSettings(max_new_tokens=64)
    assert short.key("chat_qa") != long.key("chat_qa")
    assert short.key("chat_qa") != short.model_copy(update={"chat_template": "chatml"}).key(
        "chat_qa"
    )
    assert short.key("multiple_choice") == long.key("multiple_choice")
    assert short.key("perplexity") == long.key("perplexity")
    assert ScoreSettings(chat_template="auto") == ScoreSettings()


# -- runs, cache, sweeps ------------------------------------------------------------------------


def test_cached_scores_come_back_with_the_same_numbers_and_replies(
    tiny_family: dict[str, Path], chat_engine: TransformersEngine, tmp_path: Path
) -> None:
    own, _ = _own_answers_task(chat_engine, tmp_path)
    store = ResultStore(tmp_path / "results.db")
    request = ScoreRequest(
        targets=(ScoreTarget(label="chat", model=str(tiny_family["chat"])),),
        tasks=(str(own),),
        settings=ScoreSettings(max_new_tokens=12),
    )
    first = run_scores(request, store=store)
    again = run_scores(request, store=store)
    assert [r.cached for r in first.rows] == [False] and [r.cached for r in again.rows] == [True]
    assert (again.rows[0].metric, again.rows[0].score) == ("acc", 1.0)
    assert [r.score for r in again.rows] == [r.score for r in first.rows]
    assert again.answers == first.answers
    assert [a.correct for a in first.answers] == [True] * len(first.answers)
    assert first.answers[0].question == load_task(own).items[0].question
    headers, rows = first.answers_table()
    assert headers == ["model", "task", "question", "reference", "reply", "correct", "exact"]
    assert len(rows) == len(first.answers)
    assert first.answers_csv().splitlines()[0].startswith("label,value,task,id,question")
    # Another reply length is another setting: scored again, not read from the cache.
    longer = request.model_copy(update={"settings": ScoreSettings(max_new_tokens=13)})
    assert [r.cached for r in run_scores(longer, store=store).rows] == [False]
    assert store.count() == 2


@pytest.mark.slow
def test_a_sweep_over_linear_weight_scores_chat_qa_at_every_point(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """One acc point per weight; weight 0 is the first model (cpt) itself, weight 1 the chat
    model: their points equal the parents' scores, and every point keeps its replies."""
    task = write_jsonl(
        tmp_path / "qa.jsonl",
        [{"question": q, "answer": a} for q, a in zip(QUESTIONS, ANSWERS, strict=True)],
    )
    recipe = MergeRecipe(
        method="linear",
        models=(
            RecipeModel(path=str(tiny_family["cpt"]), parameters={"weight": 0.5}),
            RecipeModel(path=str(tiny_family["chat"]), parameters={"weight": 0.5}),
        ),
        dtype="float32",
    )
    report = run_sweep(
        SweepRequest(
            recipe=recipe_to_yaml(recipe),
            parameter="weight",
            values=(0.0, 0.5, 1.0),
            tasks=(str(task),),
            settings=ScoreSettings(max_new_tokens=8, chat_template="chatml"),
        )
    )
    points = [r for r in report.rows if r.kind == "merge"]
    assert [(r.value, r.metric) for r in points] == [(0.0, "acc"), (0.5, "acc"), (1.0, "acc")]
    parents = {r.label: r for r in report.rows if r.kind == "parent"}
    assert set(parents) == {"cpt", "chat"}
    replies = {
        (a.label, a.id): a.generation
        for a in report.answers
        if a.value in (0.0, 1.0) or a.value is None
    }
    for value, parent in ((0.0, "cpt"), (1.0, "chat")):
        point = next(r for r in points if r.value == value)
        assert point.score == parents[parent].score
        for item_id in ("0", "1", "2"):
            assert replies[(f"weight={value:g}", item_id)] == replies[(parent, item_id)]
    assert len(report.answers) == 5 * len(QUESTIONS)
    # the chart: the chat-QA task is one line (acc against weight) plus the parents' levels
    lines = {trace.name: trace for trace in sweep_chart(report).data}
    assert list(lines["qa"].x) == [0.0, 0.5, 1.0]
    assert {"cpt · qa", "chat · qa"} <= set(lines)


@pytest.mark.slow
def test_a_merge_is_asked_in_its_recipes_chat_template(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """The live-merged model has its first model's tokenizer (cpt: no template), but the merge
    the recipe exports carries the recipe's chat_template: with 'auto' the questions are asked
    in that one; a recipe without one (and no template named) is refused in a sentence."""
    task = write_jsonl(tmp_path / "qa.jsonl", [{"question": "hello", "answer": "hello"}])
    recipe = MergeRecipe(
        method="linear",
        models=(
            RecipeModel(path=str(tiny_family["cpt"]), parameters={"weight": 0.5}),
            RecipeModel(path=str(tiny_family["chat"]), parameters={"weight": 0.5}),
        ),
        dtype="float32",
    )

    def request(recipe: MergeRecipe, template: str | None) -> ScoreRequest:
        return ScoreRequest(
            targets=(ScoreTarget(label="merged", recipe=recipe_to_yaml(recipe)),),
            tasks=(str(task),),
            settings=ScoreSettings(max_new_tokens=4, chat_template=template),
        )

    with_template = recipe.model_copy(update={"chat_template": "chatml"})
    own = run_scores(request(with_template, None))
    named = run_scores(request(recipe, "chatml"))
    assert [(r.metric, r.n) for r in own.rows] == [("acc", 1)]
    assert own.answers[0].generation == named.answers[0].generation
    with pytest.raises(ScoringError, match="set the chat template"):
        run_scores(request(recipe, None))
