"""The merge methods the studio offers, read from mergekit's own registry.

Every name, parameter, default, required flag and model-count rule comes from
`mergekit.merge_methods.registry.registered_methods()`: a method mergekit adds shows up here
(and in the UI's method picker and sliders) without code. The only thing mergekit does not
know is a sensible *slider range*; `_PARAMETER_UI` holds those, keyed by parameter name, with
a one-line help text. Unknown names get no bounds.

Counting models. The studio counts the *merged* models (`MergeRecipe.models`); a separate base
model is not counted. mergekit's contracts count every input, base included, so:

- "separate base" methods (ties, task_arithmetic, model_stock, ...): the base is extra, so
  model_stock's "at least 3 inputs" is "at least 2 models" here;
- "base is the first model" methods (slerp, nearswap, arcee_fusion): mergekit wants exactly two
  inputs, one of them the base. Here they take exactly 2 models and the FIRST one is mergekit's
  `base_model` (for slerp: the t=0 end). The recipe's own `base` must stay empty, so `base` is
  "forbidden" and `base_is_first_model` is True.

    python -c "from studio.recipes import list_methods; print([m.name for m in list_methods()])"
"""

from __future__ import annotations

import functools
import logging
import types
import typing
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from mergekit.merge_methods.base import (
    MISSING,
    BasePolicy,
    InputContract,
    MergeMethodSpec,
    ParameterScope,
    ParameterSpec,
)
from mergekit.merge_methods.registry import registered_methods

from studio.errors import RecipeError

LOG = logging.getLogger(__name__)

ParamKind = Literal["float", "int", "bool", "str"]
BaseRule = Literal["required", "optional", "forbidden", "ignored"]


class ParamScope(StrEnum):
    """Where a parameter is set: once for the recipe, or once per merged model."""

    GLOBAL = "global"
    PER_MODEL = "per_model"  # mergekit INPUT or NON_BASE scope


class _Ui(NamedTuple):
    minimum: float | None
    maximum: float | None
    step: float | None
    help: str


# UI ranges and help, keyed by parameter NAME (mergekit has no ranges). Ranges are what a
# slider offers and what validation accepts; values outside them are almost always typos.
_PARAMETER_UI: dict[str, _Ui] = {
    "t": _Ui(0.0, 1.0, 0.01, "position between the two models: 0 is the first model, 1 the second"),
    "weight": _Ui(-1.0, 2.0, 0.01, "how much of this model goes into the merge"),
    "density": _Ui(0.0, 1.0, 0.01, "fraction of this model's changes from the base that is kept"),
    "lambda": _Ui(0.0, 2.0, 0.01, "scale of the merged change before it is added to the base"),
    # della: spread of drop probabilities around 1 - density; ram: smallest change that counts.
    "epsilon": _Ui(0.0, 1.0, 1e-5, "della: spread of drop rates; ram: smallest change counted"),
    # breadcrumbs (arXiv:2312.06795): the largest changes are outliers and are dropped too.
    "gamma": _Ui(0.0, 1.0, 0.001, "fraction of the largest changes dropped as outliers"),
    "select_topk": _Ui(0.0, 1.0, 0.01, "fraction of elements with the highest variance kept"),
    "eps": _Ui(0.0, None, None, "numerical guard against division by zero"),
    "tol": _Ui(0.0, None, None, "convergence tolerance"),
    "max_iter": _Ui(1, None, 1, "most iterations of the mean computation"),
    "normalize": _Ui(None, None, None, "divide by the sum of the weights so they add up to 1"),
    "normalize_weights": _Ui(None, None, None, "divide by the sum of the weights"),
    "rescale": _Ui(None, None, None, "scale kept values up so the change keeps its size"),
    "int8_mask": _Ui(None, None, None, "store masks as int8 to save memory"),
    "filter_wise": _Ui(None, None, None, "compute the interpolation ratio per row, not per tensor"),
    "nuslerp_row_wise": _Ui(None, None, None, "interpolate rows instead of columns"),
    "nuslerp_flatten": _Ui(None, None, None, "interpolate the flattened tensor as one vector"),
}

_KINDS: dict[Any, ParamKind] = {float: "float", int: "int", bool: "bool", str: "str"}


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a merge method, as the UI shows it and validation checks it."""

    name: str
    kind: ParamKind
    scope: ParamScope
    default: float | int | bool | str | None  # None when mergekit has no default
    required: bool  # mergekit has no default: the recipe must set it
    minimum: float | None
    maximum: float | None
    step: float | None
    description: str


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: its parameters and its rules on the base and the number of models.

    min_models/max_models count the merged models, never a separate base (see module doc);
    for `base_is_first_model` methods (slerp) the first model is the base and is counted.
    """

    name: str
    pretty_name: str
    reference_url: str | None
    parameters: tuple[ParamSpec, ...]
    base: BaseRule
    min_models: int
    max_models: int | None
    base_is_first_model: bool = False

    def param(self, name: str) -> ParamSpec:
        for spec in self.parameters:
            if spec.name == name:
                return spec
        raise RecipeError(f"{self.name} has no parameter '{name}'; {self.parameter_list()}")

    def parameter_list(self) -> str:
        """'its parameters are: a, b' (for error messages)."""
        if not self.parameters:
            return "it takes no parameters"
        return "its parameters are: " + ", ".join(p.name for p in self.parameters)


@dataclass(frozen=True)
class ModelCount:
    """How many merged models a method accepts, with or without a separate base."""

    minimum: int
    maximum: int | None


def list_methods() -> list[MethodSpec]:
    """Every mergekit method that can merge two or more models, sorted by name."""
    specs = (_offered(method.spec) for method in registered_methods())
    return sorted((s for s in specs if s is not None), key=lambda s: s.name)


def get_method(name: str) -> MethodSpec:
    """The method called `name`; RecipeError naming the choices if there is none."""
    spec = _registry_spec(name)
    offered = _offered(spec) if spec is not None else None
    if offered is not None:
        return offered
    choices = ", ".join(m.name for m in list_methods())
    if spec is not None:
        raise RecipeError(
            f"merge method '{name}' is not offered: it cannot merge two models (mergekit uses "
            f"it to copy or stack layer slices, which the studio does not support yet); "
            f"choose one of: {choices}"
        )
    raise RecipeError(f"unknown merge method '{name}'; choose one of: {choices}")


def mergekit_spec(name: str) -> MergeMethodSpec:
    """mergekit's own spec of an offered method (scopes, validators); RecipeError if unknown."""
    get_method(name)
    spec = _registry_spec(name)
    if spec is None:  # unregistered between the two calls: treat as unknown
        raise RecipeError(f"unknown merge method '{name}'")
    return spec


def mergekit_parameter(method: str, name: str) -> ParameterSpec:
    """mergekit's ParameterSpec (scope INPUT/NON_BASE, validator) of a method's parameter."""
    for parameter in mergekit_spec(method).parameters:
        if parameter.name == name:
            return parameter
    raise RecipeError(f"{method} has no parameter '{name}'; {get_method(method).parameter_list()}")


def model_count(spec: MethodSpec, *, has_base: bool) -> ModelCount:
    """The merged-model count a method accepts, given whether the recipe has a separate base."""
    contract = mergekit_spec(spec.name).contract
    if spec.base_is_first_model:
        return _count(contract, base_input="first")
    separate = has_base and spec.base in ("required", "optional")
    return _count(contract, base_input="separate" if separate else "none")


def _registry_spec(name: str) -> MergeMethodSpec | None:
    for method in registered_methods():
        if method.spec.name == name:
            return method.spec
    return None


# Keyed by mergekit's frozen (hashable) spec, so a method registered later, or replaced, is
# converted on first use without any cache to clear.
# Keyed by mergekit's frozen (hashable) spec, so a method registered later, or replaced, is
# converted on first use without any cache to clear.
@functools.lru_cache(maxsize=256)
def _offered(spec: MergeMethodSpec) -> MethodSpec | None:
    """The studio's view of a mergekit method, or None if it cannot merge two models."""
    contract = spec.contract
    first_is_base = _base_is_first_model(contract)
    if first_is_base:
        counts = [_count(contract, base_input="first")]
    elif contract.base == BasePolicy.REQUIRED:
        counts = [_count(contract, base_input="separate")]
    elif contract.base == BasePolicy.OPTIONAL:
        counts = [_count(contract, base_input="none"), _count(contract, base_input="separate")]
    else:
        counts = [_count(contract, base_input="none")]
    maxima = [c.maximum for c in counts]
    max_models = None if None in maxima else max(m for m in maxima if m is not None)
    min_models = min(c.minimum for c in counts)
    if max_models is not None and (max_models < 2 or max_models < min_models):
        LOG.debug("merge method %s cannot merge two models: not offered", spec.name)
        return None
    return MethodSpec(
        name=spec.name,
        pretty_name=spec.pretty_name or spec.name,
        reference_url=spec.reference_url,
        parameters=tuple(_param_spec(p) for p in spec.parameters),
        base="forbidden" if first_is_base else contract.base.value,  # type: ignore[arg-type]
        min_models=min_models,
        max_models=max_models,
        base_is_first_model=first_is_base,
    )


def _base_is_first_model(contract: InputContract) -> bool:
    """slerp-like: a required base, and so few inputs allowed that a separate base would leave
    fewer than two merged models; the base must then be one of the two models."""
    if contract.base != BasePolicy.REQUIRED or contract.max_inputs is None:
        return False
    return contract.max_inputs == 2


def _count(
    contract: InputContract, *, base_input: Literal["first", "separate", "none"]
) -> ModelCount:
    """Merged models a contract allows, counted as the studio counts them.

    mergekit counts inputs (models plus a separate base) and non-base inputs; "first" means the
    first model is the base (so one model is not a non-base input).
    """
    extra = 1 if base_input == "separate" else 0  # inputs = models + extra
    base_counted = 1 if base_input == "first" else 0  # non-base inputs = models - base_counted
    lows = [1, contract.min_inputs - extra, (contract.min_non_base or 0) + base_counted]
    if base_input == "first":
        lows.append(2)
    highs = []
    if contract.max_inputs is not None:
        highs.append(contract.max_inputs - extra)
    if contract.max_non_base is not None:
        highs.append(contract.max_non_base + base_counted)
    return ModelCount(minimum=max(lows), maximum=min(highs) if highs else None)


def _param_spec(parameter: ParameterSpec) -> ParamSpec:
    ui = _PARAMETER_UI.get(parameter.name, _Ui(None, None, None, ""))
    kind = _kind(parameter.value_type)
    numeric = kind in ("float", "int")
    default = None if parameter.default is MISSING else parameter.default
    return ParamSpec(
        name=parameter.name,
        kind=kind,
        scope=ParamScope.GLOBAL
        if parameter.scope == ParameterScope.SHARED
        else ParamScope.PER_MODEL,
        default=default,
        required=parameter.required,
        minimum=ui.minimum if numeric else None,
        maximum=ui.maximum if numeric else None,
        step=ui.step if numeric else None,
        description=parameter.description or ui.help,
    )


def _kind(value_type: Any) -> ParamKind:
    """float/int/bool/str from a mergekit value type; Optional[X] is X, anything else str."""
    if value_type in _KINDS:
        return _KINDS[value_type]
    origin = typing.get_origin(value_type)
    if origin is typing.Annotated:
        return _kind(typing.get_args(value_type)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(value_type) if a is not type(None)]
        if len(args) == 1:
            return _kind(args[0])
    return "str"
