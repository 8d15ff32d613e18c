"""Inference: one engine protocol (transformers now, vLLM next), a shared model pool, chat prompts.

from studio.inference import ModelSpec, GenerationSettings, get_pool, stream_chat
engine = get_pool().get(ModelSpec.from_path("/models/chat"))
for chunk in stream_chat(engine, [{"role": "user", "content": "hi"}], GenerationSettings()):
    print(chunk.text, end="")
"""

from __future__ import annotations

from studio.inference.chat_format import (
    ChatMessage,
    ChatPrompt,
    Repetition,
    chat_prompt,
    detect_repetition,
    render_chat,
    resolve_template,
    template_choices,
    turn_end_marker,
)
from studio.inference.engine import (
    GenerationChunk,
    GenerationError,
    GenerationResult,
    GenerationSettings,
    InferenceEngine,
    LogLikelihood,
    ModelSpec,
    StopReason,
    chat,
    create_engine,
    generation_settings,
    resolve_engine_name,
    settings_for_prompt,
    stream_chat,
)
from studio.inference.pool import ModelPool, PoolEntry, PoolMemoryError, PoolStats, get_pool

__all__ = [
    "ChatMessage",
    "ChatPrompt",
    "GenerationChunk",
    "GenerationError",
    "GenerationResult",
    "GenerationSettings",
    "InferenceEngine",
    "LogLikelihood",
    "ModelPool",
    "ModelSpec",
    "PoolEntry",
    "PoolMemoryError",
    "PoolStats",
    "Repetition",
    "StopReason",
    "chat",
    "chat_prompt",
    "create_engine",
    "detect_repetition",
    "generation_settings",
    "get_pool",
    "render_chat",
    "resolve_engine_name",
    "resolve_template",
    "settings_for_prompt",
    "stream_chat",
    "template_choices",
    "turn_end_marker",
]
