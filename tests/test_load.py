"""Load (issue 8): 20 concurrent gradio_client sessions chatting while a merge and a score job run,
on loopback only, with the model pool held to a small memory budget.

    .venv/bin/python -m pytest -q tests/test_load.py -m slow

What must hold: every session completes both its turns; each session's history holds exactly its
own prompts, in order, and its first reply equals a direct greedy reply for its model and prompt
(no cross-talk); the merge and the score job succeed; the pool never holds more than its budget;
a model larger than the budget is refused with a sentence, not an OOM kill.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from transformers import PreTrainedTokenizerFast

from pipelines.tiny_models import TinyShape, build_tiny_llama
from studio.chat_session import chatbot_messages
from studio.inference import ChatMessage, ModelSpec, chat, generation_settings
from studio.inference import pool as pool_module
from studio.recipes import MergeRecipe, RecipeModel, recipe_to_yaml
from studio.settings import StudioSettings
from studio.ui import build_app

LOG = logging.getLogger(__name__)
pytestmark = [pytest.mark.slow, pytest.mark.app]

SESSIONS = 20
TURNS = 2
ROLES = ("base", "cpt", "chat")
WORDS = ("sun", "river", "france", "capital", "paris", "east", "the", "tell")
BUDGET_BYTES = 3 * 2**20  # three tiny parents fit (~0.25 MB each); the "big" model does not
WAIT = 300.0  # a bound on a hang, not a speed assertion


def prompt(session: int, turn: int) -> str:
    """A distinct prompt per session and turn, from words the tiny tokenizer knows."""
    return f"{WORDS[session % len(WORDS)]} {WORDS[(session // 8 + turn) % len(WORDS)]} {session}"


def chat_args(message: str, model: str) -> tuple[Any, ...]:
    """/chat's inputs: one column, greedy, a short reply."""
    return (message, model, None, None, "chatml", "chatml", "chatml", "", 0.0, 1.0, 8, None, False)


@pytest.fixture(scope="module")
def budget_pool() -> Iterator[pool_module.ModelPool]:
    """The process-wide pool replaced by one with a small budget for this module."""
    small = pool_module.ModelPool(budget_bytes=BUDGET_BYTES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pool_module, "_SHARED", small)
        yield small
    small.clear()


@pytest.fixture(scope="module")
def app(
    tmp_path_factory: pytest.TempPathFactory, budget_pool: pool_module.ModelPool
) -> Iterator[tuple[str, StudioSettings]]:
    settings = StudioSettings(home=tmp_path_factory.mktemp("load_home"))
    demo = build_app(settings)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        assert demo.local_url.startswith("http://127.0.0.1:")  # loopback only
        yield demo.local_url, settings
    finally:
        demo.close()


def connect(url: str) -> Client:
    """A new session; a generous HTTP timeout, as 20 clients share 2 busy cores here."""
    return Client(url, verbose=False, httpx_kwargs={"timeout": WAIT})


def wait_job(client: Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        status = client.predict(job_id, api_name="/job_status")
        if status["done"]:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still running after {WAIT} s")


def test_twenty_sessions_chat_while_a_merge_and_a_score_run(
    app: tuple[str, StudioSettings],
    tiny_family: dict[str, Path],
    budget_pool: pool_module.ModelPool,
    tmp_path: Path,
) -> None:
    url, settings = app
    models = [str(tiny_family[ROLES[i % len(ROLES)]]) for i in range(SESSIONS)]
    peak = {"bytes": 0}
    stop = threading.Event()

    def watch_pool() -> None:  # samples what the pool holds while everything runs
        while not stop.is_set():
            peak["bytes"] = max(peak["bytes"], budget_pool.stats().used_bytes)
            time.sleep(0.01)

    def session(i: int) -> list[Any]:
        client = connect(url)
        outputs = []
        for turn in range(TURNS):
            outputs = client.predict(*chat_args(prompt(i, turn), models[i]), api_name="/chat")
        return list(outputs)

    # 1) the two jobs, started through the API like any user
    jobs = connect(url)
    recipe = recipe_to_yaml(
        MergeRecipe(
            method="linear",
            models=(
                RecipeModel(path=str(tiny_family["cpt"]), parameters={"weight": 0.5}),
                RecipeModel(path=str(tiny_family["chat"]), parameters={"weight": 0.5}),
            ),
            dtype="float32",
        )
    )
    task = tmp_path / "qa.jsonl"
    rows = [{"question": "what is the capital of france ?", "answer": "paris"}] * 3
    task.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    merge = jobs.predict(recipe, str(settings.merges_dir / "under-load"), api_name="/merge_start")
    score_args = (str(tiny_family["cpt"]), str(tiny_family["chat"]), "", [], str(task), True, 3, 0)
    score = jobs.predict(*score_args, 6, "chatml", api_name="/score")

    # 2) twenty sessions at once
    watcher = threading.Thread(target=watch_pool, daemon=True)
    watcher.start()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=SESSIONS) as executor:
        results = list(executor.map(session, range(SESSIONS)))
    chat_seconds = time.monotonic() - started
    merged, scored = wait_job(jobs, merge["id"]), wait_job(jobs, score["id"])
    stop.set()
    watcher.join()

    # 3) every session got its own conversation, and only its own
    for i, outputs in enumerate(results):
        messages = chatbot_messages(outputs[0])
        assert [m.content for m in messages if m.role == "user"] == [
            prompt(i, t) for t in range(TURNS)
        ], f"session {i} sees another session's messages"
        assert [m.role for m in messages] == ["user", "assistant"] * TURNS
        assert all(chatbot_messages(o) == [] for o in outputs[1:3])  # unused columns stay empty
    for i in range(len(ROLES)):  # one session per model: its first reply is the direct one
        engine = budget_pool.get(ModelSpec.from_path(models[i]))
        expected = chat(
            engine,
            [ChatMessage(role="user", content=prompt(i, 0))],
            generation_settings(temperature=0.0, max_new_tokens=8),
            template="chatml",
        ).text
        first_reply = chatbot_messages(results[i][0])[1].content
        assert first_reply == expected, (i, first_reply, expected)

    # 4) the jobs finished, the pool stayed inside its budget
    assert merged["state"] == "succeeded", merged["log_tail"]
    assert (settings.merges_dir / "under-load" / "model.safetensors").is_file()
    assert scored["state"] == "succeeded", scored["log_tail"]
    assert 0 < peak["bytes"] <= BUDGET_BYTES
    LOG.info(
        "load held: %d sessions x %d turns in %.1f s beside a merge and a score job; "
        "pool peak %.2f MB of a %.2f MB budget",
        SESSIONS,
        TURNS,
        chat_seconds,
        peak["bytes"] / 2**20,
        BUDGET_BYTES / 2**20,
    )


def test_a_model_beyond_the_budget_is_refused_with_a_sentence(
    app: tuple[str, StudioSettings], tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """A model bigger than the whole budget: /chat answers with the pool's sentence, the app and
    the models already loaded keep serving."""
    url, _ = app
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_family["base"])
    big = build_tiny_llama(
        tmp_path / "big",
        tokenizer,
        shape=TinyShape(hidden_size=256, intermediate_size=1024, num_attention_heads=4),
    )
    client = connect(url)
    refused = client.predict(*chat_args("the sun", str(big)), api_name="/chat")
    sentence = re.compile(
        r"big: model 'big' needs about [\d.]+ MB .* but the model memory budget is 3.0 MB"
    )
    assert [o for o in refused if isinstance(o, str) and sentence.search(o)], refused
    outputs = connect(url).predict(
        *chat_args("the sun", str(tiny_family["base"])), api_name="/chat"
    )
    assert [m.role for m in chatbot_messages(outputs[0])] == ["user", "assistant"]
