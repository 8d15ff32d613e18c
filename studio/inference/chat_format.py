"""Chat prompts and reply checks shared by every engine: templates, turn-end markers, repetition.

A conversation is rendered with the model's own chat template (its tokenizer's
`chat_template`) or with an override named as in a merge recipe ("llama2", "chatml", "llama3",
"mistral", "alpaca", ... from `studio.recipes.templates`) or given as raw jinja. Rendering goes
through the tokenizer's `apply_chat_template`, so the jinja environment (trim_blocks,
lstrip_blocks, `raise_exception`, `bos_token`/`eos_token`) is exactly the one transformers and
vLLM use; the rendered text already holds its special tokens, so engines encode it with
`add_special_tokens=False`.

    prompt = chat_prompt(tokenizer, [ChatMessage(role="user", content="hi")], template="chatml")
    prompt.text, prompt.stop_token_ids       # '<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n', (5,)

`detect_repetition` flags a reply whose end loops on a phrase, the usual symptom of a broken
merge ("good benchmark, gibberish chat").
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, Field

from studio.errors import ModelError, StudioError
from studio.recipes.templates import (
    AUTO_NAME,
    chat_template_names,
    expand_chat_template,
    validate_chat_template,
)

LOG = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant"]

# Probe turns used to find what a template writes after an assistant reply; any text the
# template does not add itself works, these are unlikely to collide with markup.
_PROBE_USER = "probe question"
_PROBE_REPLY = "probe answer"


class ChatMessage(BaseModel, frozen=True):
    """One turn of a conversation."""

    role: Role = Field(description="system, user or assistant")
    content: str = Field(description="the turn's text")


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered conversation and the markers that end the assistant's turn."""

    text: str  # holds its own special tokens: encode with add_special_tokens=False
    template: str  # the jinja text used
    stop: tuple[str, ...] = ()  # turn-end markers that are several tokens
    stop_token_ids: tuple[int, ...] = ()  # turn-end markers that are one token (<|im_end|>)


@dataclass(frozen=True)
class Repetition:
    """A reply whose end repeats one phrase over and over."""

    period_tokens: int  # length of the repeated phrase
    repeats: int  # whole repetitions at the end of the reply
    span_tokens: int  # tokens covered by the loop
    phrase: str = ""  # the phrase, decoded (filled in by the engine)

    def sentence(self) -> str:
        what = "one token" if self.period_tokens == 1 else f"a {self.period_tokens}-token phrase"
        shown = f" ('{self.phrase.strip()}')" if self.phrase.strip() else ""
        return (
            f"the reply repeats {what}{shown} {self.repeats} times at its end: "
            "a sign of a broken merge or too low a temperature"
        )


def template_choices() -> list[str]:
    """Template names a user can pick; "auto" means the model's own template."""
    return chat_template_names()


@functools.cache
def _mergekit_template(name: str) -> str | None:
    """The jinja text of a template mergekit ships, or None if it ships no such file."""
    path = importlib.resources.files("mergekit._data.chat_templates") / f"{name}.jinja"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def resolve_template(model_template: str | None, override: str | None = None) -> str:
    """The jinja text to render with: the override (a name or jinja) or the model's own.

    `override` None or "auto" keeps the model's template; a name from `template_choices()` is
    looked up in `studio.recipes.templates` (Llama-2) or in mergekit's shipped files; anything
    else must be jinja text.
    """
    if override is None or override.strip() in ("", AUTO_NAME):
        if not model_template:
            raise ModelError(
                "this model has no chat template of its own; choose one by name "
                f"({', '.join(n for n in chat_template_names() if n != AUTO_NAME)})"
            )
        return model_template
    if override in chat_template_names():
        expanded = expand_chat_template(override)
        text = expanded if expanded != override else _mergekit_template(override)
        if text is None:  # a name the recipes know that mergekit no longer ships
            raise StudioError(
                f"chat template '{override}' has no jinja text here; paste it instead"
            )
        return text
    validate_chat_template(override)  # RecipeError naming the problem if it is not jinja
    return override


def render_chat(
    tokenizer: Any,
    messages: Sequence[ChatMessage | dict[str, str]],
    *,
    template: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The conversation as the model reads it, ending with the assistant's turn header."""
    text = resolve_template(getattr(tokenizer, "chat_template", None), template)
    return _render(tokenizer, _as_dicts(messages), text, add_generation_prompt)


def chat_prompt(
    tokenizer: Any,
    messages: Sequence[ChatMessage | dict[str, str]],
    *,
    template: str | None = None,
) -> ChatPrompt:
    """Render `messages` and find the marker that ends the assistant's turn in this template.

    The marker becomes a stop token when it is a single token of the vocabulary (ChatML's
    <|im_end|>, Llama-3's <|eot_id|>) and a stop string otherwise; the model's own EOS stays
    in force either way.
    """
    text = resolve_template(getattr(tokenizer, "chat_template", None), template)
    rendered = _render(tokenizer, _as_dicts(messages), text, True)
    marker = turn_end_marker(tokenizer, text)
    if marker is None or marker == getattr(tokenizer, "eos_token", None):
        return ChatPrompt(text=rendered, template=text)
    token_id = _single_token_id(tokenizer, marker)
    if token_id is not None:
        return ChatPrompt(text=rendered, template=text, stop_token_ids=(token_id,))
    return ChatPrompt(text=rendered, template=text, stop=(marker,))


def turn_end_marker(tokenizer: Any, template: str) -> str | None:
    """What `template` writes right after an assistant reply, stripped ("<|im_end|>"), or None."""
    probe = [
        {"role": "user", "content": _PROBE_USER},
        {"role": "assistant", "content": _PROBE_REPLY},
    ]
    try:
        text = _render(tokenizer, probe, template, False)
    except StudioError:
        return None
    _, found, after = text.rpartition(_PROBE_REPLY)
    marker = after.strip() if found else ""
    return marker or None


def detect_repetition(
    token_ids: Sequence[int],
    *,
    min_repeats: int = 3,
    min_span: int = 16,
    max_period: int = 64,
) -> Repetition | None:
    """The shortest phrase the end of `token_ids` loops on, if the loop is long enough.

    A loop of period p covers the tail positions i with ids[i] == ids[i - p]; a cut-off last
    repetition (max_new_tokens hit mid-phrase) still counts. Flagged when the loop spans at
    least `min_span` tokens and `min_repeats` whole repetitions.
    """
    ids = list(token_ids)
    for period in range(1, min(max_period, len(ids) // 2) + 1):
        run = 0  # tail positions that equal the token one period earlier
        while run < len(ids) - period and ids[-1 - run] == ids[-1 - run - period]:
            run += 1
        span = run + period
        repeats = span // period
        if span >= min_span and repeats >= min_repeats:
            return Repetition(period_tokens=period, repeats=repeats, span_tokens=span)
    return None


def _as_dicts(messages: Sequence[ChatMessage | dict[str, str]]) -> list[dict[str, str]]:
    out = []
    for message in messages:
        turn = message if isinstance(message, ChatMessage) else ChatMessage.model_validate(message)
        out.append({"role": turn.role, "content": turn.content})
    if not out:
        raise StudioError("the conversation is empty; type a message first")
    return out


def _render(
    tokenizer: Any, messages: list[dict[str, str]], template: str, add_generation_prompt: bool
) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except jinja2.TemplateError as error:
        # raise_exception(...) in a template ("roles must alternate") lands here.
        raise StudioError(f"the chat template cannot render this conversation: {error}") from error


def _single_token_id(tokenizer: Any, marker: str) -> int | None:
    ids = tokenizer.encode(marker, add_special_tokens=False)
    if len(ids) == 1 and ids[0] != getattr(tokenizer, "unk_token_id", None):
        return int(ids[0])
    return None
