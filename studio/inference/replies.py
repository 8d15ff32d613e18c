"""Reply bookkeeping shared by the engines: one request's state, and its ids turned into text.

Both engines (studio/inference/transformers_engine.py, studio/inference/vllm_engine.py) build
a `Reply` for each generation request (`TokenizedEngine._prepare`, studio.inference.engine_base)
and finish it the same way, so the same tokens give the same `GenerationResult`:

- `Reply.finish` strips the EOS token, cuts at the first stop string (and to the fewest tokens
  whose text holds it), names the stop reason, times the reply and looks for repetition;
- `TextAssembler` turns streamed token ids into text deltas whose concatenation is exactly the
  finished text (it holds back a split multi-byte character and a possible stop-string start);
- `decoder`, `first_stop` and `decode_speed` are the pieces both use.

    reply = engine._prepare("the sun", GenerationSettings(), True, None)
    text = TextAssembler(reply.decode, reply.settings.stop, reply.eos_ids)
    deltas = [text.push(token) for token in new_ids]
    result = reply.finish(new_ids, times, engine="vllm")
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from studio.inference.chat_format import detect_repetition
from studio.inference.engine import GenerationResult, GenerationSettings, StopReason

LOG = logging.getLogger(__name__)


@dataclass
class Reply:
    """One generation request, its hooks' shared state, and how to turn ids into a result."""

    settings: GenerationSettings
    prompt_ids: list[int]
    max_new_tokens: int
    eos_ids: frozenset[int]
    pad_id: int
    seed: int | None
    decode: Callable[[Sequence[int]], str]
    cancel: threading.Event | None
    started: float
    abandoned: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False

    def should_cancel(self) -> bool:
        return self.abandoned.is_set() or (self.cancel is not None and self.cancel.is_set())

    def finish(self, new_ids: list[int], times: list[float], *, engine: str) -> GenerationResult:
        reason: StopReason = "length"
        ids = list(new_ids)
        if ids and ids[-1] in self.eos_ids:
            reason, ids = "eos", ids[:-1]
        text = self.decode(ids)
        cut = first_stop(text, self.settings.stop)
        if cut is not None:
            reason, text = "stop", text[:cut]
            ids = ids[: self._tokens_until_stop(ids)]
        elif reason == "length" and self.cancelled:
            reason = "cancelled"
        seconds = (times[-1] if times else time.perf_counter()) - self.started
        repetition = detect_repetition(ids)
        if repetition is not None:
            repetition = replace(repetition, phrase=self.decode(ids[-repetition.period_tokens :]))
        return GenerationResult(
            text=text,
            token_ids=tuple(ids),
            prompt_tokens=len(self.prompt_ids),
            stop_reason=reason,
            seconds=seconds,
            first_token_seconds=times[0] - self.started if times else None,
            tokens_per_second=decode_speed(times, seconds),
            seed=self.seed,
            repetition=repetition,
            engine=engine,
        )

    def _tokens_until_stop(self, ids: list[int]) -> int:
        """The fewest leading tokens whose text holds a stop string (that text grows with k)."""
        keys = range(1, len(ids) + 1)
        return (
            bisect.bisect_left(
                keys,
                True,
                key=lambda k: first_stop(self.decode(ids[:k]), self.settings.stop) is not None,
            )
            + 1
        )


def decoder(tokenizer: Any) -> Callable[[Sequence[int]], str]:
    """ids -> text with special tokens skipped, bound to this tokenizer (survives an unload)."""

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    return decode


def first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(found) if found else None


def decode_speed(times: list[float], seconds: float) -> float:
    """Tokens per second after the first token (prefill excluded); whole-request rate for one token."""
    if len(times) >= 2 and times[-1] > times[0]:
        return (len(times) - 1) / (times[-1] - times[0])
    return len(times) / seconds if seconds > 0 else 0.0


class TextAssembler:
    """Turns streamed token ids into text deltas whose concatenation is the final text.

    Holds back a trailing partial character (U+FFFD from a split multi-byte token) and any
    tail that could be the start of a stop string, since the final text is cut before it.
    """

    def __init__(
        self, decode: Callable[[Sequence[int]], str], stop: Sequence[str], eos_ids: frozenset[int]
    ) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._eos_ids = eos_ids
        self._ids: list[int] = []
        self._emitted = ""

    @property
    def tokens(self) -> int:
        return len(self._ids)

    def push(self, token_id: int) -> str:
        if token_id in self._eos_ids:
            return ""  # ends the reply; never shown
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if not text.startswith(self._emitted):
            return ""  # the decoder revised earlier text; finish() reconciles
        delta = text[len(self._emitted) : self._safe_end(text)]
        self._emitted += delta
        return delta

    def finish(self, final_text: str) -> str:
        if not final_text.startswith(self._emitted):
            LOG.warning(
                "streamed text diverged from the final text; the final text is authoritative"
            )
            return ""
        return final_text[len(self._emitted) :]

    def _safe_end(self, text: str) -> int:
        end = first_stop(text, self._stop)
        end = len(text) if end is None else end
        # The longest tail that some stop string starts with may yet become that stop string.
        hold = max(
            (
                n
                for s in self._stop
                for n in range(1, min(len(s) - 1, end) + 1)
                if text[end - n : end] == s[:n]
            ),
            default=0,
        )
        end -= hold
        while end > len(self._emitted) and text[end - 1] == "\ufffd":
            end -= 1
        return max(end, len(self._emitted))
