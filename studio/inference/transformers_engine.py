"""The transformers engine: `InferenceEngine` over `AutoModelForCausalLM` (CPU or GPU).

Generation runs `model.generate` with three studio hooks:

- a token streamer that timestamps every new token (time to first token, tokens/s) and, when
  streaming, hands it to the consumer through a queue while `generate` runs in a worker thread;
- a stopping criterion for stop strings and for cancel (Stop button, or a consumer that walks
  away from the stream), checked after every token;
- sampling done by the studio's own logits processor with a private `torch.Generator`:
  `generate` then runs greedy over a distribution with one finite entry. torch's global RNG is
  shared by every thread, so three columns sampling at once with `do_sample=True` would draw
  from one interleaved stream; a generator per request makes "same seed -> same reply" hold
  under concurrency.

`generate_batch` (greedy only; chat-QA scoring) runs many prompts through one left-padded
`generate` call per batch, with a per-row stopping criterion for stop strings and each row's
own token limit; each reply equals what `generate` gives that prompt alone.

One lock per engine serialises generation, scoring, weight replacement and unload: weights
written in place must never change in the middle of a reply, and on a CPU two forward passes
only compete for the same cores. Different models run in parallel.

Encoding, the prompt check, EOS/pad tokens and lm-eval's token split come from `TokenizedEngine`
(studio.inference.engine_base); a reply is finished and streamed as text by
studio.inference.replies. Both are shared with the vLLM engine.

    engine = TransformersEngine(ModelSpec.from_path("/models/chat")); engine.load()
    engine.generate("the capital of france is", GenerationSettings(temperature=0)).text
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from studio.errors import ModelError
from studio.hf_loading import LOAD_LOCK
from studio.inference.engine import (
    GenerationChunk,
    GenerationResult,
    GenerationSettings,
    LogLikelihood,
    ModelSpec,
    NamedTensors,
    weights_bytes,
)
from studio.inference.engine_base import TokenizedEngine
from studio.inference.packing import group_length, pack_groups, scored_positions_only
from studio.inference.replies import Reply, TextAssembler, first_stop
from studio.settings import StudioSettings

LOG = logging.getLogger(__name__)

_STOP_WINDOW_TOKENS = 16  # extra tokens decoded around a stop string when checking for it


class TransformersEngine(TokenizedEngine):
    """One model loaded with transformers; see the module docstring."""

    engine_name = "transformers"

    def __init__(self, spec: ModelSpec, *, settings: StudioSettings | None = None) -> None:
        super().__init__(spec, settings=settings)
        self._lock = threading.Lock()  # model use: generate, score, replace, unload
        self._model: Any = None
        self._tokenizer: Any = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise self._not_loaded()
        return self._tokenizer

    @property
    def model(self) -> Any:
        """The loaded `PreTrainedModel` (for `LiveMerger.merge_into`; prefer `replace_weights`)."""
        if self._model is None:
            raise self._not_loaded()
        return self._model

    def estimate_memory_bytes(self) -> int:
        return weights_bytes(self.spec)

    def memory_bytes(self) -> int:
        """Bytes of the loaded weights and buffers (tied tensors counted once)."""
        model = self.model
        seen: set[int] = set()
        total = 0
        for tensor in [*model.parameters(), *model.buffers()]:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        return total

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            started = time.perf_counter()
            tokenizer, model = self._load_files()
            model.to(self.spec.torch_device()).eval()
            self._tokenizer, self._model = tokenizer, model
            self._version += 1
        LOG.info("loaded %s in %.1f s", self.spec.name, time.perf_counter() - started)

    def unload(self) -> None:
        with self._lock:  # waits for a running reply to finish
            if self._model is None:
                return
            device = self._model.device
            self._model = None
            self._tokenizer = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        LOG.info("unloaded %s", self.spec.name)

    def _load_files(self) -> tuple[Any, Any]:
        folder = Path(self.spec.path)
        common: dict[str, Any] = {"trust_remote_code": self._settings.trust_remote_code}
        if self.spec.gguf_file:
            common["gguf_file"] = self.spec.gguf_file
        model_kwargs = dict(common)
        if not self.spec.gguf_file and not self._settings.allow_pickle:
            self._require_safetensors(folder)
            model_kwargs["use_safetensors"] = True
        dtype = "auto" if self.spec.dtype == "auto" else getattr(torch, self.spec.dtype)
        try:
            with LOAD_LOCK:  # from_pretrained is not thread-safe: see studio.hf_loading
                tokenizer = AutoTokenizer.from_pretrained(str(folder), **common)
                model = AutoModelForCausalLM.from_pretrained(
                    str(folder), dtype=dtype, **model_kwargs
                )
        except (OSError, ValueError, KeyError) as error:
            raise ModelError(
                f"cannot load model '{self.spec.name}' from {folder}: {error}; check that the "
                "folder holds a complete causal language model and its tokenizer"
            ) from error
        return tokenizer, model

    def _require_model(self) -> Any:
        if self._model is None:
            raise self._not_loaded()
        return self._model

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        *,
        add_special_tokens: bool = True,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        reply = self._prepare(prompt, settings or GenerationSettings(), add_special_tokens, cancel)
        return self._run(reply, sink=None)

    def stream(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        *,
        add_special_tokens: bool = True,
        cancel: threading.Event | None = None,
    ) -> Iterator[GenerationChunk]:
        # Prepared eagerly so a bad request raises here, not at the first next().
        reply = self._prepare(prompt, settings or GenerationSettings(), add_special_tokens, cancel)
        return self._stream(reply)

    def _stream(self, reply: Reply) -> Iterator[GenerationChunk]:
        sink: queue.Queue[int | _Done] = queue.Queue()
        worker = threading.Thread(
            target=self._run_into,
            args=(reply, sink),
            name=f"generate-{self.spec.name}",
            daemon=True,
        )
        worker.start()
        text = TextAssembler(reply.decode, reply.settings.stop, reply.eos_ids)
        try:
            while True:
                item = sink.get()
                if isinstance(item, _Done):
                    if item.error is not None:
                        raise item.error
                    assert item.result is not None  # _run_into sends one of the two
                    tail = text.finish(item.result.text)
                    yield GenerationChunk(
                        tail, item.result.tokens, item.result.seconds, item.result
                    )
                    return
                delta = text.push(item)
                if delta:
                    yield GenerationChunk(delta, text.tokens, time.perf_counter() - reply.started)
        finally:
            # A consumer that stops iterating (closed tab, Stop) stops the model at its next token.
            reply.abandoned.set()

    def _run_into(self, reply: Reply, sink: queue.Queue[int | _Done]) -> None:
        try:
            sink.put(_Done(result=self._run(reply, sink)))
        except BaseException as error:  # handed to the consumer's thread, which re-raises it
            sink.put(_Done(error=error))

    def _run(self, reply: Reply, sink: queue.Queue[int | _Done] | None) -> GenerationResult:
        clock = _TokenClock(sink)
        with self._lock:
            model = self._require_model()
            prompt = torch.tensor([reply.prompt_ids], device=model.device)  # (1, T)
            output = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=reply.max_new_tokens,
                # Sampling is the _SeededSampler's job (see module docstring); these override
                # any sampling defaults in the model's generation_config.
                do_sample=False,
                temperature=1.0,
                top_p=1.0,
                top_k=50,
                repetition_penalty=reply.settings.repetition_penalty,
                eos_token_id=sorted(reply.eos_ids),
                pad_token_id=reply.pad_id,
                logits_processor=LogitsProcessorList(_processors(reply)),
                stopping_criteria=StoppingCriteriaList([_StopCheck(reply)]),
                streamer=clock,
            )
        new_ids = output[0, len(reply.prompt_ids) :].tolist()
        return reply.finish(new_ids, clock.times, engine=self.engine_name)

    def generate_batch(
        self,
        prompts: Sequence[str],
        settings: GenerationSettings,
        *,
        add_special_tokens: bool = True,
        batch_size: int = 8,
        cancel: threading.Event | None = None,
    ) -> list[GenerationResult]:
        """Greedy replies to many prompts, `batch_size` prompts per left-padded `generate` call.

        Each result equals `generate(prompt, settings)` alone (tests/test_chat_qa.py checks it
        in fp32): left padding with an attention mask keeps every row's positions and
        attention its own, and greedy decoding needs no random draws. A row that has stopped
        (EOS, a stop string) is padded by `generate` until the longest row ends; its padding is
        cut off before `Reply.finish`.
        """
        replies = self._prepare_batch(prompts, settings, add_special_tokens, cancel)
        # Similar lengths in one batch keep padding small; results go back in prompt order.
        order = sorted(range(len(replies)), key=lambda i: -len(replies[i].prompt_ids))
        results: dict[int, GenerationResult] = {}
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            for i, result in zip(batch, self._run_batch([replies[i] for i in batch]), strict=True):
                results[i] = result
        return [results[i] for i in range(len(replies))]

    def _run_batch(self, replies: Sequence[Reply]) -> list[GenerationResult]:
        first = replies[0]  # every reply shares the settings, EOS set and pad id
        width = max(len(r.prompt_ids) for r in replies)
        stops = _BatchStop(replies, width)
        with self._lock:
            model = self._require_model()
            ids = torch.full((len(replies), width), first.pad_id, dtype=torch.long)  # (B, T)
            mask = torch.zeros_like(ids)
            for b, reply in enumerate(replies):
                ids[b, width - len(reply.prompt_ids) :] = torch.tensor(reply.prompt_ids)
                mask[b, width - len(reply.prompt_ids) :] = 1
            output = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=max(r.max_new_tokens for r in replies),
                do_sample=False,  # greedy (_prepare_batch refuses anything else)
                temperature=1.0,
                top_p=1.0,
                top_k=50,
                repetition_penalty=first.settings.repetition_penalty,
                eos_token_id=sorted(first.eos_ids),
                pad_token_id=first.pad_id,
                stopping_criteria=StoppingCriteriaList([stops]),
            )  # (B, T + new)
        finished = time.perf_counter()
        out = []
        for b, reply in enumerate(replies):
            new_ids = output[b, width:].tolist()[: stops.ended[b] or reply.max_new_tokens]
            # Up to and including the first EOS: what `generate` alone would have returned.
            end = next((k + 1 for k, t in enumerate(new_ids) if t in reply.eos_ids), len(new_ids))
            new_ids = new_ids[: min(end, reply.max_new_tokens)]
            out.append(reply.finish(new_ids, [finished] * len(new_ids), engine=self.engine_name))
        return out

    # -- scoring ------------------------------------------------------------------------------

    def score_loglikelihood(self, context: str, continuation: str) -> LogLikelihood:
        return self.score_loglikelihoods([(context, continuation)])[0]

    def score_loglikelihoods(
        self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8
    ) -> list[LogLikelihood]:
        """log P(continuation | context) for each pair, batched by similar length."""
        encoded = [self._encode_pair(context, continuation) for context, continuation in pairs]
        # Similar lengths in one batch keep padding (and kept logits) small.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
        scored: dict[int, LogLikelihood] = {}
        with self._lock:
            model = self._require_model()
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                for i, result in zip(
                    batch, self._score_batch(model, [encoded[i] for i in batch]), strict=True
                ):
                    scored[i] = result
        return [scored[i] for i in range(len(encoded))]

    def _score_batch(
        self, model: Any, pairs: list[tuple[list[int], list[int]]]
    ) -> list[LogLikelihood]:
        # The model reads context + continuation minus its last token; right padding keeps every
        # row's positions from 0, and causal attention never lets a real token see a pad.
        rows = [(ctx + cont)[:-1] for ctx, cont in pairs]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad_id(model), dtype=torch.long)  # (B, T)
        mask = torch.zeros_like(ids)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = 1
        # Logits only from the first position any continuation needs (saves B x T x V memory).
        first = min(len(row) - len(cont) for row, (_, cont) in zip(rows, pairs, strict=True))
        kwargs = {"logits_to_keep": width - first} if _accepts(model, "logits_to_keep") else {}
        with torch.no_grad():
            logits = model(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **kwargs
            ).logits
        offset = width - logits.shape[1]  # position of logits[:, 0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, T', V)
        out = []
        for b, (row, (ctx, cont)) in enumerate(zip(rows, pairs, strict=True)):
            start = len(row) - len(cont) - offset
            slice_ = logprobs[b, start : start + len(cont)]  # (K, V)
            target = torch.tensor(cont, device=slice_.device)
            token_logprobs = slice_.gather(1, target[:, None]).squeeze(1)
            greedy = bool((slice_.argmax(dim=-1) == target).all())
            out.append(
                LogLikelihood(tuple(ctx), tuple(cont), tuple(token_logprobs.tolist()), greedy)
            )
        return out

    def score_token_groups(
        self,
        groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
        *,
        batch_size: int = 8,
    ) -> list[list[LogLikelihood]]:
        """Log-likelihoods of continuations sharing a context, each context run once.

        `groups` holds (context ids, [continuation ids, ...]); token ids must already fit the
        model (the caller truncates). Up to `batch_size` groups run in ONE forward pass
        (`pack_groups`): the context prefix the whole batch shares (few-shot examples) once
        per row, then each group's own context followed by all its continuations minus their
        last tokens, groups packed several to a row where they fit, behind a block attention
        mask (a token sees the shared prefix, its own group's context and its own
        continuation's earlier tokens only). The output layer runs only on the positions that
        predict a scored token (`scored_positions_only`). The values equal
        `score_loglikelihoods` on the same tokens (to float rounding;
        tests/test_score_fast_path.py) while each multiple-choice question's context is
        computed once, not once per option: the scoring fast path.

        Why one packed pass: on a CPU the time is about the columns pushed through the weights
        plus a fixed cost per forward call (SmolLM2-135M fp32, one thread: ~0.1 s + 2.6 ms a
        column). A second pass for the continuations over the contexts' KV cache paid that
        fixed cost twice per batch, and rows padded to the longest question added ~50% columns
        on short questions (benchmarks/score.py).
        """
        results: list[list[LogLikelihood]] = [[] for _ in groups]
        # Similar lengths in one batch pack tightly.
        order = sorted(range(len(groups)), key=lambda g: -group_length(groups[g]))
        with self._lock, torch.no_grad():
            model = self._require_model()
            pad, device = self._pad_id(model), model.device
            dtype = next(model.parameters()).dtype
            for start in range(0, len(order), batch_size):
                batch = [groups[g] for g in order[start : start + batch_size]]
                packed = pack_groups(batch, pad)
                rows, cols = packed.rows.to(device), packed.cols.to(device)
                with scored_positions_only(model, rows, cols) as hooked:
                    logits = model(
                        input_ids=packed.ids.to(device),
                        attention_mask=packed.attention_mask(dtype).to(device),
                        position_ids=packed.positions.to(device),
                        use_cache=False,
                    ).logits
                # (N, V): the hook gave the scored positions only; else pick them out
                logits = logits[0] if hooked.fired else logits[rows, cols]
                logprobs = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
                targets = packed.targets.to(device)  # (N,)
                picked = logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
                hits = (logprobs.argmax(dim=-1) == targets).tolist()
                at = 0
                for g, (ctx, conts) in enumerate(batch):
                    for cont in conts:
                        n = len(cont)
                        results[order[start + g]].append(
                            LogLikelihood(
                                tuple(ctx),
                                tuple(cont),
                                tuple(picked[at : at + n]),
                                all(hits[at : at + n]),
                            )
                        )
                        at += n
        return results

    # -- live weights -------------------------------------------------------------------------

    def replace_weights(self, named_tensors: NamedTensors) -> int:
        """Copy new values into the loaded parameters, by checkpoint name; returns how many.

        Names and shapes of a mapping are all checked before anything is written; tensors from
        an iterable are checked as they arrive (a later bad name leaves earlier ones written).
        Tied parameters (lm_head sharing the embedding) keep the embedding's value, as
        transformers does when it loads a checkpoint holding both.
        """
        with self._lock:
            model = self._require_model()
            state = model.state_dict(keep_vars=True)
            primary: dict[int, str] = {}
            for name, tensor in state.items():
                primary.setdefault(tensor.data_ptr(), name)
            if isinstance(named_tensors, Mapping):
                for name, tensor in named_tensors.items():
                    self._check_tensor(state, name, tensor)
                items = named_tensors.items()
            else:
                items = named_tensors
            written = 0
            given: set[str] = set()
            with torch.no_grad():
                for name, tensor in items:
                    target = self._check_tensor(state, name, tensor)
                    owner = primary[target.data_ptr()]
                    if owner != name and owner in given:
                        continue  # the tied alias of a tensor already written
                    target.copy_(tensor.to(device=target.device, dtype=target.dtype))
                    given.add(name)
                    written += 1
            self._version += 1
        LOG.info(
            "replaced %d tensors of %s (weights version %d)", written, self.spec.name, self._version
        )
        return written


# -- generation helpers -----------------------------------------------------------------------


def _processors(reply: Reply) -> list[LogitsProcessor]:
    if reply.seed is None:
        return []
    return [_SeededSampler(reply.settings, reply.seed)]


def _accepts(model: Any, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


@dataclass(frozen=True)
class _Done:
    result: GenerationResult | None = None
    error: BaseException | None = None


class _TokenClock(BaseStreamer):
    """Gets each new token from `generate`: timestamps it and forwards it to the stream."""

    def __init__(self, sink: queue.Queue[int | _Done] | None) -> None:
        self.times: list[float] = []
        self._sink = sink
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first puts the prompt itself
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())
        if self._sink is not None:
            self._sink.put(int(value.reshape(-1)[0]))

    def end(self) -> None:
        pass


class _StopCheck(StoppingCriteria):
    """Stops on a stop string in the new text, or when the reply is cancelled."""

    def __init__(self, reply: Reply) -> None:
        self._reply = reply
        self._window = max((len(s) for s in reply.settings.stop), default=0) + _STOP_WINDOW_TOKENS

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        stop = self._reply.should_cancel()
        if stop:
            self._reply.cancelled = True
        elif self._reply.settings.stop:
            new = input_ids[0, len(self._reply.prompt_ids) :][-self._window :].tolist()
            stop = first_stop(self._reply.decode(new), self._reply.settings.stop) is not None
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _BatchStop(StoppingCriteria):
    """Per-row stop strings and cancel for `generate_batch`; `ended[b]` is the count of new
    tokens row b had when its stop string appeared (None: it ran on)."""

    def __init__(self, replies: Sequence[Reply], width: int) -> None:
        self._replies = replies
        self._width = width
        self.ended: list[int | None] = [None] * len(replies)
        stops = replies[0].settings.stop
        self._window = max((len(s) for s in stops), default=0) + _STOP_WINDOW_TOKENS

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)
        if any(reply.should_cancel() for reply in self._replies):
            for reply in self._replies:
                reply.cancelled = True
            return ~done
        stops = self._replies[0].settings.stop
        for b, reply in enumerate(self._replies):
            new = input_ids[b, self._width :]
            if self.ended[b] is None and len(new) >= reply.max_new_tokens:
                self.ended[b] = reply.max_new_tokens  # this row's own limit (a long prompt)
            elif self.ended[b] is None and stops:
                tail = new[-self._window :].tolist()
                if first_stop(reply.decode(tail), stops) is not None:
                    self.ended[b] = len(new)
            done[b] = self.ended[b] is not None
        return done


class _SeededSampler(LogitsProcessor):
    """Samples the next token (temperature, top-k, top-p) with a private generator.

    Returns scores with one finite entry, so `generate`'s greedy step picks the sampled token.
    """

    def __init__(self, settings: GenerationSettings, seed: int) -> None:
        self._settings = settings
        self._seed = seed
        self._generator: torch.Generator | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._generator is None:
            self._generator = torch.Generator(device=scores.device).manual_seed(self._seed)
        logits = scores.float() / self._settings.temperature  # (B, V)
        if self._settings.top_k:
            kth = torch.topk(logits, min(self._settings.top_k, logits.shape[-1])).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self._settings.top_p < 1.0:
            logits = _top_p_filter(logits, self._settings.top_p)
        probs = torch.softmax(logits, dim=-1)
        choice = torch.multinomial(probs, 1, generator=self._generator)  # (B, 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(1, choice, 0.0)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose probabilities sum to top_p (at least one)."""
    sorted_logits, order = torch.sort(logits, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
