"""Chat tab: one prompt, up to three models side by side, streaming together; blind votes.

Layout and wiring only; the conversation logic is `studio.chat_session.ChatSession`, one per
browser session in a gr.State. API (gradio_client), inputs in the order the handlers list them:

- /chat (streaming): message, three models, three templates, system prompt, temperature,
  top_p, max new tokens, seed, blind -> three chatbots, three stats lines, three column
  titles (the model, or "Model A" in blind mode)
- /chat_regenerate: the same without the message; /chat_stop and /chat_clear: no inputs
- /chat_vote: "A" | "B" | "C" | "tie" | "all bad" -> the saved vote (models revealed)

In the whole app the tab takes the session's `Selection` (common.py) when it is selected: the
last finished merge in column 1 next to its CPT and chat parents, and a freshly read catalog
in every model dropdown (a merge finished a minute ago is offered without a restart).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio.chat_session import (
    ALL_BAD,
    AUTO_TEMPLATE,
    LABELS,
    MAX_COLUMNS,
    TIE,
    ChatSession,
    ChatView,
    TurnRequest,
    turn_request,
)
from studio.inference import GenerationSettings, template_choices
from studio.settings import StudioSettings
from studio.ui.common import (
    bind_settings,
    carry_to_chat,
    job_owner,
    model_choices,
    refreshed_dropdown,
    starter_path,
    user_errors,
)

LOG = logging.getLogger(__name__)

# The starter zoo's parents until a merge exists; the merged model will take column A.
DEFAULT_ROLES = ("cpt", "chat", "base")
# Every /chat or /chat_regenerate runs up to three models; on one GPU (or two CPU cores) more
# requests at once only slice the same device thinner, so a few stream and the rest queue.
GENERATE_CONCURRENCY = 3
DEFAULTS = GenerationSettings.model_fields


def view_outputs(view: ChatView, session: ChatSession) -> tuple[Any, ...]:
    """A view as the outputs [3 chatbots, 3 stats lines, 3 column titles, session]."""
    bots = [list(c.messages) for c in view.columns]
    stats = [c.stats for c in view.columns]
    return (*bots, *stats, *column_titles(view), session)


def column_titles(view: ChatView) -> list[str]:
    return [f"**{c.label}**" for c in view.columns]


def request_from_form(
    models: tuple[str | None, ...],
    templates: tuple[str | None, ...],
    system_prompt: str | None,
    temperature: float | None,
    top_p: float | None,
    max_new_tokens: float | None,
    seed: float | None,
    blind: bool | None,
) -> TurnRequest:
    return turn_request(
        models=models,
        templates=templates,
        system_prompt=system_prompt,
        blind=bool(blind),
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )


@user_errors
def on_chat_submit(
    message: str,
    model_a: str | None,
    model_b: str | None,
    model_c: str | None,
    template_a: str | None,
    template_b: str | None,
    template_c: str | None,
    system_prompt: str | None,
    temperature: float | None,
    top_p: float | None,
    max_new_tokens: float | None,
    seed: float | None,
    blind: bool | None,
    session: ChatSession,
) -> Iterator[tuple[Any, ...]]:
    """Send one message to every column; the replies stream together (API: /chat)."""
    request = request_from_form(
        (model_a, model_b, model_c),
        (template_a, template_b, template_c),
        system_prompt,
        temperature,
        top_p,
        max_new_tokens,
        seed,
        blind,
    )
    for view in session.send(message, request):
        yield view_outputs(view, session)


@user_errors
def on_regenerate_click(
    model_a: str | None,
    model_b: str | None,
    model_c: str | None,
    template_a: str | None,
    template_b: str | None,
    template_c: str | None,
    system_prompt: str | None,
    temperature: float | None,
    top_p: float | None,
    max_new_tokens: float | None,
    seed: float | None,
    blind: bool | None,
    session: ChatSession,
) -> Iterator[tuple[Any, ...]]:
    """Answer the last message again, replacing its replies (API: /chat_regenerate)."""
    request = request_from_form(
        (model_a, model_b, model_c),
        (template_a, template_b, template_c),
        system_prompt,
        temperature,
        top_p,
        max_new_tokens,
        seed,
        blind,
    )
    for view in session.regenerate(request):
        yield view_outputs(view, session)


def on_stop_click(session: ChatSession) -> str:
    """Stop the replies streaming in this session; the text so far is kept (API: /chat_stop)."""
    return "Stopped; the text so far is kept." if session.stop() else "Nothing is streaming."


def on_clear_click(session: ChatSession) -> tuple[Any, ...]:
    """Forget this session's conversation and blind assignment (API: /chat_clear)."""
    session.clear()
    return view_outputs(session.view(), session)


@user_errors
def on_vote_click(
    settings: StudioSettings, choice: str, session: ChatSession, request: gr.Request | None = None
) -> tuple[dict[str, Any], ChatSession]:
    """Vote on the last replies; saved in SQLite with who voted, names revealed (API:
    /chat_vote)."""
    vote = session.vote(choice, db_path=settings.db_path, owner=job_owner(request))
    return vote.model_dump(mode="json"), session


def on_vote_reveal(vote: dict[str, Any], session: ChatSession) -> tuple[str, ...]:
    """After a vote: the columns' real names, and which model won."""
    winner = vote.get("winner_model")
    text = f"Vote saved: **{vote['choice']}**" + (f" ({winner})" if winner else "")
    return (*column_titles(session.view()), text)


def on_blind_change(blind: bool, session: ChatSession) -> str:
    """Say when the blind switch takes effect (a conversation keeps the mode it started in)."""
    if session.turns and bool(blind) != session.blind:
        return "Blind mode changes with the next conversation: press Clear."
    return "Blind: models are shuffled onto A/B/C; vote to reveal them." if blind else ""


@dataclass(frozen=True)
class ChatTab:
    """The tab's components, so the wiring can be written apart from the layout."""

    session: gr.State
    models: list[gr.Dropdown]
    templates: list[gr.Dropdown]
    titles: list[gr.Markdown]
    bots: list[gr.Chatbot]
    stats: list[gr.Markdown]
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    regenerate: gr.Button
    clear: gr.Button
    notice: gr.Markdown
    form: list[gr.components.Component]  # system prompt, sampling settings, blind (last)
    vote: gr.Radio
    vote_button: gr.Button
    vote_json: gr.JSON


def build_chat_tab(settings: StudioSettings, selection: gr.State | None = None) -> ChatTab:
    """The Chat tab (inside a gr.Blocks / gr.Tabs), laid out and wired; with `selection`
    (build_app's per-session Selection) its model columns follow the Merge tab."""
    with gr.Tab("Chat", id="chat", elem_id="chat-tab") as block:
        tab = _layout(settings)
        _wire(tab, settings)
        seen = gr.State(None)  # the Selection columns Chat last took (None: not yet)
    if selection is not None:
        block.select(
            functools.partial(carry_to_chat, settings),
            [selection, seen],
            [*tab.models, seen],
            api_visibility="private",
            queue=False,
        )
    return tab


def _layout(settings: StudioSettings) -> ChatTab:
    choices = model_choices(settings)
    # gr.State deep-copies this for every browser session; a copy is a new, empty session.
    session = gr.State(ChatSession())
    with gr.Row():
        models = [
            gr.Dropdown(
                choices,
                value=starter_path(settings, role),
                label=f"Model {i + 1}",
                allow_custom_value=True,
            )
            for i, role in enumerate(DEFAULT_ROLES)
        ]
    with gr.Row():
        templates = [
            gr.Dropdown(
                template_choices(),
                value=AUTO_TEMPLATE,
                label=f"Chat template {i + 1}",
                allow_custom_value=True,
                info="auto: the model's own",
            )
            for i in range(MAX_COLUMNS)
        ]
    titles, bots, stats = _columns()
    with gr.Row():
        message = gr.Textbox(
            show_label=False, placeholder="Ask every model at once…", scale=5, autofocus=True
        )
        send = gr.Button("Send", variant="primary", scale=1)
    with gr.Row():
        stop = gr.Button("Stop", variant="stop")
        regenerate = gr.Button("Regenerate")
        clear = gr.Button("Clear")
    notice = gr.Markdown()
    with gr.Accordion("Generation settings", open=False):
        form = _settings_form()
    with gr.Row():
        vote = gr.Radio([*LABELS, TIE, ALL_BAD], label="Which reply is best?", scale=3)
        vote_button = gr.Button("Vote", scale=1)
    vote_json = gr.JSON(label="Vote", visible=False)
    return ChatTab(
        session=session, models=models, templates=templates, titles=titles, bots=bots,
        stats=stats, message=message, send=send, stop=stop, regenerate=regenerate, clear=clear,
        notice=notice, form=form, vote=vote, vote_button=vote_button, vote_json=vote_json,
    )  # fmt: skip


def _wire(tab: ChatTab, settings: StudioSettings) -> None:
    inputs = [*tab.models, *tab.templates, *tab.form, tab.session]
    outputs = [*tab.bots, *tab.stats, *tab.titles, tab.session]
    typed = [tab.message.submit, tab.send.click]
    gr.on(
        typed,
        on_chat_submit,
        [tab.message, *inputs],
        outputs,
        api_name="chat",
        concurrency_id="generate",
        concurrency_limit=GENERATE_CONCURRENCY,
    )
    # A second listener on the same triggers empties the box at once; /chat already has the
    # text (inputs are read when the event fires).
    gr.on(typed, lambda: "", None, [tab.message], api_visibility="private", queue=False)
    tab.regenerate.click(
        on_regenerate_click,
        inputs,
        outputs,
        api_name="chat_regenerate",
        concurrency_id="generate",
        concurrency_limit=GENERATE_CONCURRENCY,
    )
    # Not in the "generate" group: Stop must run while replies hold every slot of it.
    tab.stop.click(on_stop_click, [tab.session], [tab.notice], api_name="chat_stop")
    tab.clear.click(on_clear_click, [tab.session], outputs, api_name="chat_clear")
    tab.vote_button.click(
        bind_settings(on_vote_click, settings),
        [tab.vote, tab.session],
        [tab.vote_json, tab.session],
        api_name="chat_vote",
    ).success(
        on_vote_reveal,
        [tab.vote_json, tab.session],
        [*tab.titles, tab.notice],
        api_visibility="private",
    )
    blind = tab.form[-1]
    blind.change(on_blind_change, [blind, tab.session], [tab.notice], api_visibility="private")
    refresh = refreshed_dropdown(settings)
    for dropdown in tab.models:
        dropdown.focus(refresh, [dropdown], [dropdown], api_visibility="private")


def _columns() -> tuple[list[gr.Markdown], list[gr.Chatbot], list[gr.Markdown]]:
    """Per column: a title (model name, or "Model A" in blind mode), the chat, a stats line."""
    titles, bots, stats = [], [], []
    with gr.Row(equal_height=True):
        for label in LABELS:
            with gr.Column():
                titles.append(gr.Markdown(f"**{label}**"))
                bots.append(gr.Chatbot(label=label, show_label=False, height=420, buttons=["copy"]))
                stats.append(gr.Markdown())
    return titles, bots, stats


def _settings_form() -> list[gr.components.Component]:
    """System prompt, sampling settings and blind mode; defaults come from GenerationSettings."""
    system = gr.Textbox(label="System prompt", placeholder="empty: no system message", lines=2)
    with gr.Row():
        temperature = gr.Slider(
            0.0,
            2.0,
            value=DEFAULTS["temperature"].default,
            step=0.05,
            label="Temperature",
            info=DEFAULTS["temperature"].description,
        )
        top_p = gr.Slider(
            0.05,
            1.0,
            value=DEFAULTS["top_p"].default,
            step=0.05,
            label="top_p",
            info=DEFAULTS["top_p"].description,
        )
        max_new = gr.Slider(
            1,
            4096,
            value=DEFAULTS["max_new_tokens"].default,
            step=1,
            label="Max new tokens",
            info=DEFAULTS["max_new_tokens"].description,
        )
        seed = gr.Number(
            value=None, precision=0, minimum=0, label="Seed", info=DEFAULTS["seed"].description
        )
    blind = gr.Checkbox(
        label="Blind mode", info="columns labelled A/B/C in random order; a vote reveals them"
    )
    return [system, temperature, top_p, max_new, seed, blind]
