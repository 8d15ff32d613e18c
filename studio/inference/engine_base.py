"""`TokenizedEngine`: the tokenizer-side half that both engines share, so they agree to the token.

The transformers engine (studio/inference/transformers_engine.py) and the vLLM engine
(studio/inference/vllm_engine.py) both inherit it. Encoding a prompt, the prompt-length check,
the EOS set, the pad token and lm-eval's split of a (context, continuation) pair (the module
functions `encode_pair` / `fit_pair`, which studio.evaluation.loglikelihood uses too) live here
once, which is what lets tests/test_vllm_engine.py assert that the two engines give the same
tokens, replies and scores. Also shared: the safetensors-only check before a load, the
"not loaded" error and the name/shape check of a pushed tensor.

A subclass sets `tokenizer` (property) and `_require_model()`, which returns the loaded model
as these methods read it: `.config` (`max_position_embeddings`, optional: the most tokens a
generation request may hold) and `.generation_config` (`eos_token_id`, `pad_token_id`). The
transformers engine returns its `PreTrainedModel`; the vLLM engine a record carrying both.
`max_length` is the scoring limit both engines state (studio.evaluation.loglikelihood sizes its
windows with it); the vLLM engine overrides it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from studio.errors import ModelError
from studio.inference.engine import GenerationError, GenerationSettings, ModelSpec
from studio.inference.replies import Reply, decoder
from studio.settings import StudioSettings, load_settings


class TokenizedEngine:
    """Tokenizer-side methods shared by the engines; see the module docstring."""

    def __init__(self, spec: ModelSpec, *, settings: StudioSettings | None = None) -> None:
        self.spec = spec
        self._settings = settings or load_settings()
        self._tokenizer_lock = threading.Lock()  # Rust tokenizers may not encode concurrently
        self._version = 0

    @property
    def tokenizer(self) -> Any:
        raise NotImplementedError

    @property
    def weights_version(self) -> int:
        return self._version

    @property
    def max_length(self) -> int | None:
        """Tokens one scoring forward pass reads (lm-eval's max_length): a scored context +
        continuation may be max_length + 1 tokens, as the last token is only predicted.

        From the model config (`n_positions`, `max_position_embeddings`, `n_ctx`; a multimodal
        config's `text_config`), as lm-eval reads it; None when the config names none.
        """
        config = self._require_model().config
        config = getattr(config, "text_config", None) or config
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _require_model(self) -> Any:
        raise NotImplementedError

    def _not_loaded(self) -> ModelError:
        return ModelError(
            f"model '{self.spec.name}' is not loaded (it may have been unloaded to make room "
            "for another); load it again"
        )

    def _require_safetensors(self, folder: Path) -> None:
        if any(folder.glob("*.safetensors")):
            return
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise ModelError(
                f"model '{self.spec.name}' has only pickle weights (.bin/.pt); convert it to "
                "safetensors or set STUDIO_ALLOW_PICKLE=1 if you trust its source"
            )
        raise ModelError(f"model '{self.spec.name}' has no .safetensors weights in {folder}")

    # -- generation requests ------------------------------------------------------------------

    def _prepare(
        self,
        prompt: str,
        settings: GenerationSettings,
        add_special_tokens: bool,
        cancel: threading.Event | None,
    ) -> Reply:
        started = time.perf_counter()
        model = self._require_model()
        ids = self._encode(prompt, add_special_tokens)
        if not ids:
            raise GenerationError("the prompt is empty; type a message first")
        limit = getattr(model.config, "max_position_embeddings", None)
        max_new = settings.max_new_tokens
        if limit is not None:
            if len(ids) >= limit:
                raise GenerationError(
                    f"the prompt is {len(ids)} tokens but model '{self.spec.name}' reads at most "
                    f"{limit}; clear the chat or shorten the system prompt"
                )
            max_new = min(max_new, limit - len(ids))
        seed = (
            None
            if settings.greedy
            else (settings.seed if settings.seed is not None else secrets.randbits(31))
        )
        return Reply(
            settings=settings,
            prompt_ids=ids,
            max_new_tokens=max_new,
            eos_ids=self._eos_ids(model, settings),
            pad_id=self._pad_id(model),
            seed=seed,
            decode=decoder(self.tokenizer),  # bound now: an unload must not break decoding
            cancel=cancel,
            started=started,
        )

    def _prepare_batch(
        self,
        prompts: Sequence[str],
        settings: GenerationSettings,
        add_special_tokens: bool,
        cancel: threading.Event | None,
    ) -> list[Reply]:
        """One `Reply` per prompt for `generate_batch`: greedy only, so a batch gives each prompt
        exactly what `generate` gives it alone (sampling would depend on the batch's order)."""
        if not settings.greedy:
            raise GenerationError(
                f"batched generation is greedy only but temperature is {settings.temperature}; "
                "set temperature to 0, or generate one prompt at a time"
            )
        return [self._prepare(p, settings, add_special_tokens, cancel) for p in prompts]

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        with self._tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def _eos_ids(self, model: Any, settings: GenerationSettings) -> frozenset[int]:
        configured = model.generation_config.eos_token_id
        ids = set(configured if isinstance(configured, list) else [configured])
        ids.add(self.tokenizer.eos_token_id)
        ids.update(settings.stop_token_ids)
        return frozenset(i for i in ids if i is not None)

    def _pad_id(self, model: Any) -> int:
        for candidate in (
            self.tokenizer.pad_token_id,
            model.generation_config.pad_token_id,
            self.tokenizer.eos_token_id,
        ):
            if candidate is not None:
                return int(candidate)
        return 0

    # -- scoring ------------------------------------------------------------------------------

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) split as lm-eval does (`encode_pair`), the context
        cut from the left to fit `max_length` (`fit_pair`)."""
        if not continuation:
            raise GenerationError(
                "the continuation to score is empty; give the text whose likelihood you want"
            )
        with self._tokenizer_lock:
            context_ids, continuation_ids = encode_pair(self.tokenizer, context, continuation)
        if not context_ids:  # a whitespace-only context: the first token needs a condition
            context_ids = [prefix_token_id(self.tokenizer)]
        if not continuation_ids:
            raise GenerationError(
                f"the continuation {continuation!r} encodes to no tokens; give longer text"
            )
        limit = self.max_length
        if limit is not None:  # keep the end of a pair longer than the model reads
            context_ids = fit_pair(
                context_ids, continuation_ids, limit, label=f"model '{self.spec.name}'"
            )
        return context_ids, continuation_ids

    # -- live weights -------------------------------------------------------------------------

    def _check_tensor(
        self, state: Mapping[str, torch.Tensor], name: str, tensor: torch.Tensor
    ) -> torch.Tensor:
        target = state.get(name)
        if target is None:
            raise ModelError(
                f"model '{self.spec.name}' has no tensor named '{name}'; the new weights must come "
                "from a model with the same architecture"
            )
        if tuple(target.shape) != tuple(tensor.shape):
            raise ModelError(
                f"tensor '{name}' of model '{self.spec.name}' has shape {tuple(target.shape)} but "
                f"the new one has {tuple(tensor.shape)}; merge models of the same shape"
            )
        return target


# -- lm-eval's token split (one copy: the engines and studio.evaluation.loglikelihood use it) ----


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context becomes: BOS, else EOS (lm-eval's prefix_token_id)."""
    token = tokenizer.bos_token_id
    token = tokenizer.eos_token_id if token is None else token
    if token is None:
        raise GenerationError(
            "the model's tokenizer has neither a BOS nor an EOS token to start from"
        )
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
    """(context ids, continuation ids) as lm-eval splits them.

    A context's trailing whitespace moves into the continuation, the pair is encoded whole and
    cut at the context's own encoding (`HFLM._encode_pair`); an empty context becomes the
    prefix token (BOS, else EOS). `context_ids`: `encode(tokenizer, context.rstrip())` when
    the caller already has it (one encoding of a long few-shot context serves all its choices).
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
        raise GenerationError(f"{label}: the text to score encodes to no tokens; give longer text")
    if len(continuation_ids) > max_length:
        raise GenerationError(
            f"{label}: the continuation is {len(continuation_ids)} tokens but the model reads "
            f"{max_length}; shorten it or raise max_length"
        )
    keep = max_length + 1 - len(continuation_ids)
    return context_ids[-keep:]
