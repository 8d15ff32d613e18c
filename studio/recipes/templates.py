"""Chat templates a recipe can name: mergekit's shipped ones, "auto", and Llama-2's.

mergekit's `chat_template:` takes a name of a template it ships (mergekit/_data/chat_templates),
"auto" (the most common template among the input models) or raw jinja text. It does not ship
Llama-2-chat's `[INST]` format, which the studio's 7B users need (Llama-2-7b-chat, Meditron),
so `LLAMA2_CHAT_TEMPLATE` is written here. On export the name "llama2" becomes that jinja text
(mergekit accepts raw jinja); on import that exact text becomes "llama2" again.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import re

import jinja2

from studio.errors import RecipeError

LOG = logging.getLogger(__name__)

LLAMA2_NAME = "llama2"
AUTO_NAME = "auto"

# Llama-2-chat, as Meta documents it and Hugging Face's Llama-2-7b-chat-hf tokenizer ships it:
#   <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user_1} [/INST] {assistant_1} </s><s>[INST] {user_2} [/INST]
# The system prompt lives inside the first user turn; roles must alternate user/assistant.
# Every tag strips the whitespace around it ({%- -%}), so the line breaks below are layout only
# and the YAML export shows the template as a readable block.
LLAMA2_CHAT_TEMPLATE = "\n".join(
    [
        "{%- if messages[0]['role'] == 'system' -%}",
        "    {%- set loop_messages = messages[1:] -%}",
        "    {%- set system_message = messages[0]['content'] -%}",
        "{%- else -%}",
        "    {%- set loop_messages = messages -%}",
        "    {%- set system_message = false -%}",
        "{%- endif -%}",
        "{%- for message in loop_messages -%}",
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}",
        "        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}",
        "    {%- endif -%}",
        "    {%- if loop.index0 == 0 and system_message != false -%}",
        "        {%- set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] -%}",
        "    {%- else -%}",
        "        {%- set content = message['content'] -%}",
        "    {%- endif -%}",
        "    {%- if message['role'] == 'user' -%}",
        "        {{- bos_token + '[INST] ' + content | trim + ' [/INST]' -}}",
        "    {%- elif message['role'] == 'assistant' -%}",
        "        {{- ' ' + content | trim + ' ' + eos_token -}}",
        "    {%- endif -%}",
        "{%- endfor -%}",
    ]
)

# transformers' own {% generation %} block (marks assistant tokens for training masks); plain
# jinja does not know it, so it is removed before the syntax check.
_GENERATION_TAG = re.compile(r"{%-?\s*(end)?generation\s*-?%}")

# mergekit treats a value as raw jinja only if it has a "{" and is at least this long.
_MIN_JINJA_LENGTH = 20


@functools.cache
def _mergekit_names() -> tuple[str, ...]:
    folder = importlib.resources.files("mergekit._data.chat_templates")
    return tuple(
        sorted(p.name.removesuffix(".jinja") for p in folder.iterdir() if p.name.endswith(".jinja"))
    )


def chat_template_names() -> list[str]:
    """Names a recipe may use: "auto", then mergekit's shipped templates and "llama2", sorted."""
    return [AUTO_NAME, *sorted({*_mergekit_names(), LLAMA2_NAME})]


def expand_chat_template(name_or_text: str) -> str:
    """What mergekit's `chat_template:` gets: "llama2" becomes its jinja; all else is unchanged.

    mergekit resolves its own names and "auto" itself; if it ever ships a llama2 template,
    its name wins and is passed through.
    """
    if name_or_text == LLAMA2_NAME and LLAMA2_NAME not in _mergekit_names():
        return LLAMA2_CHAT_TEMPLATE
    return name_or_text


def collapse_chat_template(text: str) -> str:
    """The inverse of `expand_chat_template`: Llama-2's exact jinja text becomes "llama2"."""
    if text.strip() == LLAMA2_CHAT_TEMPLATE.strip():
        return LLAMA2_NAME
    return text


def validate_chat_template(value: str | None) -> None:
    """RecipeError unless `value` is empty, a known name or jinja that parses."""
    if value is None or value in chat_template_names():
        return
    if "{" not in value or len(value) < _MIN_JINJA_LENGTH:
        raise RecipeError(
            f"chat_template '{value}' is neither a known template ({', '.join(chat_template_names())}) "
            "nor jinja text; choose a name or paste the template's jinja"
        )
    try:
        # transformers renders templates with the loopcontrols extension ({% break %}).
        env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
        env.parse(_GENERATION_TAG.sub("", value))
    except jinja2.TemplateSyntaxError as error:
        raise RecipeError(
            f"chat_template is not valid jinja: {error.message} (line {error.lineno}); fix the template text"
        ) from error
