"""mergekit's own plan for a live merge: which tensors, from which inputs, in which order, with
which parameters -- and mergekit's in-memory Executor for the methods without a fast kernel.

A live merge must produce what `mergekit-yaml` would write, so instead of re-deriving mergekit's
rules we ask its `MergePlanner` once per recipe *structure* (models, base, method, slices, dtypes:
everything but parameter values):

- the output tensors and, for each, the models in mergekit's order, the tensor names it reads
  (aliases and tied names resolved as `LoadTensor` does) and the layer position t used for
  gradients;
- the executor's schedule (`Executor(plan_to_disk(...)).schedule`), because DARE draws its random
  masks in that order.

Parameter values are then re-resolved on every slider move with mergekit's own
`parameter_resolver.resolve_parameters` on the new recipe (filters, gradients, precedence), which
costs milliseconds instead of a full re-plan.

`iter_mergekit_in_memory` is the slow path: mergekit's in-memory plan (`MergePlanner.plan_in_memory`,
rebuilt here because 0.1.5's own fails validation) + `Executor.run()`,
seeded like `run_merge` (`MergeOptions.random_seed`). Imported by studio.merging.live.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from mergekit import merge_methods
from mergekit.architecture import ModelArchitecture, WeightInfo, get_architecture_info
from mergekit.common import ModelReference
from mergekit.config import ConfigReader, MergeConfiguration
from mergekit.graph import Executor
from mergekit.io.tasks import GatherTensors, LoaderCache, ReturnTensor
from mergekit.merge import _model_out_config
from mergekit.merge_methods.base import MergeMethodSpec
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
from mergekit.options import MergeOptions
from mergekit.parameter_resolver import resolve_parameters
from mergekit.plan import MergePlanner
from pydantic import ValidationError

from studio.errors import RecipeError

LOG = logging.getLogger(__name__)

# plan_to_disk needs an output path to build its (never executed) writer task.
_UNUSED_OUT_PATH = "/nonexistent/live-merge-plan"


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor as mergekit plans it."""

    name: str
    models: tuple[ModelReference, ...]  # mergekit's model_order (the base last if it was added)
    base: ModelReference | None
    input_names: tuple[str, ...]  # WeightInfo names per model: parameter filters match these
    sources: tuple[str | None, ...]  # tensor keys read from each model's files (None: absent)
    t: float  # layer position in [0, 1] for gradients; 0 for embeddings and final norm
    module: str
    slice_index: int
    out_dtype: str | None  # WeightInfo.force_dtype or the recipe's out_dtype
    plain: bool  # plain gather: no vocabulary permutation/truncation, no forced input dtype
    base_index: int | None = None  # position of the base in `models`

    @property
    def parents(self) -> tuple[ModelReference, ...]:
        """The non-base models, in mergekit's order (its `group.non_base`)."""
        return tuple(m for i, m in enumerate(self.models) if i != self.base_index)


@dataclass(frozen=True)
class ResolvedParameters:
    """Parameter values of one output tensor: shared, and per input model."""

    shared: Mapping[str, Any]
    per_input: Mapping[ModelReference, Mapping[str, Any]]


@dataclass(frozen=True)
class MergekitContext:
    """What MergePlanner needs besides the recipe; depends only on the models."""

    options: MergeOptions
    arch_info: ModelArchitecture
    out_config: Any


def structure_key(config: MergeConfiguration) -> str:
    """The recipe without its parameter values: equal keys share one plan."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "parameters"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    dumped = config.model_dump(mode="json", exclude_defaults=True)
    return json.dumps(strip(dumped), sort_keys=True)


def mergekit_context(config: MergeConfiguration) -> MergekitContext:
    """Architecture and output config exactly as run_merge derives them."""
    options = MergeOptions(quiet=True)
    try:
        arch_info = get_architecture_info(config, options)
        LoaderCache().setup(options=options)
        out_config = _model_out_config(config, arch_info, trust_remote_code=False)
    except (RuntimeError, ValueError, OSError) as error:
        raise RecipeError(f"mergekit cannot read the recipe's models: {error}") from error
    return MergekitContext(options=options, arch_info=arch_info, out_config=out_config)


@dataclass(frozen=True)
class _Placement:
    t: float
    module: str
    slice_index: int
    input_names: tuple[str, ...]


class _RecordingPlanner(MergePlanner):
    """MergePlanner that also remembers where each tensor's parameters come from."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.placements: dict[str, _Placement] = {}

    def plan_tensor(
        self,
        weight: WeightInfo,
        weights_in: list[WeightInfo],
        models: list[ModelReference],
        cfg_reader: ConfigReader,
    ) -> None:
        planned = len(self._tensors)
        super().plan_tensor(weight, weights_in, models, cfg_reader)
        if len(self._tensors) == planned:
            return  # optional weight absent from every model: mergekit skips it
        module = next(n for n, m in self.config.modules.items() if m is cfg_reader.module)
        slices = self.config.modules[module].slices
        slice_index = next(i for i, s in enumerate(slices) if s is cfg_reader.slice_out)
        self.placements[weight.name] = _Placement(
            t=cfg_reader.t,
            module=module,
            slice_index=slice_index,
            input_names=tuple(w.name for w in weights_in),
        )


def _source_names(task: ExecuteMergeMethodTask) -> tuple[tuple[str | None, ...], bool]:
    """Tensor keys each model's loader would read, and whether the gather is plain."""
    gather = task.gather_tensors
    if not isinstance(gather, GatherTensors):
        return tuple(None for _ in task.model_order), False
    loads = gather.arguments()
    by_model = {load.model: load for load in loads.values()}
    names = tuple(
        by_model[model]._resolve_name(LoaderCache().get(model)) for model in task.model_order
    )
    forced = any(wi.force_dtype for wi in gather.weight_info.values())
    return names, not forced


@dataclass
class LivePlan:
    """mergekit's plan of one recipe structure, reusable for any parameter values."""

    method: str
    tensors: tuple[PlannedTensor, ...]  # in mergekit's execution order
    context: MergekitContext
    slow_reason: str | None = None  # why the fast kernels cannot be used, if they cannot
    _resolved: dict[str, tuple[ResolvedParameters, ...]] = field(default_factory=dict)
    # The owning LiveMerger's input tensors by output name (references to the tensors it holds,
    # never copies), so a slider move does not look each model up again.
    inputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def fast(self) -> bool:
        return self.slow_reason is None

    def resolve(self, config: MergeConfiguration) -> tuple[ResolvedParameters, ...]:
        """Each tensor's parameter values for `config` (same structure), as mergekit resolves them."""
        key = config.model_dump_json()
        if key not in self._resolved:
            self._resolved.clear()  # one entry: the slider's current position
            self._resolved[key] = self._resolve(config)
        return self._resolved[key]

    def _resolve(
        self, config: MergeConfiguration, *, shortcut: bool = True
    ) -> tuple[ResolvedParameters, ...]:
        spec = merge_methods.get(self.method).spec
        if shortcut and _uniform_parameters(config):
            return self._resolve_uniform(config, spec)
        ctx = self.context
        planner = MergePlanner(
            config.model_copy(deep=True), ctx.arch_info, ctx.options, ctx.out_config
        )
        try:
            planner.normalize_config()
            readers: dict[tuple[str, int], ConfigReader] = {}
            resolved = []
            for tensor in self.tensors:
                where = (tensor.module, tensor.slice_index)
                if where not in readers:
                    module = planner.config.modules[tensor.module]
                    readers[where] = ConfigReader(
                        config=planner.config,
                        t=0,
                        slice_out=module.slices[tensor.slice_index],
                        module=module,
                    )
                reader = readers[where]
                shared, per_input = resolve_parameters(
                    spec,
                    tensor_name=tensor.name,
                    inputs=dict(zip(tensor.models, tensor.input_names, strict=True)),
                    sources=reader.parameter_sources,
                    base_model=reader.base_model,
                    t=tensor.t,
                )
                resolved.append(ResolvedParameters(shared=shared, per_input=per_input))
        except (RuntimeError, ValueError, ValidationError) as error:
            raise RecipeError(f"The recipe's parameters cannot be resolved: {error}") from error
        return tuple(resolved)

    def _resolve_uniform(
        self, config: MergeConfiguration, spec: MergeMethodSpec
    ) -> tuple[ResolvedParameters, ...]:
        """`_resolve` for a recipe whose parameters are plain scalars under `models:`: every
        tensor of one model set gets the same values, so resolve one tensor per set, from the
        sources mergekit's normalized config would give it (its `ConfigReader.parameter_sources`
        after `normalize_config` turns `models:` into one slice per module: the model's own
        parameters, then the slice's and module's (none), then the global ones). This skips
        normalize_config, which reads every model's config.json on each slider move
        (tests/test_live_merge.py checks both paths agree)."""
        by_model = config.models or []

        def sources(model: ModelReference | None) -> Iterator[Mapping[str, Any] | None]:
            if model is not None:
                yield from (m.parameters for m in by_model if m.model == model)
            yield None  # the slice's parameters
            yield None  # the module's parameters
            yield config.parameters

        by_models: dict[tuple[ModelReference, ...], ResolvedParameters] = {}
        resolved = []
        try:
            for tensor in self.tensors:
                if tensor.models not in by_models:
                    shared, per_input = resolve_parameters(
                        spec,
                        tensor_name=tensor.name,
                        inputs=dict(zip(tensor.models, tensor.input_names, strict=True)),
                        sources=sources,
                        base_model=config.base_model,
                        t=tensor.t,
                    )
                    by_models[tensor.models] = ResolvedParameters(shared, per_input)
                resolved.append(by_models[tensor.models])
        except (RuntimeError, ValueError, ValidationError) as error:
            raise RecipeError(f"The recipe's parameters cannot be resolved: {error}") from error
        return tuple(resolved)


def _uniform_parameters(config: MergeConfiguration) -> bool:
    """True if no parameter can differ between tensors: no slices or modules, and every value
    (global and per model) a plain scalar -- no gradient list, no tensor-name filter."""
    if config.slices or config.modules:
        return False
    settings = [config.parameters or {}] + [m.parameters or {} for m in config.models or ()]
    return all(
        isinstance(value, (bool, int, float, str)) for group in settings for value in group.values()
    )


def plan_structure(config: MergeConfiguration, *, fast_methods: frozenset[str]) -> LivePlan:
    """Plan `config` with mergekit once; the result serves every parameter value."""
    context = mergekit_context(config)
    planner = _RecordingPlanner(
        config.model_copy(deep=True), context.arch_info, context.options, context.out_config
    )
    try:
        targets = planner.plan_to_disk(out_path=_UNUSED_OUT_PATH)
        schedule = Executor(targets).schedule.tasks
    except (RuntimeError, ValueError, ValidationError) as error:
        raise RecipeError(f"mergekit cannot plan this recipe: {error}") from error

    tensors = []
    slow_reason = None if config.merge_method in fast_methods else "no fast kernel"
    for handle in schedule:
        task = handle.task()
        if not isinstance(task, ExecuteMergeMethodTask):
            continue
        weight = task.output_weight
        placement = planner.placements[weight.name]
        sources, plain = _source_names(task)
        if not plain:
            slow_reason = (
                slow_reason or f"{weight.name} needs vocabulary alignment or a forced dtype"
            )
        elif None in sources:
            slow_reason = slow_reason or f"{weight.name} is missing from some models"
        tensors.append(
            PlannedTensor(
                name=weight.name,
                models=tuple(task.model_order),
                base=task.base_model,
                input_names=placement.input_names,
                sources=sources,
                t=placement.t,
                module=placement.module,
                slice_index=placement.slice_index,
                out_dtype=weight.force_dtype or config.out_dtype,
                plain=plain,
                base_index=task.model_order.index(task.base_model)
                if task.base_model in task.model_order
                else None,
            )
        )
    if config.tokenizer is not None or config.tokenizer_source is not None:
        slow_reason = slow_reason or "the recipe builds a tokenizer"
    return LivePlan(
        method=config.merge_method, tensors=tuple(tensors), context=context, slow_reason=slow_reason
    )


def _plan_in_memory(planner: MergePlanner, config: MergeConfiguration) -> list[ReturnTensor]:
    """MergePlanner.plan_in_memory, which mergekit 0.1.5 cannot run as shipped.

    Its ReturnTensor declares `tensor_task: Task[torch.Tensor]` while the merge tasks are
    `Task[Optional[torch.Tensor]]`, so pydantic rejects them ("Can't instantiate abstract class
    Task[Tensor]"). We build the same ReturnTensor tasks without that validation.
    """
    planner._plan()
    return [
        ReturnTensor.model_construct(
            weight_info=weight, tensor_task=task, dtype=weight.force_dtype or config.out_dtype
        )
        for weight, task in planner._tensors
    ]


def iter_mergekit_in_memory(
    config: MergeConfiguration, *, seed: int | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """mergekit's in-memory path (plan_in_memory + Executor), one output tensor at a time.

    Seeded like run_merge with MergeOptions(random_seed=seed), on a forked RNG so the caller's
    random state is left as it was.
    """
    context = mergekit_context(config)
    planner = MergePlanner(
        config.model_copy(deep=True), context.arch_info, context.options, context.out_config
    )
    try:
        targets = _plan_in_memory(planner, config)
        executor = Executor(targets, math_device="cpu", storage_device="cpu")
    except (RuntimeError, ValueError, ValidationError) as error:
        raise RecipeError(f"mergekit cannot plan this recipe: {error}") from error
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for task, value in executor.run(quiet=True):
            yield task.weight_info.name, value
