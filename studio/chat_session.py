"""Side-by-side chat: one prompt, up to three models, per-session histories, blind votes.

The chat tab is a thin layer over `ChatSession`, one per browser session (kept in a gr.State):

    session = ChatSession()
    request = turn_request(models=[cpt, chat, base], templates=["auto", "auto", "chatml"],
                           temperature=0.0, max_new_tokens=64)
    for view in session.send("what is the capital of france ?", request):
        view.columns[0].messages, view.columns[0].stats     # what column A shows right now
    session.stop()          # from another thread: every column stops at its next token
    session.vote("A", db_path=settings.db_path)             # saved in SQLite, names revealed

How a turn runs: each column's model is leased from the shared pool (`get_pool()`) and
streamed in its own thread (`stream_chat`); the threads push chunks into one queue and `send`
yields a snapshot of all columns after each batch, so the three replies grow together in one
event. Different models run in parallel; two columns on the same model take turns (the
engine's lock).

Semantics the UI relies on:
- the user turns are shared, the replies are per column; a column whose reply failed shows the
  error under it and leaves that turn out of its next prompt (roles keep alternating);
- Stop ends the running turn; the text so far is kept as the reply (stop reason "cancelled");
- Regenerate replaces the last turn's replies, with the current models and settings;
- Clear forgets everything, including the blind assignment;
- blind mode shuffles the chosen models onto columns A/B/C at the first turn and keeps that
  assignment until Clear; names are revealed once a vote is cast.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

from pydantic import BaseModel, Field

from studio.db import add_missing_columns, connect, ensure_schema
from studio.errors import ModelError, PathNotAllowedError, StudioError
from studio.inference import (
    ChatMessage,
    GenerationChunk,
    GenerationResult,
    GenerationSettings,
    ModelPool,
    ModelSpec,
    generation_settings,
    get_pool,
    stream_chat,
)

LOG = logging.getLogger(__name__)

MAX_COLUMNS = 3
LABELS: tuple[str, ...] = ("A", "B", "C")
TIE = "tie"
ALL_BAD = "all bad"
AUTO_TEMPLATE = "auto"

STOP_WORDS = {
    "eos": "stopped by EOS",
    "length": "stopped by length (max new tokens)",
    "stop": "stopped at a stop string",
    "cancelled": "stopped by you",
}

# One row per vote; models/replies are JSON objects keyed by column label.
VOTES_DDL = """
CREATE TABLE IF NOT EXISTS chat_votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    session_id TEXT NOT NULL,
    blind INTEGER NOT NULL,
    choice TEXT NOT NULL,
    winner_model TEXT,
    models TEXT NOT NULL,
    templates TEXT NOT NULL,
    prompt TEXT NOT NULL,
    replies TEXT NOT NULL,
    settings TEXT NOT NULL,
    owner TEXT
);
"""
# Columns added after the first version (older homes get them on first use).
VOTES_ADDED_COLUMNS = {"owner": "TEXT"}

ChatbotMessage: TypeAlias = dict[str, str]  # {"role": ..., "content": ...}: what gr.Chatbot shows


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnChoice:
    """A model picked for a column and the chat template to render its prompts with."""

    model: str  # a model folder or a .gguf file
    template: str | None = None  # a template name or jinja; None = the model's own

    @property
    def name(self) -> str:
        """Short label: the folder or GGUF file name."""
        return Path(self.model).name or self.model

    @property
    def title(self) -> str:
        return self.name if self.template is None else f"{self.name} ({_short(self.template)})"


@dataclass(frozen=True)
class TurnRequest:
    """Everything one Send (or Regenerate) needs besides the message itself."""

    columns: tuple[ColumnChoice | None, ...]  # as picked, at most MAX_COLUMNS; None = empty
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    system_prompt: str = ""
    blind: bool = False


def turn_request(
    *,
    models: Sequence[str | None],
    templates: Sequence[str | None] = (),
    system_prompt: str | None = "",
    blind: bool = False,
    **settings: Any,
) -> TurnRequest:
    """A TurnRequest from form values; StudioError naming the field for a bad value.

    `settings` are GenerationSettings fields (temperature, top_p, max_new_tokens, seed, ...);
    None values keep the defaults, and floats from number boxes are taken as whole numbers
    where the field is an integer.
    """
    if len(models) > MAX_COLUMNS:
        raise StudioError(f"at most {MAX_COLUMNS} models chat side by side; got {len(models)}")
    padded = list(templates) + [None] * (len(models) - len(templates))
    columns = tuple(_column_choice(m, t) for m, t in zip(models, padded, strict=False))
    values = {k: _whole(k, v) for k, v in settings.items() if v is not None and v != ""}
    return TurnRequest(
        columns=columns,
        settings=generation_settings(**values),
        system_prompt=(system_prompt or "").strip(),
        blind=bool(blind),
    )


def _column_choice(model: str | None, template: str | None) -> ColumnChoice | None:
    if model is None or not str(model).strip():
        return None
    template = (template or "").strip()
    return ColumnChoice(str(model).strip(), None if template in ("", AUTO_TEMPLATE) else template)


def _whole(name: str, value: Any) -> Any:
    """Number boxes send 64.0; integer fields want 64 (a real fraction is left to fail)."""
    integer_fields = ("max_new_tokens", "seed", "top_k")
    if name in integer_fields and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _short(template: str) -> str:
    return template if "\n" not in template and len(template) <= 24 else "custom template"


# -- what a column shows ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyStats:
    """The numbers shown under a finished reply."""

    tokens: int
    tokens_per_second: float
    first_token_seconds: float | None
    stop_reason: str
    repetition: str | None  # the warning sentence, or None

    @classmethod
    def from_result(cls, result: GenerationResult) -> ReplyStats:
        return cls(
            tokens=result.tokens,
            tokens_per_second=result.tokens_per_second,
            first_token_seconds=result.first_token_seconds,
            stop_reason=result.stop_reason,
            repetition=result.repetition.sentence() if result.repetition else None,
        )

    def line(self) -> str:
        """'12 tokens · 45.3 tokens/s · first token 0.05 s · stopped by EOS' (+ warning)."""
        parts = [f"{self.tokens} tokens", f"{self.tokens_per_second:.1f} tokens/s"]
        if self.first_token_seconds is not None:
            parts.append(f"first token {self.first_token_seconds:.2f} s")
        parts.append(STOP_WORDS.get(self.stop_reason, self.stop_reason))
        text = " · ".join(parts)
        return text if self.repetition is None else f"{text}\n\n⚠️ {self.repetition}"


@dataclass(frozen=True)
class ColumnView:
    """One column as the UI draws it."""

    label: str
    messages: tuple[ChatbotMessage, ...]
    stats: str
    active: bool  # a model is assigned to this column


@dataclass(frozen=True)
class ChatView:
    """All columns at one moment (always MAX_COLUMNS of them)."""

    columns: tuple[ColumnView, ...]
    running: bool  # some column of the last turn is still replying

    def replies(self) -> list[str | None]:
        """The last assistant text of each column (None: no reply there)."""
        out: list[str | None] = []
        for column in self.columns:
            last = column.messages[-1] if column.messages else None
            out.append(last["content"] if last and last["role"] == "assistant" else None)
        return out


# -- votes ------------------------------------------------------------------------------------


class ChatVote(BaseModel, frozen=True):
    """A vote on the last turn, as stored in the chat_votes table."""

    id: int | None = Field(default=None, description="row id once saved")
    created_at: str = Field(description="UTC time, ISO 8601")
    session_id: str = Field(description="the chat session that voted")
    blind: bool = Field(description="the models were hidden behind A/B/C when voting")
    choice: str = Field(description="'A', 'B', 'C', 'tie' or 'all bad'")
    winner_model: str | None = Field(description="model of the chosen column; None for tie/all bad")
    models: dict[str, str] = Field(description="column label -> model")
    templates: dict[str, str] = Field(description="column label -> chat template ('auto': own)")
    prompt: str = Field(description="the user message voted on")
    replies: dict[str, str] = Field(description="column label -> reply")
    settings: dict[str, Any] = Field(description="generation settings and system prompt")
    owner: str | None = Field(
        default=None, description="who voted: the logged-in user, else the browser session"
    )


def save_vote(db_path: Path, vote: ChatVote) -> ChatVote:
    """Insert `vote` into chat_votes; returns it with its row id."""
    conn = _votes_table(db_path)
    try:
        cursor = conn.execute(
            "INSERT INTO chat_votes (created_at, session_id, blind, choice, winner_model, models,"
            " templates, prompt, replies, settings, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                vote.created_at,
                vote.session_id,
                int(vote.blind),
                vote.choice,
                vote.winner_model,
                json.dumps(vote.models),
                json.dumps(vote.templates),
                vote.prompt,
                json.dumps(vote.replies),
                json.dumps(vote.settings),
                vote.owner,
            ),
        )
        return vote.model_copy(update={"id": cursor.lastrowid})
    finally:
        conn.close()


def list_votes(db_path: Path, *, limit: int = 100, owner: str | None = None) -> list[ChatVote]:
    """Saved votes, newest first; only `owner`'s when given."""
    conn = _votes_table(db_path)
    try:
        where, params = ("WHERE owner = ? ", [owner]) if owner is not None else ("", [])
        rows = conn.execute(
            f"SELECT * FROM chat_votes {where}ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return [_vote_from_row(dict(row)) for row in rows]
    finally:
        conn.close()


def _votes_table(db_path: Path) -> sqlite3.Connection:
    """A connection with the chat_votes table as this version writes it."""
    conn = connect(db_path)
    ensure_schema(conn, VOTES_DDL)
    add_missing_columns(conn, "chat_votes", VOTES_ADDED_COLUMNS)
    return conn


def _vote_from_row(row: dict[str, Any]) -> ChatVote:
    for key in ("models", "templates", "replies", "settings"):
        row[key] = json.loads(row[key])
    row["blind"] = bool(row["blind"])
    return ChatVote.model_validate(row)


# -- chatbot values ---------------------------------------------------------------------------


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string, or Gradio 6's list of parts
    ([{"type": "text", "text": ...}]); non-text parts (files, images) are left out."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, Sequence):
        return "".join(message_text(part) for part in content)
    return str(getattr(content, "text", "") or "")


def chatbot_messages(value: Sequence[Any] | None) -> list[ChatMessage]:
    """A gr.Chatbot value (message dicts or objects, content a string or a list of parts) as
    ChatMessages; messages in other roles (tool calls, metadata) are dropped."""
    out = []
    for item in value or ():
        role = item.get("role") if isinstance(item, dict) else getattr(item, "role", None)
        content = item.get("content") if isinstance(item, dict) else getattr(item, "content", None)
        if role in ("system", "user", "assistant"):
            out.append(ChatMessage(role=role, content=message_text(content)))
    return out


# -- the session ------------------------------------------------------------------------------


@dataclass
class _Reply:
    """One column's reply to one turn; filled in while it streams."""

    choice: ColumnChoice
    text: str = ""
    tokens: int = 0
    result: GenerationResult | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def stats(self) -> str:
        if self.error is not None:
            return f"⚠️ {self.error}"
        if self.result is not None:
            return ReplyStats.from_result(self.result).line()
        return f"streaming… {self.tokens} tokens" if self.tokens else "waiting for the model…"


@dataclass
class _Turn:
    user: str
    replies: list[_Reply | None]  # one per column; None = no model in that column
    request: TurnRequest  # the settings the replies were made with (saved with a vote)


@dataclass(frozen=True)
class _Done:
    column: int


@dataclass(frozen=True)
class _Failed:
    column: int
    message: str


@dataclass(frozen=True)
class _Delta:
    column: int
    chunk: GenerationChunk


class ChatSession:
    """One person's side-by-side chat; see the module docstring."""

    def __init__(self, *, rng: random.Random | None = None, pool: ModelPool | None = None):
        """`rng` shuffles blind columns (default: system randomness); `pool` defaults to the
        process-wide `get_pool()` every session shares."""
        self.session_id = uuid.uuid4().hex
        self._rng = rng or random.SystemRandom()
        self._pool = pool
        self._lock = threading.Lock()  # one turn at a time per session
        self._cancel: threading.Event | None = None  # the running turn's
        self._reset()

    def __deepcopy__(self, memo: dict[int, Any]) -> ChatSession:
        """A new, empty session: gr.State deep-copies its initial value for every browser
        session, and locks and the shared pool must not be copied."""
        return ChatSession(rng=self._rng, pool=self._pool)

    def _reset(self) -> None:
        self.turns: list[_Turn] = []
        self.columns: list[ColumnChoice | None] = [None] * MAX_COLUMNS
        self.blind = False
        self.revealed = False
        self.voted_turns: set[int] = set()

    @property
    def running(self) -> bool:
        return self._lock.locked()

    # -- actions --------------------------------------------------------------------------

    def send(self, message: str, request: TurnRequest) -> Iterator[ChatView]:
        """Ask every column `message`; yields views while the replies stream."""
        text = (message or "").strip()
        if not text:
            raise StudioError("the message is empty; type a question first")
        return self._turn(text, request, replace_last=False)

    def regenerate(self, request: TurnRequest) -> Iterator[ChatView]:
        """Answer the last message again (current models and settings), replacing its replies."""
        if not self.turns:
            raise StudioError("nothing to regenerate yet; send a message first")
        return self._turn(self.turns[-1].user, request, replace_last=True)

    def stop(self) -> bool:
        """Stop the running turn at the next token of each column; False if none was running."""
        cancel = self._cancel
        if cancel is None or not self.running:
            return False
        cancel.set()
        return True

    def clear(self) -> None:
        """Forget the conversation, the blind assignment and the votes' bookkeeping."""
        self.stop()
        self._reset()

    def vote(self, choice: str, *, db_path: Path, owner: str | None = None) -> ChatVote:
        """Vote on the last turn ('A', 'B', 'C', 'tie' or 'all bad'); saves it (with who voted)
        and, in blind mode, reveals which model is in which column."""
        if self.running:
            raise StudioError("the replies are still streaming; vote when they are done")
        if not self.turns:
            raise StudioError("nothing to vote on yet; send a message first")
        index = len(self.turns) - 1
        if index in self.voted_turns:
            raise StudioError("you already voted on these replies; send another message first")
        turn = self.turns[index]
        shown = {LABELS[i]: r for i, r in enumerate(turn.replies) if r is not None}
        answered = {label: r for label, r in shown.items() if r.error is None}
        picked = _vote_choice(choice, list(shown))
        if picked in shown and picked not in answered:
            raise StudioError(f"column {picked} has no reply (it failed); vote for another")
        vote = ChatVote(
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            session_id=self.session_id,
            blind=self.blind,
            choice=picked,
            winner_model=answered[picked].choice.model if picked in answered else None,
            models={label: r.choice.model for label, r in shown.items()},
            templates={label: r.choice.template or AUTO_TEMPLATE for label, r in shown.items()},
            prompt=turn.user,
            replies={label: r.text for label, r in answered.items()},
            settings=_settings_record(turn.request),
            owner=owner,
        )
        saved = save_vote(db_path, vote)
        self.voted_turns.add(index)
        self.revealed = True
        LOG.info("chat vote %s saved (session %s, blind=%s)", picked, self.session_id, self.blind)
        return saved

    # -- views ----------------------------------------------------------------------------

    def view(self) -> ChatView:
        last = self.turns[-1].replies if self.turns else []
        return ChatView(
            columns=tuple(self._column_view(i) for i in range(MAX_COLUMNS)),
            running=any(r is not None and not r.done for r in last),
        )

    def label(self, column: int) -> str:
        """'A · starter-chat'; in blind mode 'Model A' until a vote reveals the model."""
        letter = LABELS[column]
        choice = self.columns[column]
        if choice is None:
            return f"{letter} · no model"
        if self.blind and not self.revealed:
            return f"Model {letter}"
        if self.blind:
            return f"Model {letter}: {choice.title}"
        return f"{letter} · {choice.title}"

    def _column_view(self, column: int) -> ColumnView:
        messages: list[ChatbotMessage] = []
        for turn in self.turns:
            reply = turn.replies[column]
            if reply is None:  # no model in this column for that turn
                continue
            messages.append({"role": "user", "content": turn.user})
            if reply.error is None and (reply.text or reply.done):
                messages.append({"role": "assistant", "content": reply.text})
        last = self.turns[-1].replies[column] if self.turns else None
        return ColumnView(
            label=self.label(column),
            messages=tuple(messages),
            stats=last.stats() if last is not None else "",
            active=self.columns[column] is not None,
        )

    # -- running a turn -------------------------------------------------------------------

    def _turn(self, text: str, request: TurnRequest, *, replace_last: bool) -> Iterator[ChatView]:
        # Checked now, before the generator starts, so a bad request raises at once and
        # changes nothing.
        specs = _resolve_specs(request.columns)
        columns = self._assign_columns(request)
        return self._run(text, request, columns, specs, replace_last=replace_last)

    def _run(
        self,
        text: str,
        request: TurnRequest,
        columns: list[ColumnChoice | None],
        specs: dict[str, ModelSpec],
        *,
        replace_last: bool,
    ) -> Iterator[ChatView]:
        # Taken inside the generator: a generator that is never started never releases.
        if not self._lock.acquire(blocking=False):
            raise StudioError("a reply is still streaming in this chat; press Stop first")
        cancel = threading.Event()
        self._cancel = cancel
        workers: list[threading.Thread] = []
        try:
            if replace_last and self.turns:
                self.turns.pop()
                self.voted_turns.discard(len(self.turns))
            if not self.turns and not replace_last:  # a new conversation sets its mode
                self.blind, self.revealed = request.blind, False
            self.columns = columns
            turn = _Turn(text, [None if c is None else _Reply(c) for c in columns], request)
            histories = [self._history(i, request.system_prompt) for i in range(MAX_COLUMNS)]
            self.turns.append(turn)
            events: queue.Queue[_Delta | _Failed | _Done] = queue.Queue()
            for i, reply in enumerate(turn.replies):
                if reply is None:
                    continue
                messages = [*histories[i], ChatMessage(role="user", content=text)]
                job = _ColumnJob(i, specs[reply.choice.model], reply.choice.template, messages)
                worker = threading.Thread(
                    target=self._pump,
                    args=(job, request.settings, cancel, events),
                    name=f"chat-{self.session_id[:8]}-{LABELS[i]}",
                    daemon=True,
                )
                worker.start()
                workers.append(worker)
            yield self.view()
            yield from self._collect(turn, events, pending=len(workers))
        finally:
            # A consumer that walks away (closed tab, cancelled event) must not leave the
            # models generating: cancel, then let the workers hand their leases back.
            cancel.set()
            for worker in workers:
                worker.join(timeout=5)
            self._cancel = None
            self._lock.release()

    def _collect(
        self, turn: _Turn, events: queue.Queue[_Delta | _Failed | _Done], *, pending: int
    ) -> Iterator[ChatView]:
        """Apply the workers' events to `turn`; one view per batch of events."""
        while pending:
            batch = [events.get()]
            while True:  # drain what is already there: one redraw per batch, not per token
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            for event in batch:
                reply = turn.replies[event.column]
                assert reply is not None  # only columns with a model have workers
                if isinstance(event, _Delta):
                    reply.text += event.chunk.text
                    reply.tokens = event.chunk.tokens
                    if event.chunk.result is not None:
                        reply.result = event.chunk.result
                        reply.text = event.chunk.result.text  # the engine's final word
                elif isinstance(event, _Failed):
                    reply.error = event.message
                else:
                    pending -= 1
                    if not reply.done:  # a stream that ended without a result
                        reply.error = "the model stopped without a result"
            yield self.view()

    def _pump(
        self,
        job: _ColumnJob,
        settings: GenerationSettings,
        cancel: threading.Event,
        events: queue.Queue[_Delta | _Failed | _Done],
    ) -> None:
        """Worker thread: stream one column's reply into `events`."""
        try:
            pool = self._pool or get_pool()
            with pool.lease(job.spec) as engine:
                stream = stream_chat(
                    engine, job.messages, settings, template=job.template, cancel=cancel
                )
                for chunk in stream:
                    events.put(_Delta(job.column, chunk))
        except StudioError as error:
            events.put(_Failed(job.column, f"{job.spec.name}: {error}"))
        except Exception as error:  # a bug, not the user's fault: the other columns go on
            LOG.exception("chat column %s failed", LABELS[job.column])
            events.put(_Failed(job.column, f"unexpected error ({type(error).__name__}): {error}"))
        finally:
            events.put(_Done(job.column))

    def _history(self, column: int, system_prompt: str) -> list[ChatMessage]:
        """What the column's model has seen: finished turns it answered, roles alternating."""
        messages = [ChatMessage(role="system", content=system_prompt)] if system_prompt else []
        for turn in self.turns:
            reply = turn.replies[column]
            if reply is None or reply.error is not None or reply.result is None:
                continue
            messages.append(ChatMessage(role="user", content=turn.user))
            messages.append(ChatMessage(role="assistant", content=reply.text))
        return messages

    def _assign_columns(self, request: TurnRequest) -> list[ColumnChoice | None]:
        """Which model answers in which column this turn (the blind shuffle lives here)."""
        picked = list(request.columns) + [None] * (MAX_COLUMNS - len(request.columns))
        chosen = [c for c in picked if c is not None]
        if not chosen:
            raise StudioError("no model is chosen; pick at least one model for the chat")
        if not self.turns:  # a new conversation: models go where picked, or shuffled if blind
            if not request.blind:
                return picked
            shuffled: list[ColumnChoice | None] = list(chosen)
            self._rng.shuffle(shuffled)
            return shuffled + [None] * (MAX_COLUMNS - len(shuffled))
        if request.blind != self.blind:
            state = "on" if self.blind else "off"
            raise StudioError(
                f"blind mode was {state} when this chat started; press Clear to switch it"
            )
        if not self.blind:
            return picked
        if Counter(chosen) != Counter(c for c in self.columns if c is not None):
            raise StudioError(
                "a blind round keeps its models until Clear; press Clear to compare other models"
            )
        return list(self.columns)


@dataclass(frozen=True)
class _ColumnJob:
    column: int
    spec: ModelSpec
    template: str | None
    messages: list[ChatMessage]


def _resolve_specs(columns: Sequence[ColumnChoice | None]) -> dict[str, ModelSpec]:
    """ModelSpec per chosen model; ModelError naming the column for a missing model."""
    specs: dict[str, ModelSpec] = {}
    for index, choice in enumerate(columns):
        if choice is None or choice.model in specs:
            continue
        try:
            specs[choice.model] = ModelSpec.from_path(choice.model)
        except (ModelError, PathNotAllowedError) as error:
            raise type(error)(f"model {index + 1}: {error}") from error
    return specs


def _settings_record(request: TurnRequest) -> dict[str, Any]:
    return request.settings.model_dump(mode="json") | {"system_prompt": request.system_prompt}


def _vote_choice(choice: str, labels: list[str]) -> str:
    """Normalise a vote ('a' -> 'A', 'All bad' -> 'all bad'); StudioError if not offered."""
    value = (choice or "").strip()
    if value.upper() in labels:
        return value.upper()
    if value.lower() in (TIE, ALL_BAD):
        return value.lower()
    offered = ", ".join([*labels, TIE, ALL_BAD])
    raise StudioError(f"vote '{value}' is not one of the choices; choose {offered}")
