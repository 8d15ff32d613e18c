"""Live merging: hold the parents in memory once and re-merge them in place on every slider move.

`LiveMerger` loads the base and parent checkpoints (safetensors) once, in the dtype the recipe
asks, and merges any mergekit recipe over those models:

- linear, slerp, task_arithmetic, ties, dare_ties and dare_linear run on the fast kernels of
  studio.merging.fast_methods, which reproduce mergekit's arithmetic (see that module for the
  two places where exactness stops: elements tied at a TIES threshold, and DARE without a seed);
  task vectors, SLERP dots, TIES thresholds and DARE masks are computed once and reused while
  only parameter values change;
- every other mergekit method runs through mergekit's own in-memory planner and Executor
  (slower: it re-reads the safetensors files, which the page cache usually holds).

`merge(config)` returns the merged tensors (the one merged copy); `merge_into(model, config)`
writes them tensor by tensor straight into the parameters of a model already loaded by
transformers, without a second copy. Memory is checked up front: base + parents + one
(sparsified) task vector per parent + one merged model must fit the budget (default: the memory
available at construction). DARE with a seed additionally keeps its random stream as 2-byte
(bf16) or 4-byte codes per parent element when they fit the budget, so density moves draw nothing.

    merger = LiveMerger.from_config(recipe_yaml)          # loads once
    merger.merge_into(model, recipe_yaml)                  # after every slider release

Tests: `python -m pytest tests/test_live_merge.py`; speed: `python benchmarks/live_merge.py`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import torch
import yaml
from mergekit.common import ModelReference, dtype_from_name
from mergekit.config import MergeConfiguration
from mergekit.io.lazy_tensor_loader import ShardedTensorIndex
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file

from studio.confine import check_path_text
from studio.errors import CompatibilityError, ModelError, RecipeError, StudioError
from studio.merging import fast_methods as fm
from studio.merging.live_plan import (
    LivePlan,
    PlannedTensor,
    ResolvedParameters,
    iter_mergekit_in_memory,
    plan_structure,
    structure_key,
)
from studio.merging.live_task_vectors import (
    CONSENSUS_METHODS,
    RANDOM_METHODS,
    RandomStream,
    RowReport,
    TaskVectorStore,
)

LOG = logging.getLogger(__name__)

_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2}
_SAFETENSORS_ITEMSIZE |= {"I8": 1, "U8": 1, "BOOL": 1}
_MAX_PLANS = 8  # recipe structures remembered (method switches back and forth)


class LiveMemoryError(StudioError):
    """Live merging would not fit the memory budget."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a live merger holds: models, task vectors, and one merged model."""

    models: int  # base + parents as loaded
    task_vectors: int  # one (parent - base) per non-base parent
    merged: int  # one merged model
    budget: int | None

    @property
    def total(self) -> int:
        return self.models + self.task_vectors + self.merged

    def sentence(self) -> str:
        gb = 1024**3
        return (
            f"live merging needs about {self.total / gb:.2f} GB (models {self.models / gb:.2f}"
            f" + task vectors {self.task_vectors / gb:.2f} + merged model {self.merged / gb:.2f})"
            + (
                ""
                if self.budget is None
                else f" but the memory budget is {self.budget / gb:.2f} GB"
            )
        )


@dataclass(frozen=True)
class LiveMergeStats:
    """What the last live merge did."""

    method: str
    path: Literal["fast", "mergekit"]  # fast kernels, or mergekit's in-memory Executor
    tensors: int  # output tensors produced
    seconds: float
    tensors_with_threshold_ties: int  # TIES: tensors whose k-th magnitude is tied
    threshold_ties: int  # elements in those ties (mergekit's sort may keep others among them)
    task_vector_rows_rebuilt: int = 0  # (tensor, parent) task vectors re-sparsified this merge
    untied: tuple[str, ...] = ()  # tied parameters given their own storage by merge_into


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fp:
            for line in fp:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _load_config(config: MergeConfiguration | str) -> MergeConfiguration:
    if isinstance(config, MergeConfiguration):
        return config
    try:
        return MergeConfiguration.model_validate(yaml.safe_load(config))
    except (yaml.YAMLError, ValidationError, RuntimeError) as error:
        raise RecipeError(f"The recipe is not valid mergekit YAML: {error}") from error


def model_key(ref: ModelReference | str | os.PathLike[str]) -> str:
    """The absolute folder a model reference points to (how the merger names its models)."""
    if isinstance(ref, ModelReference):
        return _reference_key(ref)
    return _folder_key(os.fspath(ref))


@functools.lru_cache(maxsize=256)
def _reference_key(ref: ModelReference) -> str:
    if ref.lora is not None or ref.model.revision is not None:
        raise RecipeError(
            f"model {ref} uses a LoRA or a revision; live merging needs a plain local folder:"
            " merge the adapter first or use the exported merge"
        )
    return _folder_key(ref.model.path)


def _folder_key(path: str) -> str:
    # check_path_text: a NUL or an over-long name is a sentence, not a ValueError from resolve().
    # Whether the folder may be read is the caller's check (LivePreview confines every recipe
    # folder); benchmarks build a LiveMerger on models in a temporary folder.
    return str(Path(check_path_text(path, what="model folder")).expanduser().resolve())


def _safetensors_files(folder: str) -> list[str]:
    try:
        index = ShardedTensorIndex.from_disk(folder)
    except RuntimeError as error:
        raise ModelError(f"no model weights found in {folder}: {error}") from error
    if not index.is_safetensors:
        raise ModelError(
            f"{folder} holds pickle weights; live merging reads safetensors only: convert the model"
        )
    return [os.path.join(folder, shard.filename) for shard in index.shards]


def _model_bytes(folder: str, dtype: torch.dtype | None) -> int:
    """Bytes of one model's floating tensors once loaded in `dtype`, from the file headers."""
    total = 0
    for path in _safetensors_files(folder):
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                info = handle.get_slice(name)
                numel = 1
                for size in info.get_shape():
                    numel *= size
                stored = info.get_dtype()
                floating = stored in {"F64", "F32", "F16", "BF16"}
                itemsize = dtype.itemsize if dtype is not None and floating else None
                total += numel * (itemsize or _SAFETENSORS_ITEMSIZE.get(stored, 4))
    return total


def _load_model(folder: str, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors folder, floating ones cast to `dtype` as mergekit's loader does."""
    tensors: dict[str, torch.Tensor] = {}
    for path in _safetensors_files(folder):
        for name, tensor in load_file(path, backend="pread").items():
            if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            tensors[name] = tensor
    return tensors


class LiveMerger:
    """Base and parent tensors held once; merges any mergekit recipe over them in memory."""

    def __init__(
        self,
        models: Sequence[str | os.PathLike[str]],
        *,
        base_model: str | os.PathLike[str] | None = None,
        dtype: str | None = None,
        memory_budget_bytes: int | None = None,
    ) -> None:
        """Load `models` (and `base_model`) once, floating tensors cast to `dtype` (None: as stored).

        `memory_budget_bytes` defaults to the memory the machine has available now; a
        LiveMemoryError with the numbers is raised before anything is loaded if it is too small.
        """
        keys = [model_key(m) for m in models]
        self._base_key = model_key(base_model) if base_model is not None else None
        if self._base_key is not None and self._base_key not in keys:
            keys.append(self._base_key)
        self._keys = tuple(dict.fromkeys(keys))
        self._dtype_name = dtype
        self._dtype = self._parse_dtype(dtype)
        self._budget = (
            memory_budget_bytes if memory_budget_bytes is not None else available_memory_bytes()
        )
        self._model_bytes = {key: _model_bytes(key, self._dtype) for key in self._keys}
        estimate = self.estimate_memory()
        if self._budget is not None and estimate.total > self._budget:
            raise LiveMemoryError(
                estimate.sentence() + ": use fewer parents or dtype bfloat16, or export the merge"
                " to disk instead of previewing it live"
            )
        # 1) load every model once; nothing below reloads them
        self._tensors = {key: _load_model(key, self._dtype) for key in self._keys}
        self._plans: dict[str, LivePlan] = {}
        self._task_vectors: TaskVectorStore | None = None
        self._slerp_dots: dict[tuple[str, str, str], torch.Tensor | None] = {}
        self.last_stats: LiveMergeStats | None = None
        LOG.info("live merger holds %d models (%s)", len(self._keys), dtype or "stored dtypes")

    @classmethod
    def from_config(
        cls, config: MergeConfiguration | str, *, memory_budget_bytes: int | None = None
    ) -> LiveMerger:
        """A merger holding every model the recipe references, in the recipe's dtype."""
        config = _load_config(config)
        models = [model_key(ref) for ref in config.referenced_models()]
        base = model_key(config.base_model) if config.base_model is not None else None
        return cls(
            sorted(models),
            base_model=base,
            dtype=config.dtype,
            memory_budget_bytes=memory_budget_bytes,
        )

    # -- what it holds -----------------------------------------------------------------------

    @property
    def models(self) -> tuple[str, ...]:
        """Absolute folders of the models held."""
        return self._keys

    @property
    def base_model(self) -> str | None:
        """Absolute folder of the base model, if one was given."""
        return self._base_key

    @property
    def dtype(self) -> str | None:
        """The dtype tensors are held in (None: as stored)."""
        return self._dtype_name

    def held_tensors(self, model: str | os.PathLike[str]) -> Mapping[str, torch.Tensor]:
        """The tensors of one held model (read-only view; the same objects on every call)."""
        key = model_key(model)
        if key not in self._tensors:
            raise RecipeError(f"{key} is not one of the models this live merger holds")
        return MappingProxyType(self._tensors[key])

    def task_vectors(self) -> Mapping[str, torch.Tensor]:
        """Cached sparsified task vectors, name -> (parents, *shape); empty until a task-vector
        method (task_arithmetic, ties, dare_*) has run. Rows are rebuilt only on density changes."""
        return MappingProxyType(self._task_vectors.rows if self._task_vectors else {})

    def estimate_memory(self) -> MemoryEstimate:
        """Up-front estimate: models + one task vector per non-base parent + one merged model."""
        models = sum(self._model_bytes.values())
        largest = max(self._model_bytes.values(), default=0)
        parents = len(self._keys) - (1 if self._base_key else 0)
        task_vectors = parents * self._model_bytes[self._base_key] if self._base_key else 0
        return MemoryEstimate(
            models=models, task_vectors=task_vectors, merged=largest, budget=self._budget
        )

    def memory_bytes(self) -> int:
        """Bytes held now (models, caches) plus one merged model."""
        held = sum(
            t.numel() * t.element_size() for ts in self._tensors.values() for t in ts.values()
        )
        if self._task_vectors is not None:
            held += self._task_vectors.nbytes()
        return held + self.estimate_memory().merged

    def check_memory(self, budget_bytes: int) -> None:
        """Raise LiveMemoryError if the live merge would not fit in `budget_bytes`."""
        estimate = self.estimate_memory()
        needed = max(estimate.total, self.memory_bytes())
        if needed > budget_bytes:
            gb = 1024**3
            raise LiveMemoryError(
                f"live merging needs about {needed / gb:.2f} GB but the memory budget is"
                f" {budget_bytes / gb:.2f} GB: use fewer parents or dtype bfloat16, or export"
                " the merge to disk instead of previewing it live"
            )

    # -- merging ------------------------------------------------------------------------------

    def merge(
        self, config: MergeConfiguration | str, *, seed: int | None = None, exact_ties: bool = False
    ) -> dict[str, torch.Tensor]:
        """The merged tensors mergekit would write for `config`, by name (one full copy).

        `seed` plays the role of MergeOptions.random_seed for DARE (None: random masks).
        `exact_ties` resolves TIES threshold ties with mergekit's own argsort (slow).
        """
        return dict(self._run(config, seed=seed, exact_ties=exact_ties, skip=frozenset()))

    def merge_into(
        self,
        model: torch.nn.Module,
        config: MergeConfiguration | str,
        *,
        seed: int | None = None,
        exact_ties: bool = False,
    ) -> LiveMergeStats:
        """Write the merge into `model`'s parameters in place, one tensor at a time.

        Tied parameters (input and output embeddings sharing storage) are written once, from
        the first name in the model's state dict (mergekit 0.1.5 does not even write
        lm_head.weight for a tied Llama: it is an optional weight absent from the files). Should
        a recipe give the tied names different values, the later name gets its own storage,
        which is what transformers does when it loads such a checkpoint. If a tensor does not
        fit the model (CompatibilityError), the tensors before it are already written.
        """
        state = model.state_dict(keep_vars=True)
        primary: dict[int, str] = {}
        for name, tensor in state.items():
            primary.setdefault(tensor.data_ptr(), name)
        aliases = {
            name: primary[t.data_ptr()]
            for name, t in state.items()
            if primary[t.data_ptr()] != name
        }
        config = _load_config(config)
        skip = self._skippable_aliases(config, aliases)

        def destination(name: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
            target = state.get(name)
            if name in aliases or target is None or target.shape != shape:
                return torch.empty(shape, dtype=dtype)
            return target  # the fast kernels write straight into the parameter

        pending: dict[str, torch.Tensor] = {}
        written: set[str] = set()
        run = self._run(config, seed=seed, exact_ties=exact_ties, skip=skip, dest=destination)
        with torch.no_grad():
            for name, tensor in run:
                if name in aliases:
                    pending[name] = tensor
                    continue
                if tensor is not state.get(name):
                    _copy_into(state, name, tensor)
                written.add(name)
            untied = []
            for name, tensor in pending.items():
                target = state[aliases[name]]
                if aliases[name] in written and torch.equal(target, tensor.to(target.dtype)):
                    continue
                _untie(model, name, tensor, like=target)
                untied.append(name)
        missing = [n for n, p in model.named_parameters() if n not in written and n not in aliases]
        if missing:
            LOG.warning("merge_into left %d parameters unchanged: %s", len(missing), missing[:5])
        if untied:
            LOG.warning(
                "mergekit's values for %s differ from the tied embedding: untied them", untied
            )
        assert self.last_stats is not None  # set by _run once the merge completes
        self.last_stats = replace(self.last_stats, untied=tuple(untied))
        return self.last_stats

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _parse_dtype(dtype: str | None) -> torch.dtype | None:
        try:
            return dtype_from_name(dtype)
        except RuntimeError as error:
            raise RecipeError(
                f"dtype {dtype!r} is not supported: use bfloat16, float16 or float32"
            ) from error

    def _check_recipe(self, config: MergeConfiguration) -> None:
        unknown = sorted({model_key(r) for r in config.referenced_models()} - set(self._keys))
        if unknown:
            raise RecipeError(
                f"the recipe's models {unknown} are not the ones this live merger holds"
                f" {list(self._keys)}: load a new live merger for them (LiveMerger.from_config)"
            )
        if self._parse_dtype(config.dtype) != self._dtype:
            raise RecipeError(
                f"the recipe's dtype is {config.dtype} but the live merger holds the models as"
                f" {self._dtype_name or 'stored'}: set dtype: {self._dtype_name} or load a new"
                " live merger"
            )

    def _plan(self, config: MergeConfiguration) -> LivePlan:
        key = structure_key(config)
        if key not in self._plans:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan_structure(config, fast_methods=fm.FAST_METHODS)
        return self._plans[key]

    def _skippable_aliases(
        self, config: MergeConfiguration, aliases: Mapping[str, str]
    ) -> frozenset[str]:
        """Tied names whose merge equals their primary's: same sources and parameters, no RNG."""
        self._check_recipe(config)
        plan = self._plan(config)
        if not plan.fast or plan.method in RANDOM_METHODS:
            return frozenset()
        params = dict(zip((t.name for t in plan.tensors), plan.resolve(config), strict=True))
        planned = {t.name: t for t in plan.tensors}
        skip = set()
        for name, main in aliases.items():
            if name in planned and main in planned:
                same_sources = planned[name].sources == planned[main].sources
                if same_sources and params[name] == params[main]:
                    skip.add(name)
        return frozenset(skip)

    def _run(
        self,
        config: MergeConfiguration | str,
        *,
        seed: int | None,
        exact_ties: bool,
        skip: frozenset[str],
        dest: Destination | None = None,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, merged tensor) in mergekit's order; fast kernels write into `dest(...)`."""
        config = _load_config(config)
        self._check_recipe(config)
        plan = self._plan(config)
        start = time.perf_counter()
        report = RowReport()
        count = 0
        if plan.fast:
            tensors = self._iter_fast(
                plan,
                config,
                seed=seed,
                exact_ties=exact_ties,
                skip=skip,
                dest=dest or _new_tensor,
                report=report,
            )
        else:
            LOG.info(
                "%s runs through mergekit's in-memory executor (%s)", plan.method, plan.slow_reason
            )
            tensors = iter_mergekit_in_memory(config, seed=seed)
        for name, tensor in tensors:
            count += 1
            yield name, tensor
        self.last_stats = LiveMergeStats(
            method=plan.method,
            path="fast" if plan.fast else "mergekit",
            tensors=count,
            seconds=time.perf_counter() - start,
            tensors_with_threshold_ties=report.tensors_with_ties,
            threshold_ties=report.tied_elements,
            task_vector_rows_rebuilt=report.rebuilt,
        )

    def _inputs(self, tensor: PlannedTensor, plan: LivePlan | None = None) -> list[torch.Tensor]:
        """The tensor's inputs in mergekit's model order, promoted to one dtype."""
        if plan is not None and tensor.name in plan.inputs:
            return plan.inputs[tensor.name]
        inputs = [
            self._tensors[model_key(m)][source]
            for m, source in zip(tensor.models, tensor.sources, strict=True)
        ]
        dtype = inputs[0].dtype
        for other in inputs[1:]:
            dtype = torch.promote_types(dtype, other.dtype)
        if plan is not None and all(t.dtype == dtype for t in inputs):
            plan.inputs[tensor.name] = inputs  # references only: promoted copies are not kept
        return [t.to(dtype) for t in inputs]

    def _iter_fast(
        self,
        plan: LivePlan,
        config: MergeConfiguration,
        *,
        seed: int | None,
        exact_ties: bool,
        skip: frozenset[str],
        dest: Destination,
        report: RowReport,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        params = plan.resolve(config)
        stream = None
        if plan.method in RANDOM_METHODS:
            first = self._inputs(plan.tensors[0])[0]
            numels = {
                t.name: self._tensors[model_key(t.models[0])][t.sources[0]].numel()
                for t in plan.tensors
            }
            store = self._store_for(plan.tensors[0])
            stream = store.prepare_stream(
                plan.method, plan.tensors, params, dtype=first.dtype, seed=seed, numels=numels
            )
        if plan.method == "linear":
            yield from self._iter_linear(plan, params, skip=skip, dest=dest)
            return
        for tensor, values in zip(plan.tensors, params, strict=True):
            if tensor.name in skip:
                continue
            inputs = self._inputs(tensor)
            merged_dtype = inputs[0].dtype
            via = (dtype_from_name(tensor.out_dtype),) if tensor.out_dtype else ()
            out = dest(tensor.name, inputs[0].shape, via[0] if via else merged_dtype)
            self._merge_into(
                plan.method,
                tensor,
                inputs=inputs,
                values=values,
                out=out,
                via=via,
                stream=stream,
                exact_ties=exact_ties,
                report=report,
            )
            yield tensor.name, out

    def _iter_linear(
        self,
        plan: LivePlan,
        params: Sequence[ResolvedParameters],
        *,
        skip: frozenset[str],
        dest: Destination,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """A linear merge, every tensor at once: one native pass over the whole model."""
        done: list[tuple[str, torch.Tensor]] = []
        targets: dict[bool, list[fm.LinearTarget]] = {True: [], False: []}  # by `normalize`
        weights_of: dict[tuple[int, ...], list[float]] = {}
        for tensor, values in zip(plan.tensors, params, strict=True):
            if tensor.name in skip:
                continue
            inputs = self._inputs(tensor, plan)
            via = (dtype_from_name(tensor.out_dtype),) if tensor.out_dtype else ()
            out = dest(tensor.name, inputs[0].shape, via[0] if via else inputs[0].dtype)
            if inputs[0].is_floating_point():
                # Uniform recipes share one ResolvedParameters per model set: look the weights
                # up once (hashing pydantic model references per tensor costs milliseconds).
                key = (id(values), *map(id, tensor.models))
                if key not in weights_of:
                    weights_of[key] = [values.per_input[m]["weight"] for m in tensor.models]
                weights = weights_of[key]
                targets[bool(values.shared["normalize"])].append(
                    fm.LinearTarget(out, inputs, weights, via)
                )
            else:
                fm.store(out, _copy_buffer(tensor.name, inputs), via)
            done.append((tensor.name, out))
        for normalize, group in targets.items():
            fm.linear_many_into(group, normalize=normalize)
        yield from done

    def _merge_into(
        self,
        method: str,
        tensor: PlannedTensor,
        *,
        inputs: list[torch.Tensor],
        values: ResolvedParameters,
        out: torch.Tensor,
        via: tuple[torch.dtype, ...],
        stream: RandomStream | None,
        exact_ties: bool,
        report: RowReport,
    ) -> None:
        """One output tensor with the fast kernels, written into `out`."""
        if not inputs[0].is_floating_point():
            fm.store(out, _copy_buffer(tensor.name, inputs), via)
            return
        shared, per_input = values.shared, values.per_input
        if method == "linear":
            weights = [per_input[m]["weight"] for m in tensor.models]
            fm.linear_into(out, inputs, weights, normalize=shared["normalize"], via=via)
            return
        base_index = tensor.base_index
        assert base_index is not None  # mergekit requires a base for slerp and task arithmetic
        base = inputs[base_index]
        others = [t for i, t in enumerate(inputs) if i != base_index]
        if method == "slerp":
            key = (tensor.name, model_key(tensor.base), model_key(tensor.models[1 - base_index]))
            if key not in self._slerp_dots:
                self._slerp_dots[key] = fm.slerp_dot(base, others[0])
            fm.slerp_into(out, base, others[0], t=shared["t"], dot=self._slerp_dots[key], via=via)
            return
        if not others:
            fm.store(out, base, via)
            return
        store = self._store_for(tensor)
        rows = store.build(
            method,
            tensor,
            base=base,
            parents=others,
            values=values,
            stream=stream,
            exact_ties=exact_ties,
            report=report,
        )  # (N, *shape)
        fm.combine_into(
            out,
            base,
            rows,
            weights=[per_input[m]["weight"] for m in tensor.parents],
            consensus=method in CONSENSUS_METHODS,
            normalize=shared["normalize"],
            lambda_=shared["lambda"],
            int8_mask=shared["int8_mask"],
            via=via,
        )

    def _store_for(self, tensor: PlannedTensor) -> TaskVectorStore:
        """The task-vector store of this tensor's (base, parents); a new choice drops the old one."""
        key = (
            model_key(tensor.base),
            tuple(model_key(m) for m in tensor.parents),
        )
        if self._task_vectors is None or self._task_vectors.key != key:
            self._task_vectors = None  # free the old rows before building new ones
            self._task_vectors = TaskVectorStore(key=key, can_hold=self._can_hold)
        return self._task_vectors

    def _can_hold(self, extra_bytes: int) -> bool:
        """Whether `extra_bytes` of cache fit next to what is (or will be) held."""
        held = max(self.memory_bytes(), self.estimate_memory().total)
        return self._budget is None or held + extra_bytes <= self._budget


Destination = Callable[[str, torch.Size, torch.dtype], torch.Tensor]


def _new_tensor(name: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def _copy_buffer(name: str, inputs: list[torch.Tensor]) -> torch.Tensor:
    """mergekit copies a non-floating buffer only when every input agrees."""
    first = inputs[0]
    if any(t.dtype != first.dtype or not torch.equal(t, first) for t in inputs[1:]):
        raise CompatibilityError(
            f"buffer {name} differs between the models; make them agree before merging"
        )
    return first.clone()


def _copy_into(state: Mapping[str, torch.Tensor], name: str, tensor: torch.Tensor) -> None:
    target = state.get(name)
    if target is None:
        raise CompatibilityError(
            f"the merge produces {name} but the loaded model has no such parameter: load a model"
            " of the recipe's architecture"
        )
    if target.shape != tensor.shape:
        raise CompatibilityError(
            f"{name} is {tuple(tensor.shape)} in the merge but {tuple(target.shape)} in the loaded"
            " model: load a model with the merge's vocabulary and sizes"
        )
    target.copy_(tensor)


def _untie(model: torch.nn.Module, name: str, tensor: torch.Tensor, *, like: torch.Tensor) -> None:
    """Give `name` its own parameter holding `tensor` (transformers unties such checkpoints too)."""
    module_name, _, attribute = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(
        module, attribute, torch.nn.Parameter(tensor.to(like.dtype).clone(), requires_grad=False)
    )
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "tie_word_embeddings"):
        config.tie_word_embeddings = False
