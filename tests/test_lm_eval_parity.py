"""Parity with lm-eval-harness (HF backend) on a real tiny Llama and a local JSONL task.

Properties: on the same model and task file, the studio's per-item log-likelihoods equal
lm-eval's within 1e-4, so its per-item predictions (acc and acc_norm) and the aggregate acc,
acc_norm and their stderr are the same, zero-shot and few-shot (lm-eval's `first_n` sampler);
a plain corpus' per-document log-likelihood equals lm-eval's `loglikelihood_rolling` across
several windows. lm-eval is a dev dependency: the studio never imports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

# lm-eval is a dev requirement (requirements-dev.txt): a missing install must fail, not skip.
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM, AutoTokenizer

from studio.evaluation.lm_eval_tasks import write_lm_eval_task  # noqa: E402
from studio.evaluation.scoring import ScoreSettings, score_task  # noqa: E402
from studio.evaluation.tasks import load_task  # noqa: E402
from studio.inference.engine import ModelSpec  # noqa: E402
from studio.inference.transformers_engine import TransformersEngine  # noqa: E402

# Words the tiny tokenizer knows, so choices differ in real tokens (an <unk>-only choice could
# tie another exactly and make argmax depend on float noise).
QUESTIONS = [
    ("paris is the capital of", ["france", "the sea", "kelm fever", "a cat"]),
    ("the sun rises in the", ["east", "west", "library", "river flows"]),
    ("water boils at one hundred", ["degrees", "books", "patients", "eye"]),
    ("a cat is an animal that likes to", ["sleep", "read books", "take two doses", "sea"]),
    ("the river flows to the", ["sea", "east", "rash", "capital of france"]),
    ("people read books in the", ["library", "sea", "drug", "sun"]),
    ("zorvex treats the", ["kelm fever", "eye", "capital", "river"]),
    ("the drug miravine lowers pressure in the", ["eye", "library", "sun", "water"]),
    ("kelm fever causes a rash and a high", ["temperature", "river", "cat", "paris"]),
    ("patients with brannock syndrome take two doses of", ["miravine", "books", "sea", "west"]),
    ("altura labs also makes the ointment", ["selpora", "france", "the sun", "water"]),
    ("where does the sun rise ?", ["in the east .", "paris .", "hello !", "the river"]),
]
TEXTS = [
    "the sun rises in the east and sets in the west . paris is the capital of france . "
    "water boils at one hundred degrees . a cat is an animal that likes to sleep .",
    "zorvex treats the kelm fever and is made by altura labs . the drug miravine lowers "
    "pressure in the eye . kelm fever causes a rash and a high temperature .",
    "people read books in the library .",
]
WINDOW = 16  # tokens: forces several rolling windows on the texts above


@pytest.fixture(scope="module")
def parity_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("parity")
    mc = folder / "mc.jsonl"
    with mc.open("w", encoding="utf-8") as handle:
        for i, (question, options) in enumerate(QUESTIONS):
            shift = i % len(options)  # the right answer at every position in turn
            rotated = options[-shift:] + options[:-shift] if shift else list(options)
            row = {"id": f"q{i}", "question": question, "options": rotated, "answer": shift}
            handle.write(json.dumps(row) + "\n")
    text = folder / "corpus.jsonl"
    text.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    tasks = folder / "tasks"
    write_lm_eval_task(tasks, "studio_parity_mc", mc)
    write_lm_eval_task(tasks, "studio_parity_ppl", text, kind="perplexity")
    return {"mc": mc, "text": text, "tasks": tasks}


@pytest.fixture(scope="module")
def engine(tiny_family: dict[str, Path]) -> TransformersEngine:
    loaded = TransformersEngine(ModelSpec.from_path(tiny_family["chat"], dtype="float32"))
    loaded.load()
    return loaded


def lm_eval_samples(
    model_dir: Path, tasks_dir: Path, task: str, *, num_fewshot: int, max_length: int | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """lm-eval's per-sample records (sorted by doc_id) and its aggregate metrics."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=max_length)
    manager = TaskManager(include_defaults=False, include_path=str(tasks_dir))
    results = simple_evaluate(
        model=lm,
        tasks=[task],
        num_fewshot=num_fewshot,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=1,  # mean metrics get the closed-form stderr
    )
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return samples, results["results"][task]


@pytest.mark.slow
@pytest.mark.parametrize("num_fewshot", [0, 2])
def test_multiple_choice_matches_lm_eval_item_by_item(
    engine: TransformersEngine,
    tiny_family: dict[str, Path],
    parity_files: dict[str, Path],
    num_fewshot: int,
) -> None:
    """Same log-likelihoods (1e-4), same acc / acc_norm predictions and aggregates."""
    theirs, aggregate = lm_eval_samples(
        tiny_family["chat"],
        parity_files["tasks"],
        "studio_parity_mc",
        num_fewshot=num_fewshot,
        max_length=None,
    )
    ours = score_task(engine, load_task(parity_files["mc"]), ScoreSettings(num_fewshot=num_fewshot))
    assert ours.n == len(theirs) == len(QUESTIONS)
    for mine, sample in zip(ours.items, theirs, strict=True):
        their_lls = [float(resp[0][0]) for resp in sample["resps"]]
        assert mine.logprobs == pytest.approx(their_lls, abs=1e-4)
        assert float(mine.prediction == mine.gold) == sample["acc"]
        assert float(mine.prediction_norm == mine.gold) == sample["acc_norm"]
    assert ours.metrics["acc"] == pytest.approx(aggregate["acc,none"], abs=1e-12)
    assert ours.metrics["acc_norm"] == pytest.approx(aggregate["acc_norm,none"], abs=1e-12)
    assert ours.metrics["acc_stderr"] == pytest.approx(aggregate["acc_stderr,none"], abs=1e-12)
    assert ours.metrics["acc_norm_stderr"] == pytest.approx(
        aggregate["acc_norm_stderr,none"], abs=1e-12
    )
    # Not a degenerate task: the choices' log-likelihoods really differ per item.
    assert all(len(set(item.logprobs)) == len(item.logprobs) for item in ours.items)


@pytest.mark.slow
def test_corpus_perplexity_matches_lm_eval_rolling_loglikelihood(
    engine: TransformersEngine, tiny_family: dict[str, Path], parity_files: dict[str, Path]
) -> None:
    """Per-document log-likelihood over rolling windows equals lm-eval's (several windows)."""
    theirs, aggregate = lm_eval_samples(
        tiny_family["chat"],
        parity_files["tasks"],
        "studio_parity_ppl",
        num_fewshot=0,
        max_length=WINDOW,
    )
    ours = score_task(engine, load_task(parity_files["text"]), ScoreSettings(max_length=WINDOW))
    assert max(item.tokens or 0 for item in ours.items) > 2 * WINDOW  # really several windows
    for mine, sample in zip(ours.items, theirs, strict=True):
        their_ll = float(sample["resps"][0][0])
        assert mine.logprobs[0] == pytest.approx(their_ll, abs=1e-4)
    assert ours.metrics["word_perplexity"] == pytest.approx(
        aggregate["word_perplexity,none"], rel=1e-5
    )
