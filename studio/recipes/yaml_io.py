"""MergeRecipe <-> mergekit YAML.

`recipe_to_yaml` writes the YAML `mergekit-yaml` runs as-is (absolute local paths, "llama2"
expanded to its jinja); `recipe_from_yaml` reads any mergekit YAML that merges whole models
(`models:`) and gives back the same recipe: `recipe_from_yaml(recipe_to_yaml(r)) == r` for a
recipe whose paths are already resolved (`resolve_paths(r) == r`).

Import normalises what mergekit allows but the recipe spells one way: a base listed among the
models, a single `{filter, value}` mapping, numbers YAML read as text (`1e-5`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import yaml
from mergekit.common import ModelReference
from pydantic import ValidationError

from studio.errors import RecipeError, first_problem
from studio.recipes.methods import MethodSpec, get_method, mergekit_spec
from studio.recipes.recipe import (
    DTYPES,
    TOKENIZER_KEYWORDS,
    FilteredValue,
    MergeRecipe,
    ParamValue,
    RecipeModel,
    dtype_problem,
    path_key,
    recipe_to_mergekit_dict,
    validate_recipe,
)
from studio.recipes.templates import collapse_chat_template

LOG = logging.getLogger(__name__)

_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "tokenizer_source",
    "chat_template",
    "dtype",
    "out_dtype",
)
# mergekit keys the studio cannot express yet, with the reason the user is told.
_UNSUPPORTED = {
    "slices": "slices: is not supported yet: the studio merges whole models, and layer slices "
    "(ranges of layers per model, e.g. stacking layers with passthrough) need a per-layer "
    "editor it does not have; rewrite the recipe with models:",
    "modules": "modules: is not supported yet: the studio merges whole single-module models; "
    "rewrite the recipe with models:",
    "tokenizer": "tokenizer: (mergekit's detailed tokenizer settings) is not supported yet; "
    "use tokenizer_source: base, union or a model path",
}


class _Dumper(yaml.SafeDumper):
    """Lists of numbers on one line (as mergekit writes them), multi-line text as a block."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = bool(data) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(str, _represent_str)


def recipe_to_yaml(recipe: MergeRecipe) -> str:
    """The mergekit YAML of a validated recipe (RecipeError if it is not valid)."""
    validate_recipe(recipe)
    data = recipe_to_mergekit_dict(recipe)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def recipe_from_yaml(text: str) -> MergeRecipe:
    """The recipe of a mergekit YAML; RecipeError with a sentence for anything unusable."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(f"the recipe is not valid YAML{line}: {problem}") from error
    if not isinstance(data, Mapping):
        got = "nothing" if data is None else f"a {type(data).__name__}"
        raise RecipeError(
            f"the recipe must be a YAML mapping with merge_method: and models:; got {got}"
        )
    return recipe_from_mapping(data)


def recipe_from_mapping(data: Mapping[str, Any]) -> MergeRecipe:
    """The recipe of a mergekit config mapping (what yaml.safe_load gives)."""
    method = data.get("merge_method")
    if not isinstance(method, str) or not method:
        raise RecipeError("the recipe has no merge_method; add e.g. merge_method: ties")
    spec = get_method(method)
    for key in data:
        if key in _UNSUPPORTED:
            raise RecipeError(_UNSUPPORTED[key])
        if key not in _KEYS:
            raise RecipeError(f"unknown key '{key}' in the recipe; known keys: {', '.join(_KEYS)}")
    models = _read_models(data.get("models"), spec)
    base = _model_path(data["base_model"], "base_model") if data.get("base_model") else None
    models, base = _place_base(models, base, spec)
    fields = {
        "method": method,
        "models": models,
        "base": base,
        "parameters": _read_parameters(data.get("parameters"), spec, owner="the recipe"),
        "tokenizer_source": _read_tokenizer_source(data.get("tokenizer_source")),
        "chat_template": _read_chat_template(data.get("chat_template")),
        "dtype": _read_dtype(data, "dtype"),
        "out_dtype": _read_dtype(data, "out_dtype"),
    }
    try:
        recipe = MergeRecipe(**fields)
    except ValidationError as error:
        raise RecipeError(first_problem(error)) from error
    validate_recipe(recipe)
    return recipe


def _read_models(raw: Any, spec: MethodSpec) -> list[RecipeModel]:
    if raw is None:
        raise RecipeError("the recipe has no models:; list the models to merge")
    if not isinstance(raw, list):
        raise RecipeError("models: must be a list of entries like '- model: /path/to/model'")
    models = []
    for index, entry in enumerate(raw, start=1):
        if not isinstance(entry, Mapping) or "model" not in entry:
            raise RecipeError(f"models: entry {index} must be a mapping with a model: path")
        unknown = set(entry) - {"model", "parameters"}
        if unknown:
            raise RecipeError(
                f"models: entry {index} has unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                "an entry has model: and parameters:"
            )
        path = _model_path(entry["model"], f"models: entry {index}")
        owner = f"model '{path}'"
        parameters = _read_parameters(entry.get("parameters"), spec, owner=owner)
        models.append(RecipeModel(path=path, parameters=parameters))
    return models


def _model_path(raw: Any, where: str) -> str:
    """A model reference as one string: mergekit's mapping form becomes `path@rev+lora`."""
    if isinstance(raw, str) and raw.strip():
        return raw
    if isinstance(raw, Mapping):
        try:
            reference = ModelReference.model_validate(raw)
        except (ValidationError, ValueError, RuntimeError) as error:
            raise RecipeError(f"{where} is not a model reference: {error}") from error
        if reference.override_architecture is None:
            return str(reference)
        raise RecipeError(f"{where}: override_architecture is not supported; remove it")
    raise RecipeError(f"{where} must be a model folder or Hub id; got {raw!r}")


def _place_base(
    models: list[RecipeModel], base: str | None, spec: MethodSpec
) -> tuple[tuple[RecipeModel, ...], str | None]:
    """Where mergekit's base_model goes in the recipe, method by method.

    slerp-like: the base becomes the first model. Separate base: a base also listed among the
    models (as mergekit's examples do) is taken out of the models. Ignored base (linear):
    if it is one of the models it changes nothing and is dropped.
    """
    if base is None:
        return tuple(models), None
    listed = [m for m in models if path_key(m.path) == path_key(base)]
    others = [m for m in models if path_key(m.path) != path_key(base)]
    if spec.base_is_first_model:
        first = listed[0] if listed else RecipeModel(path=base)
        return (first, *others), None
    if not listed:
        return tuple(models), base
    if spec.base == "ignored":
        LOG.info("%s ignores base_model %s, which is also a model: dropped", spec.name, base)
        return tuple(models), None
    _drop_base_parameters(listed[0], spec)
    return tuple(others), base


def _drop_base_parameters(entry: RecipeModel, spec: MethodSpec) -> None:
    """A base listed among the models loses its entry: refuse if that loses a value mergekit
    would use (an INPUT-scope parameter; NON_BASE ones never apply to the base)."""
    scopes = {p.name: p.scope.value for p in mergekit_spec(spec.name).parameters}
    kept = [name for name in entry.parameters if scopes.get(name) == "input"]
    if kept:
        raise RecipeError(
            f"the base '{entry.path}' has its own {', '.join(kept)} among the models; the studio "
            f"keeps no per-model values for the base: set them as global parameters"
        )


def _read_parameters(raw: Any, spec: MethodSpec, *, owner: str) -> dict[str, ParamValue]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RecipeError(f"parameters: of {owner} must be a mapping like 'weight: 0.5'")
    out: dict[str, ParamValue] = {}
    for name, value in raw.items():
        spec.param(str(name))  # unknown names fail here with the list of known ones
        out[str(name)] = _read_value(str(name), value, spec, owner=owner)
    return out


def _read_value(name: str, raw: Any, spec: MethodSpec, *, owner: str) -> ParamValue:
    """mergekit's ParameterSetting as a ParamValue (single filter mapping -> list of one)."""
    if raw is None:
        raise RecipeError(f"{name} of {owner} has no value; give one or remove the line")
    if isinstance(raw, Mapping):
        raw = [raw]
    if isinstance(raw, list) and any(isinstance(v, Mapping) for v in raw):
        return [_read_filtered(name, entry, spec, owner=owner) for entry in raw]
    if isinstance(raw, list):
        values = [_coerce(name, v, spec) for v in raw]
        for value in values:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise RecipeError(
                    f"{name} must be a number; got {value!r} (in the gradient list of {owner})"
                )
        return values
    return _coerce(name, raw, spec)


def _read_filtered(name: str, entry: Any, spec: MethodSpec, *, owner: str) -> FilteredValue:
    if not isinstance(entry, Mapping) or "value" not in entry or set(entry) - {"filter", "value"}:
        raise RecipeError(
            f"{name} of {owner}: every entry of a filtered list needs value: (and optionally "
            f"filter:); got {entry!r}"
        )
    value = entry["value"]
    if isinstance(value, list):
        value = [_coerce(name, v, spec) for v in value]
    else:
        value = _coerce(name, value, spec)
    try:
        return FilteredValue(filter=entry.get("filter"), value=value)
    except ValidationError as error:
        raise RecipeError(
            f"{name} of {owner}: a filtered value must be a number, true/false or a list of "
            f"numbers; got {entry['value']!r}"
        ) from error


def _coerce(name: str, value: Any, spec: MethodSpec) -> Any:
    """Text that mergekit itself would read as the parameter's type becomes that type.

    YAML 1.1 reads `1e-5` as a string; mergekit's validator turns it into 1e-05.
    """
    if not isinstance(value, str) or spec.param(name).kind == "str":
        return value
    for parameter in mergekit_spec(spec.name).parameters:
        if parameter.name == name:
            try:
                return parameter.validate(value)
            except (ValidationError, ValueError):
                return value  # validate_recipe names the problem
    return value


def _read_tokenizer_source(raw: Any) -> str | None:
    if raw is None or raw in TOKENIZER_KEYWORDS:
        return raw
    return _model_path(raw, "tokenizer_source")


def _read_chat_template(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise RecipeError(f"chat_template must be a template name or jinja text; got {raw!r}")
    return collapse_chat_template(raw)


def _read_dtype(data: Mapping[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is not None and value not in DTYPES:
        raise RecipeError(dtype_problem(field, value))
    return value
