"""Token-level helpers for scoring: lm-eval's token split, rolling windows, the fast path.

lm-eval-harness is the reference for every convention here (it is not imported):

- `encode_pair`: a context's trailing whitespace moves into the continuation, the pair is
  encoded whole and cut at the context's own encoding (`HFLM._encode_pair`); an empty context
  becomes the prefix token (BOS, else EOS); a pair longer than the window keeps its end;
- `rolling_windows`: a long text is scored in disjoint windows of `max_length` predictions,
  each with as much preceding context as fits (`loglikelihood_rolling`,
  `get_rolling_token_windows(context_len=1)` + `make_disjoint_window`).

Engines that implement `TokenGroupScorer` (the transformers and vLLM engines) get token-exact
windows and the shared-prefix fast path; any other `InferenceEngine` is scored through its
string protocol `score_loglikelihoods` (windows of a long text are decoded back to text there).
`model_max_length` takes the engine's own `max_length` when it states one (both engines do:
`TokenizedEngine.max_length`; vLLM's is max_model_len - 2, see studio.inference.vllm_engine).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from studio.errors import StudioError
from studio.inference.engine import InferenceEngine, LogLikelihood

LOG = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048  # lm-eval's default when neither config nor tokenizer names one
_TOKENIZER_INFINITY = 10**8  # tokenizers without a limit report ~1e30

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
    `max_length`, else its model config's, else the tokenizer's, else lm-eval's default."""
    if override is not None:
        return override
    stated = getattr(engine, "max_length", None)
    if isinstance(stated, int) and stated > 0:
        return stated
    config = getattr(getattr(engine, "model", None), "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(engine.tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _TOKENIZER_INFINITY:
        return limit
    return DEFAULT_MAX_LENGTH


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context becomes: BOS, else EOS (lm-eval's prefix_token_id)."""
    token = tokenizer.bos_token_id
    token = tokenizer.eos_token_id if token is None else token
    if token is None:
        raise ScoringError("the model's tokenizer has neither a BOS nor an EOS token to start from")
    return int(token)


def encode(tokenizer: Any, text: str) -> list[int]:
    """The tokenizer's own encoding (special tokens as it adds them; none if the text has BOS)."""
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


def encode_pair(
    tokenizer: Any, context: str, continuation: str, *, context_ids: list[int] | None = None
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval splits them (see the module docstring).

    `context_ids`: `encode(tokenizer, context.rstrip())` when the caller already has it (one
    encoding of a long few-shot context serves all its choices).
    """
    if not context:
        return [prefix_token_id(tokenizer)], encode(tokenizer, continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    if context_ids is None:
        context_ids = encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


def fit_pair(
    context_ids: list[int], continuation_ids: list[int], max_length: int, *, label: str
) -> list[int]:
    """The context, cut from the left so context + continuation - 1 fits (lm-eval's rule)."""
    if not continuation_ids:
        raise ScoringError(f"{label}: the text to score encodes to no tokens; give longer text")
    if len(continuation_ids) > max_length:
        raise ScoringError(
            f"{label}: the continuation is {len(continuation_ids)} tokens but the model reads "
            f"{max_length}; shorten it or raise max_length"
        )
    keep = max_length + 1 - len(continuation_ids)
    return context_ids[-keep:]


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
