"""Live preview: one session's merged model, re-merged in place and probed on every slider release.

A `LivePreview` belongs to one user session and holds:

- a `LiveMerger` for the recipe's parent set (base + parents, loaded once);
- one `TransformersEngine` for the merged model, loaded from the first parent's folder and then
  overwritten in place by `LiveMerger.merge_into`. It is the session's own engine, never the
  pool's shared entry of a parent, so a parent another tab is chatting with stays intact.

`update(recipe)` re-merges into that model and runs a quick probe, so a user sees the effect of a
slider without leaving the Merge tab:

- perplexity on a short domain text and a short general text (CPT erodes the general side, the
  chat model the domain side; a good merge keeps both low);
- the top next tokens (with probabilities) for a probe prompt;
- the same numbers for each parent, computed once per parent set by running the model with the
  parent's held tensors swapped in (`torch.func.functional_call`: no copy, merged weights untouched).

Memory is that of the live merger (base + parents + task vectors) plus the one merged model; a
merger that would not fit raises `LiveMemoryError` with the numbers before anything loads. The
merger is reused while the recipe's models are among those it holds in the recipe's dtype (only
slider values or the method changed), and rebuilt otherwise, the old one freed first. Every
folder a recipe names must lie under the studio's roots (studio.confine), checked before any load.

`PreviewRegistry` keeps one preview per session id (least recently used evicted and unloaded),
so users never share a merged model.

    preview = LivePreview()
    result = preview.update(recipe_yaml)         # after every slider release
    result.merged.domain_perplexity, result.merged.top_tokens[0].text
    report = preview.diagnose(recipe_yaml, density=0.5)

Tests: `python -m pytest tests/test_preview.py`.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from mergekit.common import dtype_from_name
from mergekit.config import MergeConfiguration
from pydantic import BaseModel, Field, ValidationError, field_serializer, field_validator
from torch.func import functional_call

from studio.confine import confine_path
from studio.errors import StudioError
from studio.inference.engine import ModelSpec
from studio.inference.transformers_engine import TransformersEngine
from studio.merging import diagnostics
from studio.merging.diagnostics import DiagnosticsReport
from studio.merging.live import LiveMerger, LiveMergeStats, available_memory_bytes, model_key
from studio.recipes import MergeRecipe, recipe_from_yaml, to_merge_configuration
from studio.settings import StudioSettings

LOG = logging.getLogger(__name__)

# Short probe texts (a few sentences each: a probe must cost milliseconds on a CPU). The domain
# is the case study's (clinical text, as Meditron's CPT corpus); users replace both with theirs.
DEFAULT_DOMAIN_TEXT = (
    "The patient was admitted with community-acquired pneumonia and started on intravenous"
    " ceftriaxone and azithromycin. Blood cultures were negative, and the fever resolved after"
    " three days. Metformin remains the first-line treatment for type 2 diabetes unless kidney"
    " function is severely reduced."
)
DEFAULT_GENERAL_TEXT = (
    "The sun rises in the east and sets in the west. Paris is the capital of France, and the"
    " Seine flows through the city. On weekends many people read books, cook dinner for their"
    " friends or go for a walk in the park."
)
DEFAULT_PROBE_PROMPT = "The first-line treatment for type 2 diabetes is"
DEFAULT_TOP_K = 5
# DARE draws random masks: a fixed seed keeps the preview still while the user holds a slider
# still (`mergekit-yaml --random-seed 0` exports the same merge).
DEFAULT_SEED = 0
DEFAULT_MAX_SESSIONS = 2

EngineDtype = Literal["auto", "float32", "bfloat16", "float16"]
_ENGINE_DTYPES: dict[torch.dtype, EngineDtype] = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}


class PreviewError(StudioError):
    """A live preview or diagnostics request cannot run as asked."""


# -- typed requests and results ----------------------------------------------------------------


class ProbeSettings(BaseModel, frozen=True):
    """What the quick probe measures after each live merge."""

    domain_text: str = Field(
        default=DEFAULT_DOMAIN_TEXT, description="a few sentences of your domain (perplexity)"
    )
    general_text: str = Field(
        default=DEFAULT_GENERAL_TEXT, description="a few sentences of everyday text (perplexity)"
    )
    prompt: str = Field(
        default=DEFAULT_PROBE_PROMPT, description="the most likely next tokens are shown for this"
    )
    top_k: int = Field(default=DEFAULT_TOP_K, ge=1, le=50, description="next tokens to show")
    compare_parents: bool = Field(
        default=True, description="also probe each parent (once per parent set) for comparison"
    )

    @field_validator("domain_text", "general_text", "prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty; type a sentence")
        return value


def probe_settings(**values: Any) -> ProbeSettings:
    """ProbeSettings from user values (None: the default); PreviewError naming a bad field."""
    try:
        return ProbeSettings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "probe"
        raise PreviewError(f"probe {field}: {first['msg']}") from error


class TokenProbability(BaseModel, frozen=True):
    """One candidate next token."""

    token_id: int
    token: str  # the vocabulary entry (e.g. '▁Paris')
    text: str  # what it decodes to
    probability: float


class ProbeResult(BaseModel, frozen=True):
    """The quick probe of one model (the merged one, or a parent)."""

    label: str  # "merged" or the parent's folder name
    domain_perplexity: float | None  # None: not finite (the model's logits overflowed)
    general_perplexity: float | None
    domain_tokens: int  # tokens scored (after the one-token prefix)
    general_tokens: int
    top_tokens: tuple[TokenProbability, ...]  # most likely first


class PreviewResult(BaseModel, frozen=True):
    """What one live preview update did and measured."""

    method: str
    merged: ProbeResult
    parents: tuple[ProbeResult, ...] = ()  # in recipe order; empty when not compared
    stats: LiveMergeStats
    merger_reused: bool  # False: the parents were (re)loaded for this update
    load_seconds: float  # loading the merger and the merged model's engine (0 when reused)
    merge_seconds: float  # writing the merge into the loaded model
    probe_seconds: float  # probing the merged model
    parents_seconds: float  # probing parents not probed before (0 when cached)
    weights_version: int  # the engine's weights version after this merge
    prompt: str

    # gradio_client downloads any JSON object with a "path" key as a file, so the stats'
    # `path` (fast | mergekit) travels as `merge_path` and is read back from it.
    @field_serializer("stats")
    def _stats_json(self, stats: LiveMergeStats) -> dict[str, Any]:
        data = asdict(stats)
        data["merge_path"] = data.pop("path")
        return data

    @field_validator("stats", mode="before")
    @classmethod
    def _stats_from_json(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and "merge_path" in value:
            value = {**value, "path": value["merge_path"]}
            del value["merge_path"]
        return value

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (gradio, the CLI); `PreviewResult.model_validate` reads them back."""
        return self.model_dump(mode="json")


# -- probing -----------------------------------------------------------------------------------


Parameters = Mapping[str, torch.Tensor] | None  # checkpoint tensors to run instead of the model's


def _logits(model: Any, ids: list[int], parameters: Parameters) -> torch.Tensor:
    """(T, V) float32 logits of one sequence, with `parameters` swapped in when given."""
    device = next(model.parameters()).device
    batch = torch.tensor([ids], device=device)  # (1, T)
    with torch.no_grad():
        if parameters is None:
            logits = model(input_ids=batch).logits
        else:
            logits = functional_call(model, dict(parameters), (), {"input_ids": batch}).logits
    return logits[0].float()  # (T, V)


def _prefix_id(tokenizer: Any) -> int:
    """The token a text is conditioned on when it has no context: BOS, else EOS (lm-eval's)."""
    prefix = tokenizer.bos_token_id
    prefix = tokenizer.eos_token_id if prefix is None else prefix
    if prefix is None:
        raise PreviewError("the model's tokenizer has neither a BOS nor an EOS token to start from")
    return int(prefix)


def scored_ids(tokenizer: Any, text: str, *, limit: int | None, field: str) -> list[int]:
    """[prefix] + the text's tokens, cut to the model's context: the sequence perplexity scores."""
    ids = [_prefix_id(tokenizer), *tokenizer(text, add_special_tokens=False)["input_ids"]]
    if len(ids) < 2:
        raise PreviewError(f"the {field} encodes to no tokens; give a longer text")
    if limit is not None and len(ids) > limit:
        LOG.info("%s cut from %d to %d tokens (the model's context)", field, len(ids), limit)
        ids = ids[:limit]
    return ids


def perplexity(
    model: Any, tokenizer: Any, text: str, *, parameters: Parameters = None, field: str = "text"
) -> tuple[float | None, int]:
    """(exp(mean negative log-likelihood of the text's tokens), tokens scored).

    Each token is predicted from the ones before it, the first from BOS (lm-eval's rolling
    perplexity convention for a text shorter than the context). None when not finite.
    """
    limit = getattr(model.config, "max_position_embeddings", None)
    ids = scored_ids(tokenizer, text, limit=limit, field=field)
    logprobs = torch.log_softmax(_logits(model, ids[:-1], parameters), dim=-1)  # (T-1, V)
    target = torch.tensor(ids[1:], device=logprobs.device)
    nll = -logprobs.gather(1, target[:, None]).mean()
    value = float(torch.exp(nll))
    return (value if math.isfinite(value) else None), len(ids) - 1


def top_next_tokens(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    k: int = DEFAULT_TOP_K,
    parameters: Parameters = None,
) -> tuple[TokenProbability, ...]:
    """The k most likely next tokens after `prompt` (encoded as generation encodes it)."""
    ids = list(tokenizer(prompt)["input_ids"]) or [_prefix_id(tokenizer)]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and len(ids) > limit:
        ids = ids[-limit:]  # the end of the prompt decides the next token
    probs = torch.softmax(_logits(model, ids, parameters)[-1], dim=-1)  # (V,)
    if not bool(torch.isfinite(probs).all()):
        return ()
    values, indices = torch.topk(probs, min(k, probs.shape[0]))
    return tuple(
        TokenProbability(
            token_id=int(i),
            token=str(tokenizer.convert_ids_to_tokens(int(i))),
            text=tokenizer.decode([int(i)]),
            probability=float(p),
        )
        for p, i in zip(values.tolist(), indices.tolist(), strict=True)
    )


def probe_model(
    model: Any,
    tokenizer: Any,
    probe: ProbeSettings,
    *,
    label: str,
    parameters: Parameters = None,
) -> ProbeResult:
    """Perplexities and top next tokens of one model (or of `parameters` run in its place)."""
    domain, domain_tokens = perplexity(
        model, tokenizer, probe.domain_text, parameters=parameters, field="domain text"
    )
    general, general_tokens = perplexity(
        model, tokenizer, probe.general_text, parameters=parameters, field="general text"
    )
    return ProbeResult(
        label=label,
        domain_perplexity=domain,
        general_perplexity=general,
        domain_tokens=domain_tokens,
        general_tokens=general_tokens,
        top_tokens=top_next_tokens(
            model, tokenizer, probe.prompt, k=probe.top_k, parameters=parameters
        ),
    )


# -- one session's preview ---------------------------------------------------------------------


def parse_recipe(recipe: MergeRecipe | str) -> MergeConfiguration:
    """mergekit's configuration for a recipe or its YAML; RecipeError with a sentence if invalid."""
    if isinstance(recipe, str):
        if not recipe.strip():
            raise PreviewError("the recipe is empty; choose the models and a merge method first")
        recipe = recipe_from_yaml(recipe)
    return to_merge_configuration(recipe)


def _engine_dtype(config: MergeConfiguration) -> EngineDtype:
    """The merged model's dtype: what mergekit would write (out_dtype, else dtype)."""
    name = config.out_dtype or config.dtype
    if name is None:
        return "auto"
    return _ENGINE_DTYPES.get(dtype_from_name(name), "auto")


def _first_model(config: MergeConfiguration) -> str:
    """The folder the merged model's engine is loaded from (config, tokenizer, architecture)."""
    if config.models:
        return model_key(config.models[0].model)
    return model_key(config.referenced_models()[0])


class LivePreview:
    """One session's live merger + merged model; see the module docstring. Thread-safe."""

    def __init__(
        self,
        *,
        settings: StudioSettings | None = None,
        memory_budget_bytes: int | None = None,
        seed: int | None = DEFAULT_SEED,
        exact_ties: bool = False,
        device: Literal["cpu", "cuda", "auto"] = "cpu",
    ) -> None:
        """`memory_budget_bytes` None: the memory available when a merger is built.

        `seed` seeds DARE's masks (None: new masks every update). `exact_ties` resolves TIES
        magnitude ties with mergekit's own sort (slower; see studio.merging.live).

        `device` is cpu by default: the live merger holds its tensors on the CPU and its fast
        kernels write straight into the model's parameters, which must live there too.
        """
        self._settings = settings
        self._budget = memory_budget_bytes
        self._seed = seed
        self._exact_ties = exact_ties
        self._device = device
        self._lock = threading.RLock()  # one update / diagnose / close at a time
        self._merger: LiveMerger | None = None
        self._engine: TransformersEngine | None = None
        self._engine_key: tuple[str, EngineDtype] | None = None
        # parent folder -> its probe under `_parents_probe` (parents change only on a reload)
        self._parent_probes: dict[str, ProbeResult] = {}
        self._parents_probe: ProbeSettings | None = None

    @property
    def merger(self) -> LiveMerger | None:
        """The live merger of the last recipe (None before the first update or diagnose)."""
        return self._merger

    @property
    def engine(self) -> TransformersEngine | None:
        """The merged model's engine (None before the first update). Owned by this preview:
        its weights change on every update."""
        return self._engine

    def update(
        self, recipe: MergeRecipe | str, probe: ProbeSettings | None = None
    ) -> PreviewResult:
        """Merge `recipe` into the loaded model in place and probe it (and its parents)."""
        probe = probe or ProbeSettings()
        config = parse_recipe(recipe)
        with self._lock:
            # 1) + 2) load what is not held yet, merge into the engine's parameters in place
            engine, stats, reused, load_seconds, merge_seconds = self._merge(config)
            # 3) probe the merged model, then the parents not probed yet
            started = time.perf_counter()
            merged = probe_model(engine.model, engine.tokenizer, probe, label="merged")
            probe_seconds = time.perf_counter() - started
            started = time.perf_counter()
            parents = self._probe_parents(config, probe) if probe.compare_parents else ()
            parents_seconds = time.perf_counter() - started
            version = engine.weights_version
        LOG.info(
            "preview %s: load %.2f s, merge %.3f s, probe %.3f s",
            stats.method,
            load_seconds,
            merge_seconds,
            probe_seconds,
        )
        return PreviewResult(
            method=stats.method,
            merged=merged,
            parents=parents,
            stats=stats,
            merger_reused=reused,
            load_seconds=load_seconds,
            merge_seconds=merge_seconds,
            probe_seconds=probe_seconds,
            parents_seconds=parents_seconds,
            weights_version=version,
            prompt=probe.prompt,
        )

    def merge(self, recipe: MergeRecipe | str) -> tuple[TransformersEngine, LiveMergeStats]:
        """Merge `recipe` into the session's model in place, without probing (sweeps use this).

        The engine stays owned by this preview: score it before the next merge changes it.
        """
        config = parse_recipe(recipe)
        with self._lock:
            engine, stats, *_ = self._merge(config)
        return engine, stats

    def _merge(
        self, config: MergeConfiguration
    ) -> tuple[TransformersEngine, LiveMergeStats, bool, float, float]:
        """(engine, stats, merger reused, load seconds, merge seconds); caller holds the lock."""
        # 1) the merger and the merged model's engine, reused when the models are held
        started = time.perf_counter()
        reused, loaded = self._prepare(config, engine=True)
        load_seconds = time.perf_counter() - started if loaded else 0.0
        merger, engine = self._merger, self._engine
        assert merger is not None and engine is not None  # set by _prepare
        # 2) merge into the engine's parameters (no second copy of the merged model)
        started = time.perf_counter()
        stats = merger.merge_into(
            engine.model, config, seed=self._seed, exact_ties=self._exact_ties
        )
        # An empty replacement bumps weights_version, so caches keyed on it reset.
        engine.replace_weights(())
        return engine, stats, reused, load_seconds, time.perf_counter() - started

    def diagnose(self, recipe: MergeRecipe | str, *, density: float = 0.5) -> DiagnosticsReport:
        """Task-vector diagnostics of the recipe's two parents against the held base.

        Uses (and if needed loads) the same merger as `update`; loads no merged model.
        """
        if not 0.0 < density <= 1.0:
            raise PreviewError(f"density {density} is out of range; choose a value in (0, 1]")
        config = parse_recipe(recipe)
        with self._lock:
            self._prepare(config, engine=False)
            merger = self._merger
            assert merger is not None  # set by _prepare
            base = merger.base_model
            ordered = [model_key(m.model) for m in config.models or ()]
            parents = [m for m in dict.fromkeys(ordered) if m != base]
            if base is not None and len(parents) == 1:
                # One fine-tune merged with its own base (the real demo pair: the CPT was trained
                # from the chat model): the base's task vector is zero, the other's is all there is.
                parents.insert(0, base)
            if base is None or len(parents) != 2:
                raise PreviewError(
                    "diagnostics compare how two fine-tunes moved away from their shared base"
                    f" model; this {config.merge_method} recipe has"
                    f" {'no base model' if base is None else f'{len(parents)} other models'}:"
                    " choose a method that uses a base (task_arithmetic, ties, dare_ties) and set"
                    " the base model"
                )
            return diagnostics.diagnose(merger, parents=(parents[0], parents[1]), density=density)

    def close(self) -> None:
        """Unload the merged model and drop the merger (a later update loads them again)."""
        with self._lock:
            self._drop_merger()
            self._drop_engine()

    # -- internals ----------------------------------------------------------------------------

    def _prepare(self, config: MergeConfiguration, *, engine: bool) -> tuple[bool, bool]:
        """Make the merger (and, if asked, the engine) fit `config`.

        Returns (the merger was kept, anything was loaded).
        """
        self._confine_models(config)
        engine_key = (_first_model(config), _engine_dtype(config))
        if engine and self._engine_key not in (None, engine_key):
            self._drop_engine()  # before a new merger is sized against the memory left
        reused = self._holds(config)
        if not reused:
            self._drop_merger()
            self._merger = self._new_merger(config)
        new_engine = engine and self._engine is None
        if new_engine:
            self._engine = self._new_engine(*engine_key)
            self._engine_key = engine_key
        return reused, new_engine or not reused

    def _confine_models(self, config: MergeConfiguration) -> None:
        """PathNotAllowedError unless every folder the recipe names (models, base, slices,
        LoRAs) lies under the studio's roots: update, merge and diagnose all come through
        _prepare, before any weights are read or any model_key() resolves a path."""
        for ref in config.referenced_models():
            for part in (ref.model, ref.lora):
                if part is not None:
                    confine_path(part.path, settings=self._settings, what="recipe model folder")

    def _holds(self, config: MergeConfiguration) -> bool:
        """Whether the current merger can merge `config`: its models held, in its dtype."""
        if self._merger is None:
            return False
        needed = {model_key(ref) for ref in config.referenced_models()}
        same_dtype = (config.dtype or None) == self._merger.dtype
        return same_dtype and needed <= set(self._merger.models)

    def _new_merger(self, config: MergeConfiguration) -> LiveMerger:
        budget = self._budget
        if budget is None and self._engine is not None:
            # The merger's estimate counts one merged model, which is this loaded engine: the
            # memory it already takes is part of what the merger may plan with.
            available = available_memory_bytes()
            budget = None if available is None else available + self._engine.memory_bytes()
        models = sorted({model_key(ref) for ref in config.referenced_models()})
        base = model_key(config.base_model) if config.base_model is not None else None
        merger = LiveMerger(models, base_model=base, dtype=config.dtype, memory_budget_bytes=budget)
        LOG.info("live preview holds %d models as %s", len(merger.models), config.dtype)
        return merger

    def _new_engine(self, folder: str, dtype: EngineDtype) -> TransformersEngine:
        spec = ModelSpec.from_path(
            folder, dtype=dtype, device=self._device, settings=self._settings
        )
        engine = TransformersEngine(spec, settings=self._settings)
        engine.load()
        return engine

    def _drop_merger(self) -> None:
        if self._merger is not None:
            self._merger = None
            self._parent_probes.clear()
            gc.collect()  # free the parents before anything new is loaded

    def _drop_engine(self) -> None:
        if self._engine is not None:
            self._engine.unload()
            self._engine, self._engine_key = None, None

    def _probe_parents(
        self, config: MergeConfiguration, probe: ProbeSettings
    ) -> tuple[ProbeResult, ...]:
        """The probe of each merged model, from the held tensors (cached while the merger and
        the probe settings stay the same)."""
        merger, engine = self._merger, self._engine
        assert merger is not None and engine is not None
        if probe != self._parents_probe:
            self._parent_probes.clear()
            self._parents_probe = probe
        results = []
        for ref in config.models or ():
            folder = model_key(ref.model)
            if folder not in self._parent_probes:
                parameters = _swappable(engine.model, merger.held_tensors(folder))
                if parameters is None:
                    LOG.info("parent %s not probed: its tensors do not fit the model", folder)
                    continue
                self._parent_probes[folder] = probe_model(
                    engine.model,
                    engine.tokenizer,
                    probe,
                    label=Path(folder).name,
                    parameters=parameters,
                )
            results.append(self._parent_probes[folder])
        return tuple(results)


def _swappable(model: Any, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The held tensors `functional_call` can run in place of the model's own parameters.

    Tied aliases are left out (the primary name feeds both). None when a tensor's shape or dtype
    differs from the model's (added vocabulary rows, an out_dtype): running it would need a copy.
    """
    state = model.state_dict(keep_vars=True)
    primaries: dict[int, str] = {}
    for name, tensor in state.items():
        primaries.setdefault(tensor.data_ptr(), name)
    chosen = {}
    for name, tensor in tensors.items():
        target = state.get(name)
        if target is None or primaries[target.data_ptr()] != name:
            continue
        if target.shape != tensor.shape or target.dtype != tensor.dtype:
            return None
        chosen[name] = tensor
    return chosen


# -- one preview per session -------------------------------------------------------------------


class PreviewRegistry:
    """LivePreviews by session id; beyond `max_sessions` the least recently used is closed."""

    def __init__(
        self,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        factory: Callable[[], LivePreview] | None = None,
    ) -> None:
        if max_sessions < 1:
            raise PreviewError(f"max_sessions must be at least 1; got {max_sessions}")
        self._max = max_sessions
        self._factory = factory or LivePreview
        self._previews: OrderedDict[str, LivePreview] = OrderedDict()  # least recent first
        self._lock = threading.Lock()

    def get(self, session_id: str) -> LivePreview:
        """The session's preview (a new, empty one on first use)."""
        evicted: list[tuple[str, LivePreview]] = []
        with self._lock:
            preview = self._previews.get(session_id)
            if preview is None:
                preview = self._previews[session_id] = self._factory()
            self._previews.move_to_end(session_id)
            while len(self._previews) > self._max:
                evicted.append(self._previews.popitem(last=False))
        for old_id, old in evicted:  # outside the lock: close waits for a running update
            LOG.info("live preview of session %s evicted (least recently used)", old_id)
            old.close()
        return preview

    def close(self, session_id: str | None) -> bool:
        """Close and forget a session's preview; True if there was one."""
        with self._lock:
            preview = self._previews.pop(session_id, None) if session_id else None
        if preview is None:
            return False
        preview.close()
        return True

    def close_all(self) -> None:
        for session_id in self.sessions():
            self.close(session_id)

    def sessions(self) -> tuple[str, ...]:
        """Session ids held, least recently used first."""
        with self._lock:
            return tuple(self._previews)
