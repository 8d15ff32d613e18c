"""MergeRecipe: a typed mergekit merge of whole models, and its validation.

A recipe is what the Merge tab, the CLI and the job runner pass around: a method, the merged
models in order (each with its per-model parameters), an optional base, global parameters,
tokenizer source, chat template and dtypes. `validate_recipe` checks it against the method's
rules read from mergekit's registry (see `methods.py`) and raises `RecipeError` with one
sentence a domain expert can act on; `to_merge_configuration` hands it to mergekit.

Parameter values follow mergekit's `ParameterSetting`: a scalar, a per-layer gradient list
(`t: [0, 0.5, 1]` is interpolated across the layers) or a list of filtered values
(`[{filter: self_attn, value: 0.3}, {value: 0.7}]`: the first filter contained in a tensor's
name wins; an entry without a filter catches the rest).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeAlias

from mergekit.config import MergeConfiguration
from mergekit.merge_methods.base import ParameterScope
from pydantic import BaseModel, Field, ValidationError, field_validator

from studio.errors import RecipeError
from studio.recipes.methods import (
    MethodSpec,
    ParamScope,
    ParamSpec,
    get_method,
    mergekit_parameter,
    model_count,
)
from studio.recipes.templates import expand_chat_template, validate_chat_template

LOG = logging.getLogger(__name__)

Dtype: TypeAlias = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
TOKENIZER_KEYWORDS = ("base", "union")

# Methods with a weight and one of these flags divide by the sum of the weights.
_NORMALIZE_FLAGS = ("normalize", "normalize_weights")


class FilteredValue(BaseModel, frozen=True):
    """One entry of a filtered parameter: applies to tensors whose name contains `filter`."""

    filter: str | None = Field(
        default=None,
        description="part of a tensor name (self_attn, mlp, ...); empty: every other tensor",
    )
    value: float | int | bool | list[float] = Field(
        description="the value, or a per-layer gradient list, for the matching tensors"
    )


ParamValue: TypeAlias = float | int | bool | str | list[float] | list[FilteredValue]


class RecipeModel(BaseModel, frozen=True):
    """One merged model and its per-model parameters (weight, density, ...)."""

    path: str = Field(description="model folder (absolute after resolve_paths) or Hub id")
    parameters: dict[str, ParamValue] = Field(
        default_factory=dict, description="per-model parameters; unset ones use the global value"
    )


class MergeRecipe(BaseModel, frozen=True):
    """A mergekit merge of whole models, as the studio edits, validates and exports it."""

    method: str = Field(description="mergekit merge method (linear, slerp, ties, ...)")
    models: tuple[RecipeModel, ...] = Field(
        description="the merged models in order; for slerp the first is the t=0 end (the base)"
    )
    base: str | None = Field(
        default=None,
        description="the model the merged models were fine-tuned from (ties, dare, della, ...)",
    )
    parameters: dict[str, ParamValue] = Field(
        default_factory=dict,
        description="global parameters (t, lambda, normalize, ...); per-model ones set here "
        "apply to every model that does not set its own",
    )
    tokenizer_source: str | None = Field(
        default=None,
        description="empty: the base's tokenizer as-is; 'base'; 'union' of all vocabularies; "
        "or one model's path",
    )
    chat_template: str | None = Field(
        default=None,
        description="a template name (auto, chatml, llama2, llama3, ...) or jinja text",
    )
    dtype: Dtype | None = Field(default=None, description="dtype the merge computes in")
    out_dtype: Dtype | None = Field(
        default=None, description="dtype of the saved model (empty: same as dtype)"
    )

    @field_validator("base", "tokenizer_source", "chat_template", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        # A text box left empty means "none", not a model called "".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("dtype", "out_dtype", mode="before")
    @classmethod
    def _known_dtype(cls, value: Any) -> Any:
        if value is None or value in DTYPES:
            return value
        raise ValueError(dtype_problem("dtype", value))


def dtype_problem(field: str, value: Any) -> str:
    return f"{field} {value!r} is not supported; choose one of: {', '.join(DTYPES)}"


# --------------------------------------------------------------------------- validation


def validate_recipe(recipe: MergeRecipe) -> None:
    """RecipeError with one sentence if mergekit would reject the recipe or merge nonsense."""
    spec = get_method(recipe.method)
    for field in ("dtype", "out_dtype"):  # only reachable through model_construct
        value = getattr(recipe, field)
        if value is not None and value not in DTYPES:
            raise RecipeError(dtype_problem(field, value))
    resolved = resolve_paths(recipe)
    _check_base(resolved, spec)
    _check_models(resolved, spec)
    _check_parameters(resolved, spec)
    _check_required(resolved, spec)
    _check_normalize(resolved, spec)
    _check_tokenizer_source(resolved, spec)
    validate_chat_template(recipe.chat_template)


def _check_base(recipe: MergeRecipe, spec: MethodSpec) -> None:
    name, base = spec.name, recipe.base
    if base is None:
        if spec.base == "required":
            who = "both parents were" if len(recipe.models) == 2 else "the merged models were"
            raise RecipeError(f"{name} needs a base model: the model {who} fine-tuned from")
        return
    if spec.base_is_first_model:
        raise RecipeError(
            f"{name} does not take a separate base model: the first of its 2 models is the base; "
            f"remove the base '{base}' or list it first among the models"
        )
    if spec.base == "forbidden":
        raise RecipeError(f"{name} does not take a base model; remove the base '{base}'")
    if spec.base == "ignored":
        raise RecipeError(
            f"{name} does not use a base model (mergekit would merge it as one more model); "
            f"remove the base '{base}' or add it to the models"
        )
    if path_key(base) in {path_key(m.path) for m in recipe.models}:
        raise RecipeError(f"'{base}' is both the base and a merged model; list it only as the base")


def _check_models(recipe: MergeRecipe, spec: MethodSpec) -> None:
    seen: set[str] = set()
    for index, model in enumerate(recipe.models, start=1):
        if not model.path.strip():
            raise RecipeError(f"model {index} has an empty path; give a model folder or a Hub id")
        if path_key(model.path) in seen:
            raise RecipeError(f"model '{model.path}' is listed twice; list each model once")
        seen.add(path_key(model.path))
    count = model_count(spec, has_base=recipe.base is not None)
    got = len(recipe.models)
    if count.maximum is not None and count.minimum == count.maximum and got != count.minimum:
        raise RecipeError(f"{spec.name} needs exactly {_models(count.minimum)}; got {got}")
    if got < count.minimum:
        raise RecipeError(f"{spec.name} needs at least {_models(count.minimum)}; got {got}")
    if count.maximum is not None and got > count.maximum:
        raise RecipeError(f"{spec.name} needs at most {_models(count.maximum)}; got {got}")


def _check_parameters(recipe: MergeRecipe, spec: MethodSpec) -> None:
    for name, value in recipe.parameters.items():
        check_value(spec.param(name), value)
    for index, model in enumerate(recipe.models):
        for name, value in model.parameters.items():
            param = spec.param(name)
            if param.scope == ParamScope.GLOBAL:
                raise RecipeError(
                    f"{name} is a global parameter of {spec.name}: set it once for the recipe, "
                    f"not per model (model '{model.path}')"
                )
            if not _applies(spec, name, index):
                raise RecipeError(
                    f"{name} does not apply to '{model.path}': it is {spec.name}'s base (its "
                    "first model); remove it there"
                )
            check_value(param, value, where=f" (model '{model.path}')")


def check_value(param: ParamSpec, value: Any, *, where: str = "") -> None:
    """RecipeError if `value` (scalar, gradient list or filtered list) does not fit `param`."""
    if isinstance(value, list):
        if not value:
            raise RecipeError(f"{param.name} is an empty list{where}; give a value")
        if all(isinstance(v, FilteredValue) for v in value):
            for entry in value:
                if entry.filter is not None and not entry.filter.strip():
                    raise RecipeError(
                        f"{param.name} has an empty filter{where}; leave the filter out to match "
                        "every other tensor"
                    )
                label = entry.filter if entry.filter is not None else "*"
                check_value(param, entry.value, where=f" (filter '{label}'){where}")
            return
        if param.kind != "float":
            raise RecipeError(
                f"{param.name} takes one value, not a per-layer gradient list{where}; got {value!r}"
            )
        for item in value:
            _check_scalar(param, item, where=f" (in the gradient {_fmt_list(value)}){where}")
        return
    _check_scalar(param, value, where=where)


def _check_scalar(param: ParamSpec, value: Any, *, where: str) -> None:
    name = param.name
    if param.kind == "bool":
        if not isinstance(value, bool):
            raise RecipeError(f"{name} must be true or false; got {value!r}{where}")
        return
    if param.kind == "str":
        _check_text(param, value, where=where)
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecipeError(f"{name} must be a number; got {value!r}{where}")
    if not math.isfinite(value):
        raise RecipeError(f"{name} must be a finite number; got {value!r}{where}")
    if param.kind == "int" and not float(value).is_integer():
        raise RecipeError(f"{name} must be a whole number; got {_fmt(value)}{where}")
    low, high = param.minimum, param.maximum
    if low is not None and high is not None and not low <= value <= high:
        raise RecipeError(
            f"{name} must be between {_fmt(low)} and {_fmt(high)}; got {_fmt(value)}{where}"
        )
    if low is not None and value < low:
        raise RecipeError(f"{name} must be at least {_fmt(low)}; got {_fmt(value)}{where}")
    if high is not None and value > high:
        raise RecipeError(f"{name} must be at most {_fmt(high)}; got {_fmt(value)}{where}")


def _check_text(param: ParamSpec, value: Any, *, where: str) -> None:
    """A text-valued parameter: mergekit's own validator knows its choices (e.g. a Literal)."""
    if not isinstance(value, str):
        raise RecipeError(f"{param.name} must be text; got {value!r}{where}")


def _check_required(recipe: MergeRecipe, spec: MethodSpec) -> None:
    """Parameters mergekit has no default for must be set wherever mergekit will look."""
    for param in (p for p in spec.parameters if p.required):
        shared = recipe.parameters.get(param.name)
        if param.scope == ParamScope.GLOBAL:
            if shared is None:
                raise RecipeError(
                    f"{spec.name} needs {param.name} (mergekit has no default); set it"
                )
            if not covers_every_tensor(shared):
                raise RecipeError(_uncovered(param.name, "the recipe"))
            continue
        for index, model in enumerate(recipe.models):
            if not _applies(spec, param.name, index):
                continue
            own = model.parameters.get(param.name)
            if own is None and shared is None:
                raise RecipeError(
                    f"{spec.name} needs a {param.name} for every model; '{model.path}' has none: "
                    f"set its {param.name}, or a global {param.name} for all models"
                )
            if not any(covers_every_tensor(s) for s in (own, shared) if s is not None):
                raise RecipeError(_uncovered(param.name, f"'{model.path}'"))
        _check_base_parameter(recipe, spec, param, shared=shared)


def _check_base_parameter(
    recipe: MergeRecipe, spec: MethodSpec, param: ParamSpec, *, shared: ParamValue | None
) -> None:
    """A separate base has no parameters of its own: an INPUT-scope value must be global."""
    if recipe.base is None or spec.base_is_first_model:
        return
    if mergekit_parameter(spec.name, param.name).scope != ParameterScope.INPUT:
        return
    if shared is None or not covers_every_tensor(shared):
        raise RecipeError(
            f"{spec.name} needs {param.name} for the base model too; set a global {param.name}"
        )


def _uncovered(name: str, owner: str) -> str:
    return (
        f"{name} for {owner} has filters but no value for the tensors they do not match; "
        "add an entry without a filter"
    )


def covers_every_tensor(setting: ParamValue) -> bool:
    """True unless the setting is a filter list that some tensor names can fall through."""
    if isinstance(setting, list) and setting and isinstance(setting[0], FilteredValue):
        return any(entry.filter in (None, "*") for entry in setting)  # type: ignore[union-attr]
    return True


def _check_normalize(recipe: MergeRecipe, spec: MethodSpec) -> None:
    names = {p.name for p in spec.parameters}
    if "weight" not in names:
        return
    for flag in (f for f in _NORMALIZE_FLAGS if f in names):
        normalize = recipe.parameters.get(flag, spec.param(flag).default)
        if normalize is not True:
            continue
        weights = [
            model.parameters.get("weight", recipe.parameters.get("weight"))
            for index, model in enumerate(recipe.models)
            if _applies(spec, "weight", index)
        ]
        if not weights or any(w is None for w in weights):
            return
        if all(_all_zero(w) for w in weights):
            raise RecipeError(
                f"all weights are 0 and {flag} is on: the merge would divide by zero; "
                "give at least one model a non-zero weight"
            )
        scalars = [float(w) for w in weights if _is_number(w)]
        if len(scalars) == len(weights) and math.isclose(sum(scalars), 0.0, abs_tol=1e-12):
            raise RecipeError(
                f"the weights add up to 0 and {flag} is on: the merge would divide by zero; "
                f"change a weight or turn {flag} off"
            )


def _all_zero(setting: Any) -> bool:
    if isinstance(setting, FilteredValue):
        return _all_zero(setting.value)
    if isinstance(setting, list):
        return all(_all_zero(s) for s in setting)
    return _is_number(setting) and setting == 0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_tokenizer_source(recipe: MergeRecipe, spec: MethodSpec) -> None:
    source = recipe.tokenizer_source
    if source is None or source == "union":
        return
    paths = [m.path for m in recipe.models] + ([recipe.base] if recipe.base else [])
    if source == "base":
        if recipe.base is None and not spec.base_is_first_model:
            raise RecipeError(
                f"tokenizer_source 'base' needs a base model and this {spec.name} recipe has none; "
                "choose 'union' or one of the models"
            )
        return
    if path_key(source) not in {path_key(p) for p in paths}:
        raise RecipeError(
            f"tokenizer_source '{source}' is not one of the recipe's models; choose 'base', "
            f"'union' or one of: {', '.join(paths)}"
        )


def _applies(spec: MethodSpec, name: str, index: int) -> bool:
    """Does a per-model parameter apply to the model at `index`? mergekit skips NON_BASE
    parameters on the base, which for slerp-like methods is the first model."""
    if not spec.base_is_first_model or index != 0:
        return True
    return mergekit_parameter(spec.name, name).scope != ParameterScope.NON_BASE


def _models(count: int) -> str:
    return f"{count} model" if count == 1 else f"{count} models"


def _fmt(number: float) -> str:
    """1.0 -> '1', 1.5 -> '1.5', 1e-05 -> '1e-05': what a user typed, not '1.000000'."""
    if float(number).is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(float(number))


def _fmt_list(values: Iterable[Any]) -> str:
    return "[" + ", ".join(_fmt(v) if _is_number(v) else repr(v) for v in values) + "]"


# --------------------------------------------------------------------------- paths


def resolve_paths(recipe: MergeRecipe) -> MergeRecipe:
    """The recipe with every local model path made absolute (relative ones against the cwd).

    mergekit and transformers take a relative path that is not `./...` for a Hub id, so local
    paths must be absolute. A path that neither exists here nor starts with ./ ../ ~ is taken
    for a Hub id and kept.
    """
    source = recipe.tokenizer_source
    return recipe.model_copy(
        update={
            "models": tuple(
                m.model_copy(update={"path": resolve_model_path(m.path)}) for m in recipe.models
            ),
            "base": resolve_model_path(recipe.base) if recipe.base else recipe.base,
            "tokenizer_source": (
                resolve_model_path(source)
                if source is not None and source not in TOKENIZER_KEYWORDS
                else source
            ),
        }
    )


def resolve_model_path(path: str) -> str:
    """Absolute form of a local model path; Hub ids unchanged. Keeps mergekit's `model+lora`
    and `path@revision` syntax."""
    return "+".join(_resolve_part(part) for part in path.split("+"))


def _resolve_part(part: str) -> str:
    name, at, revision = part.partition("@")
    expanded = os.path.expanduser(name)
    if os.path.isabs(expanded):
        return expanded + at + revision
    looks_local = expanded in (".", "..") or expanded.startswith(("./", "../"))
    if looks_local or (expanded and os.path.exists(expanded)):
        return os.path.abspath(expanded) + at + revision
    return part


def path_key(path: str) -> str:
    """Comparison key: two spellings of one local folder compare equal."""
    resolved = resolve_model_path(path)
    return os.path.normpath(resolved) if os.path.isabs(resolved) else resolved


# --------------------------------------------------------------------------- mergekit


def recipe_to_mergekit_dict(recipe: MergeRecipe) -> dict[str, Any]:
    """The mergekit config mapping of a recipe (paths resolved; not validated here).

    Key order is the one mergekit's docs use, so the YAML reads naturally.
    """
    recipe = resolve_paths(recipe)
    spec = get_method(recipe.method)
    out: dict[str, Any] = {"merge_method": recipe.method}
    base = recipe.models[0].path if spec.base_is_first_model and recipe.models else recipe.base
    if base is not None:
        out["base_model"] = base
    out["models"] = [_model_entry(m) for m in recipe.models]
    if recipe.parameters:
        out["parameters"] = _dump_parameters(recipe.parameters)
    optional = {
        "tokenizer_source": recipe.tokenizer_source,
        "chat_template": expand_chat_template(recipe.chat_template)
        if recipe.chat_template
        else None,
        "dtype": recipe.dtype,
        "out_dtype": recipe.out_dtype,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    return out


def _model_entry(model: RecipeModel) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": model.path}
    if model.parameters:
        entry["parameters"] = _dump_parameters(model.parameters)
    return entry


def _dump_parameters(parameters: Mapping[str, ParamValue]) -> dict[str, Any]:
    return {name: _dump_value(value) for name, value in parameters.items()}


def _dump_value(value: ParamValue) -> Any:
    if isinstance(value, list):
        return [_dump_filtered(v) if isinstance(v, FilteredValue) else v for v in value]
    return value


def _dump_filtered(entry: FilteredValue) -> dict[str, Any]:
    value = list(entry.value) if isinstance(entry.value, list) else entry.value
    return (
        {"filter": entry.filter, "value": value} if entry.filter is not None else {"value": value}
    )


def to_merge_configuration(recipe: MergeRecipe) -> MergeConfiguration:
    """mergekit's MergeConfiguration for a recipe: validated, every local path absolute."""
    validate_recipe(recipe)
    data = recipe_to_mergekit_dict(recipe)
    try:
        return MergeConfiguration.model_validate(data)
    except (ValidationError, ValueError, RuntimeError) as error:
        # mergekit raises RuntimeError from some validators (e.g. a path with two '@').
        raise RecipeError(f"mergekit cannot read this recipe: {error}") from error
