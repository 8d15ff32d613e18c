"""The side-by-side chat core on real tiny Llamas: streaming, history, stop, blind votes.

Each test states the property it checks in its docstring and asserts it exactly; expected
replies come from `studio.inference.chat` on the same model, prompt and settings.
"""

from __future__ import annotations

import copy
import random
import sqlite3
import threading
from pathlib import Path

import pytest

from studio.chat_session import (
    VOTES_DDL,
    ChatSession,
    ChatView,
    TurnRequest,
    chatbot_messages,
    list_votes,
    message_text,
    turn_request,
)
from studio.errors import ModelError, StudioError
from studio.inference import ChatMessage, GenerationError, ModelSpec, chat, generation_settings
from studio.inference import get_pool as shared_pool

FRANCE = "what is the capital of france ?"
SUN = "the sun"
RIVER = "tell me about the river"
# cpt rendered as Alpaca, chat with its own ChatML, base as ChatML: three different replies.
TEMPLATES = ("alpaca", "auto", "chatml")


def expected_reply(
    folder: Path, messages: list[ChatMessage], template: str | None, **settings: object
) -> str:
    """What `chat` says directly (same pool engine the session uses)."""
    engine = shared_pool().get(ModelSpec.from_path(folder))
    values = {"temperature": 0.0, "max_new_tokens": 24} | settings
    return chat(engine, messages, generation_settings(**values), template=template).text


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def trio(tiny_family: dict[str, Path], **settings: object) -> TurnRequest:
    models = [str(tiny_family[r]) for r in ("cpt", "chat", "base")]
    values = {"temperature": 0.0, "max_new_tokens": 24} | settings
    return turn_request(models=models, templates=TEMPLATES, **values)  # type: ignore[arg-type]


def run(views: object) -> tuple[ChatView, int]:
    """The last view of a turn and how many views it yielded."""
    seen = list(views)  # type: ignore[call-overload]
    return seen[-1], len(seen)


def template_of(column: int) -> str | None:
    return None if TEMPLATES[column] == "auto" else TEMPLATES[column]


def test_send_answers_in_every_column_like_direct_greedy_chat(
    tiny_family: dict[str, Path],
) -> None:
    """Greedy: each column's reply equals `chat` on its model and template; every column shows
    the shared user turn, and its stats line counts the reply's tokens and says EOS."""
    session = ChatSession()
    final, n_views = run(session.send(FRANCE, trio(tiny_family)))
    expected = [
        expected_reply(tiny_family[role], [user(FRANCE)], template_of(i))
        for i, role in enumerate(("cpt", "chat", "base"))
    ]
    assert final.replies() == expected
    assert len(set(expected)) == 3  # the three models really differ here
    assert n_views >= 3  # the user turn at once, then the replies as they stream
    for column, reply in zip(final.columns, session.turns[-1].replies, strict=True):
        assert column.messages[0] == {"role": "user", "content": FRANCE}
        assert reply is not None and reply.result is not None
        assert column.stats.startswith(f"{reply.result.tokens} tokens · ")
        assert column.stats.endswith("stopped by EOS")
    assert [c.label for c in final.columns] == ["A · cpt (alpaca)", "B · chat", "C · base (chatml)"]
    assert not final.running and not session.running


def test_second_turn_sends_each_column_its_own_history_and_the_system_prompt(
    tiny_family: dict[str, Path],
) -> None:
    """Turn 2 renders system + user1 + that column's own reply 1 + user2: the reply equals
    `chat` on exactly that conversation."""
    session = ChatSession()
    request = trio(tiny_family, system_prompt="be nice")
    first, _ = run(session.send(FRANCE, request))
    second, _ = run(session.send(SUN, request))
    for i, role in enumerate(("cpt", "chat", "base")):
        conversation = [
            ChatMessage(role="system", content="be nice"),
            user(FRANCE),
            ChatMessage(role="assistant", content=first.replies()[i] or ""),
            user(SUN),
        ]
        assert second.replies()[i] == expected_reply(
            tiny_family[role], conversation, template_of(i)
        )
        assert [m["role"] for m in second.columns[i].messages] == [
            "user",
            "assistant",
            "user",
            "assistant",
        ]


def test_a_failing_column_shows_its_error_and_leaves_that_turn_out(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """The base model has no chat template: with "auto" its column shows the error (the others
    answer); after choosing ChatML, its next prompt holds only the new question."""
    models = [str(tiny_family["chat"]), str(tiny_family["base"])]
    session = ChatSession()
    view, _ = run(session.send(FRANCE, turn_request(models=models, temperature=0.0)))
    assert view.replies()[0] == expected_reply(tiny_family["chat"], [user(FRANCE)], None)
    assert view.replies()[1] is None and view.columns[1].messages == (
        {"role": "user", "content": FRANCE},
    )
    assert view.columns[1].stats.startswith("⚠️ base: this model has no chat template")
    assert not view.columns[2].active and view.columns[2].messages == ()
    with pytest.raises(StudioError, match="column B has no reply"):
        session.vote("B", db_path=tmp_path / "studio.sqlite3")

    fixed = turn_request(models=models, templates=["auto", "chatml"], temperature=0.0)
    view, _ = run(session.send(SUN, fixed))
    assert view.replies()[1] == expected_reply(tiny_family["base"], [user(SUN)], "chatml")


def test_a_missing_model_raises_a_sentence_and_changes_nothing(
    tiny_family: dict[str, Path],
) -> None:
    """A model path that does not exist fails before anything runs, naming the model slot."""
    session = ChatSession()
    missing = tiny_family["chat"].parent / "no_such_model"  # inside the allowed roots
    request = turn_request(models=[str(tiny_family["chat"]), str(missing)])
    with pytest.raises(ModelError, match=f"model 2: model path {missing} does not exist"):
        session.send(FRANCE, request)
    with pytest.raises(StudioError, match="no model is chosen"):
        session.send(FRANCE, turn_request(models=[None, ""]))
    with pytest.raises(StudioError, match="the message is empty"):
        session.send("   ", request)
    assert session.turns == [] and not session.running


def test_stop_keeps_the_text_so_far_and_says_so(tiny_family: dict[str, Path]) -> None:
    """Stop mid-reply: the reply ends early with reason "cancelled", its text is the reply kept
    in the history, and the stats line says "stopped by you"."""
    session = ChatSession()
    # base + Alpaca + repetition_penalty 0.2 loops on "the river flows" until max_new_tokens.
    request = turn_request(
        models=[str(tiny_family["base"])],
        templates=["alpaca"],
        temperature=0.0,
        max_new_tokens=100,
        repetition_penalty=0.2,
    )
    stopped = False
    for view in session.send(RIVER, request):
        if not stopped and view.columns[0].stats.startswith("streaming…"):
            stopped = session.stop()
    result = session.turns[-1].replies[0].result  # type: ignore[union-attr]
    assert stopped and result is not None
    assert result.stop_reason == "cancelled" and 0 < result.tokens < 100
    assert view.replies()[0] == result.text and view.columns[0].stats.endswith("stopped by you")
    assert session.stop() is False  # nothing runs any more


def test_a_looping_reply_gets_a_repetition_warning(tiny_family: dict[str, Path]) -> None:
    """The same loop left to run: stopped by length, and the stats line warns about the
    repeated phrase."""
    session = ChatSession()
    request = turn_request(
        models=[str(tiny_family["base"])],
        templates=["alpaca"],
        temperature=0.0,
        max_new_tokens=100,
        repetition_penalty=0.2,
    )
    view, _ = run(session.send(RIVER, request))
    stats = view.columns[0].stats
    assert stats.startswith("100 tokens · ")
    assert "stopped by length (max new tokens)" in stats
    assert "⚠️ the reply repeats a 3-token phrase ('the river flows')" in stats


def test_regenerate_replaces_the_last_replies(tiny_family: dict[str, Path]) -> None:
    """Regenerate with another seed replaces turn 1's reply with that seed's sample; the
    original seed gives the original reply back (same seed, same reply)."""
    models = [str(tiny_family["chat"])]
    seeded = {"temperature": 1.0, "max_new_tokens": 16}
    session = ChatSession()
    first, _ = run(session.send(FRANCE, turn_request(models=models, seed=1, **seeded)))
    second, _ = run(session.regenerate(turn_request(models=models, seed=2, **seeded)))
    again, _ = run(session.regenerate(turn_request(models=models, seed=1, **seeded)))
    direct = [
        expected_reply(tiny_family["chat"], [user(FRANCE)], None, seed=s, **seeded) for s in (1, 2)
    ]
    assert [first.replies()[0], second.replies()[0], again.replies()[0]] == [*direct, direct[0]]
    assert direct[0] != direct[1]
    assert len(session.turns) == 1 and len(again.columns[0].messages) == 2


def test_clear_forgets_the_conversation(tiny_family: dict[str, Path]) -> None:
    """After Clear: no turns, empty columns, and nothing to regenerate."""
    session = ChatSession()
    run(session.send(FRANCE, trio(tiny_family)))
    session.clear()
    view = session.view()
    assert session.turns == [] and all(c.messages == () and c.stats == "" for c in view.columns)
    with pytest.raises(StudioError, match="nothing to regenerate"):
        session.regenerate(trio(tiny_family))


def test_blind_mode_shuffles_hides_names_and_a_vote_reveals_them(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """Blind: columns are "Model A/B/C" in a shuffled order; the vote is saved in SQLite with
    the model that really wrote the chosen reply; then the names show, and the round keeps
    its models and mode until Clear."""
    db = tmp_path / "studio.sqlite3"
    session = ChatSession(rng=random.Random(3))
    request = turn_request(
        models=[str(tiny_family[r]) for r in ("cpt", "chat", "base")],
        templates=["chatml"] * 3,
        temperature=0.0,
        blind=True,
    )
    view, _ = run(session.send(FRANCE, request))
    assert [c.label for c in view.columns] == ["Model A", "Model B", "Model C"]
    order = [c.name for c in session.columns]  # type: ignore[union-attr]
    assert sorted(order) == ["base", "chat", "cpt"] and order != ["cpt", "chat", "base"]

    vote = session.vote("b", db_path=db)
    expected_b = expected_reply(tiny_family[order[1]], [user(FRANCE)], "chatml")
    assert (vote.choice, vote.blind, vote.replies["B"]) == ("B", True, expected_b)
    assert vote.winner_model == str(tiny_family[order[1]]) == vote.models["B"]
    assert list_votes(db) == [vote] and vote.id == 1
    row = sqlite3.connect(db).execute("SELECT choice, winner_model FROM chat_votes").fetchone()
    assert row == ("B", str(tiny_family[order[1]]))
    assert [c.label for c in session.view().columns] == [
        f"Model {letter}: {name} (chatml)" for letter, name in zip("ABC", order, strict=True)
    ]

    with pytest.raises(StudioError, match="already voted"):
        session.vote("A", db_path=db)
    fewer = turn_request(models=[str(tiny_family["chat"])], templates=["chatml"], blind=True)
    with pytest.raises(StudioError, match="blind round keeps its models"):
        session.send(SUN, fewer)
    with pytest.raises(StudioError, match="blind mode was on"):
        session.send(SUN, turn_request(models=[str(tiny_family["chat"])]))
    session.clear()
    run(session.send(SUN, fewer))
    with pytest.raises(StudioError, match="vote 'B' is not one of the choices; choose A, tie"):
        session.vote("B", db_path=db)  # one model: only column A exists
    tie = session.vote("Tie", db_path=db)
    assert (tie.choice, tie.winner_model, tie.models) == (
        "tie",
        None,
        {"A": str(tiny_family["chat"])},
    )
    assert [v.id for v in list_votes(db)] == [2, 1]


def test_one_turn_at_a_time_per_session_and_sessions_are_independent(
    tiny_family: dict[str, Path],
) -> None:
    """A second Send while a reply streams is refused in that session; two other sessions
    chatting at once in threads each get exactly their own conversation."""
    busy = ChatSession()
    views = busy.send(FRANCE, trio(tiny_family))
    next(views)  # the turn is running now
    with pytest.raises(StudioError, match="still streaming"):
        next(busy.send(SUN, trio(tiny_family)))
    views.close()  # the consumer walks away: the workers are cancelled, the lock released
    assert not busy.running

    sessions = {FRANCE: ChatSession(), SUN: ChatSession()}
    finals: dict[str, ChatView] = {}
    barrier = threading.Barrier(2)

    def talk(prompt: str) -> None:
        barrier.wait()
        finals[prompt] = run(sessions[prompt].send(prompt, trio(tiny_family)))[0]

    threads = [threading.Thread(target=talk, args=(p,)) for p in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for prompt, view in finals.items():
        assert view.replies() == [
            expected_reply(tiny_family[role], [user(prompt)], template_of(i))
            for i, role in enumerate(("cpt", "chat", "base"))
        ]
        assert all(c.messages[0]["content"] == prompt for c in view.columns)
    assert finals[FRANCE].replies() != finals[SUN].replies()


def test_a_copied_session_is_a_new_empty_one(tiny_family: dict[str, Path]) -> None:
    """gr.State deep-copies its initial value per browser session: the copy shares nothing."""
    session = ChatSession()
    run(session.send(FRANCE, trio(tiny_family)))
    fresh = copy.deepcopy(session)
    assert fresh.turns == [] and fresh.session_id != session.session_id
    assert len(session.turns) == 1


def test_turn_request_reads_form_values() -> None:
    """Number boxes' floats become ints, "auto"/empty templates mean the model's own, empty
    model slots are None, and a bad value is a sentence naming the field."""
    request = turn_request(
        models=["/m/a", "", None],
        templates=["auto", ""],
        system_prompt="  hi  ",
        temperature=0.5,
        max_new_tokens=64.0,
        seed=7.0,
        top_p=None,
    )
    assert request.columns[0] is not None and request.columns[0].template is None
    assert request.columns[1:] == (None, None) and request.system_prompt == "hi"
    assert (request.settings.max_new_tokens, request.settings.seed) == (64, 7)
    assert request.settings.top_p == 1.0  # left empty: the default
    with pytest.raises(GenerationError, match="temperature=-1.0"):
        turn_request(models=["/m/a"], temperature=-1.0)
    with pytest.raises(StudioError, match="at most 3 models"):
        turn_request(models=["/m/a"] * 4)


def test_chatbot_values_are_normalised() -> None:
    """Gradio 6 sends content as a list of parts; strings and parts read the same."""
    value = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "hello"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        },
        {"role": "tool", "content": "ignored"},
    ]
    assert chatbot_messages(value) == [
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="hello"),
        ChatMessage(role="assistant", content="ab"),
    ]
    assert message_text(None) == "" and message_text({"type": "file", "file": "x"}) == ""


def test_votes_record_who_voted_and_older_homes_get_the_column(tmp_path: Path) -> None:
    """A home whose chat_votes table predates the owner column keeps its rows (owner NULL)
    and takes new votes with their owner; list_votes filters by owner."""
    from studio.chat_session import ChatVote, save_vote

    db = tmp_path / "studio.sqlite3"
    old = sqlite3.connect(db)
    old.executescript(VOTES_DDL.replace(",\n    owner TEXT", ""))  # the first version's table
    old.execute(
        "INSERT INTO chat_votes (created_at, session_id, blind, choice, winner_model, models,"
        " templates, prompt, replies, settings) VALUES ('t0', 's0', 0, 'A', 'm', '{}', '{}',"
        " 'hi', '{}', '{}')"
    )
    old.commit()
    old.close()
    assert "owner" not in VOTES_DDL.replace(",\n    owner TEXT", "")

    def vote(owner: str | None) -> ChatVote:
        return ChatVote(
            created_at="t1", session_id="s1", blind=False, choice="tie", winner_model=None,
            models={"A": "m"}, templates={"A": "auto"}, prompt="hi", replies={"A": "x"},
            settings={}, owner=owner,
        )  # fmt: skip

    alice, bob = save_vote(db, vote("alice")), save_vote(db, vote("bob"))
    assert [v.owner for v in list_votes(db)] == ["bob", "alice", None]
    assert list_votes(db, owner="alice") == [alice]
    assert list_votes(db, owner="bob") == [bob]
