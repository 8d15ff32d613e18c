"""Token-level helpers for scoring: lm-eval's token split, rolling windows, the fast path.

lm-eval-harness is the reference for every convention here (it is not imported):

- `encode_pair` / `fit_pair` (defined once in studio.inference.engine_base, where the engines
  use them too): a context's trailing whitespace moves into the continuation, the pair is
  encoded whole and cut at the context's own encoding (`HFLM._encode_pair`); an empty context
  becomes the prefix token (BOS, else EOS); a pair longer than the window keeps its end;
- `rolling_windows`: a long text is scored in disjoint windows of `max_length` predictions,
  each with as much preceding context as fits (`loglikelihood_rolling`,
  `get_rolling_token_windows(context_len=1)` + `make_disjoint_window`).

Engines that implement `TokenGroupScorer` (the transformers and vLLM engines) get token-exact
windows and the shared-prefix fast path; any other `InferenceEngine` is scored through its
string protocol `score_loglikelihoods` (windows of a long text are decoded back to text there).
`model_max_length` takes the engine's own `max_length` when it states one (both engines do:
`TokenizedEngine.max_length` reads the model config; vLLM's is max_model_len - 2, see
studio.inference.vllm_engine).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from studio.errors import StudioError
from studio.inference.engine import InferenceEngine, LogLikelihood
from studio.inference.engine_base import encode, encode_pair, fit_pair, prefix_token_id

LOG = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048  # lm-eval's default when neither config nor tokenizer names one
_TOKENIZER_INFINITY = 10**8  # tokenizers without a limit report ~1e30

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "ScoringError",
    "TokenGroup",
    "TokenGroupScorer",
    "encode",
    "encode_pair",
    "fit_pair",
    "model_max_length",
    "prefix_token_id",
    "rolling_windows",
    "score_groups",
    "token_scorer",
]

TokenGroup = tuple[list[int], list[list[int]]]  # (context ids, [continuation ids, ...])


class ScoringError(StudioError):
    """A task cannot be scored as asked (text too long for the model, bad settings)."""


@runtime_checkable
class TokenGroupScorer(Protocol):
    """An engine that scores token ids directly, each group's context run once."""

    def score_token_groups(
        self,
        groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
        *,
        batch_size: int = 8,
    ) -> list[list[LogLikelihood]]: ...


def token_scorer(engine: InferenceEngine) -> TokenGroupScorer | None:
    """The engine as a TokenGroupScorer when it is one (the fast path), else None."""
    return engine if isinstance(engine, TokenGroupScorer) else None


def model_max_length(engine: InferenceEngine, override: int | None = None) -> int:
    """Tokens the model reads at once (lm-eval's max_length): `override`, else the engine's
    `max_length` (both engines read it from the model config: `TokenizedEngine.max_length`),
    else the tokenizer's, else lm-eval's default."""
    if override is not None:
        return override
    stated = getattr(engine, "max_length", None)
    if isinstance(stated, int) and stated > 0:
        return stated
    limit = getattr(engine.tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _TOKENIZER_INFINITY:
        return limit
    return DEFAULT_MAX_LENGTH


def rolling_windows(
    prefix: list[int], tokens: list[int], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """Disjoint (context, predicted) windows that predict every token of `tokens` once.

    With a one-token prefix this is exactly lm-eval's rolling loglikelihood. A longer prefix (a
    prompt) is kept whole in the first window when it fits, but the first window always
    predicts at least half a window; later windows predict `max_length` tokens each, with the
    preceding tokens as context, and the last one has a full context.
    """
    seq = prefix + tokens  # positions len(prefix).. are predicted
    end_of_text = len(seq)
    windows = []
    start = len(prefix)
    step = max(max_length + 1 - len(prefix), max_length // 2, 1)
    while start < end_of_text:
        end = min(end_of_text, start + step)
        inputs = seq[max(0, end - 1 - max_length) : end - 1]
        context = inputs[: len(inputs) - (end - start - 1)]
        windows.append((context, seq[start:end]))
        start, step = end, max_length
    return windows


def score_groups(
    engine: InferenceEngine,
    groups: Sequence[TokenGroup],
    *,
    batch_size: int,
) -> list[list[LogLikelihood]]:
    """Log-likelihoods for token groups on any engine (fast path when the engine has one)."""
    scorer = token_scorer(engine)
    if scorer is not None:
        return scorer.score_token_groups(groups, batch_size=batch_size)
    # The string protocol: decode each window (exact for plain texts; a tokenizer that does
    # not round-trip its own ids may shift a boundary token).
    tokenizer = engine.tokenizer
    pairs = [_text_pair(tokenizer, ctx, cont) for ctx, conts in groups for cont in conts]
    flat = iter(engine.score_loglikelihoods(pairs, batch_size=batch_size))
    return [[next(flat) for _ in conts] for _, conts in groups]


def _text_pair(tokenizer: Any, context: list[int], continuation: list[int]) -> tuple[str, str]:
    # Decode the whole window and cut it after the context's text, so the spacing at the join
    # is the decoder's. A leading prefix token is dropped: "" is what engines read as "start
    # of text" (they add the prefix token themselves).
    if context[:1] == [prefix_token_id(tokenizer)]:
        context = context[1:]
    head = str(tokenizer.decode(context))
    whole = str(tokenizer.decode(context + continuation))
    if not whole.startswith(head):  # the decoder merged across the join; keep the whole text
        return "", whole
    return head, whole[len(head) :]
