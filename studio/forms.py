"""From the Merge tab's choices to a MergeRecipe, and from a method's spec to its form fields.

The Merge tab (and `gradio_client` callers of /recipe) describe a merge the way a user thinks
of it: a CPT model, a chat model, maybe a base, a method, and slider values. This module turns
that into the typed `MergeRecipe`, so the UI holds no merge logic and the same function is
tested without a browser. Field lists come from `studio.recipes.get_method`, i.e. from
mergekit's own registry: a method mergekit adds shows up with its sliders and no code here.

It also reads the raw values a form (or a `gradio_client` caller, who can send any JSON) gives
for number fields and /recipe's params, so a NaN, an infinity, an empty number or params that
are not a JSON object become one sentence (FormError / RecipeError), never a traceback.

Tests: `.venv/bin/python -m pytest -q tests/test_forms.py tests/test_fuzz.py`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from studio.errors import RecipeError, StudioError, validated
from studio.recipes import MergeRecipe, MethodSpec, ParamScope, ParamSpec, RecipeModel, get_method

LOG = logging.getLogger(__name__)

# The two merged models, in recipe order: for slerp-like methods t=0 is the first (the CPT).
MERGED_ROLES = ("cpt", "chat")
PARAMS_SHAPE = '{"global": {"t": 0.3}, "models": {"cpt": {"weight": 0.7}, "chat": {...}}}'


class FormError(StudioError):
    """A form field holds a value that cannot be used (not a number, NaN, infinite)."""


class MergeChoice(BaseModel, frozen=True):
    """What a user picked in the Merge tab; every path is a model folder."""

    method: str = Field(description="mergekit merge method")
    cpt: str = Field(description="continual-pre-training checkpoint (knows the domain)")
    chat: str = Field(description="chat model of the same base (knows how to chat)")
    base: str | None = Field(default=None, description="the model both were fine-tuned from")
    global_params: dict[str, Any] = Field(default_factory=dict)
    model_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="role ('cpt' or 'chat') -> parameter values"
    )
    tokenizer_source: str | None = None
    chat_template: str | None = None
    dtype: str | None = "float32"


def default_value(param: ParamSpec) -> Any:
    """The value a fresh slider starts at: mergekit's default, else the middle of the range."""
    if param.default is not None:
        return param.default
    if param.kind == "bool":
        return False
    if param.minimum is not None and param.maximum is not None:
        return round((param.minimum + param.maximum) / 2, 4)
    return 0.5 if param.kind == "float" else 1


def default_params(method: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Starting values for a method: (global parameters, per-role parameters)."""
    spec = get_method(method)
    global_params = {
        p.name: default_value(p) for p in spec.parameters if p.scope == ParamScope.GLOBAL
    }
    per_model = {
        role: {p.name: default_value(p) for p in spec.parameters if p.scope == ParamScope.PER_MODEL}
        for role in MERGED_ROLES
    }
    return global_params, per_model


def uses_base(spec: MethodSpec) -> bool:
    return spec.base in ("required", "optional")


def build_recipe(choice: MergeChoice) -> MergeRecipe:
    """The recipe for a choice; values the user did not touch take their defaults.

    Parameters the method does not know are dropped (a slider left over from the previous
    method), so switching methods never produces an invalid recipe by itself.
    """
    spec = get_method(choice.method)
    global_defaults, model_defaults = default_params(choice.method)
    known = {p.name for p in spec.parameters}
    global_params = {**global_defaults, **_known(choice.global_params, known)}
    models = tuple(
        RecipeModel(
            path=getattr(choice, role),
            parameters={**model_defaults[role], **_known(choice.model_params.get(role, {}), known)},
        )
        for role in MERGED_ROLES
    )
    return MergeRecipe(
        method=choice.method,
        models=models,
        base=choice.base if uses_base(spec) else None,
        parameters=global_params,
        tokenizer_source=choice.tokenizer_source or None,
        chat_template=choice.chat_template or None,
        dtype=choice.dtype or None,
    )


def _known(values: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in known and v is not None}


# -- raw form values -----------------------------------------------------------------------------


def form_float(value: Any, *, field: str) -> float | None:
    """A number field's value as a float; None when it is empty.

    gr.Number hands over None when cleared, and a gradio_client caller can send NaN, infinity
    (JSON has neither, but Python's json reads them) or text: each becomes a FormError naming
    `field`, where float()/int() would raise a bare ValueError or OverflowError.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):  # True == 1 in Python: a checkbox value sent to a number field
        raise FormError(f"{field} must be a number; got {value}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise FormError(f"{field} must be a number; got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise FormError(f"{field} must be a finite number; got {value}")
    return number


def form_int(value: Any, *, field: str) -> int | None:
    """A whole-number field's value (a fraction is cut, as int() does); None when empty."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # exact, however large
    number = form_float(value, field=field)
    return None if number is None else int(number)


def parse_params(
    params: Mapping[str, Any] | str | None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(global values, role -> values) from /recipe's params: a mapping or its JSON text.

    Any JSON is valid input for a gradio_client caller; only an object of objects is params.
    """
    if isinstance(params, str):
        try:
            params = json.loads(params) if params.strip() else None
        except json.JSONDecodeError as error:
            raise RecipeError(
                f"params is not valid JSON ({error.msg} at character {error.pos}); "
                f"give an object like {PARAMS_SHAPE}"
            ) from error
    if params is None:
        return {}, {}
    if not isinstance(params, Mapping):
        raise RecipeError(f"params must be a JSON object like {PARAMS_SHAPE}; got {_kind(params)}")
    global_params = params.get("global") or {}
    if not isinstance(global_params, Mapping):
        raise RecipeError(
            f'params "global" must be an object of parameter values like {{"t": 0.3}}; '
            f"got {_kind(global_params)}"
        )
    models = params.get("models") or {}
    bad = (
        models
        if not isinstance(models, Mapping)
        else next((v for v in models.values() if v and not isinstance(v, Mapping)), None)
    )
    if bad is not None:
        raise RecipeError(
            f'params "models" must map a role to its values like {{"cpt": {{"weight": 0.7}}}}; '
            f"got {_kind(bad)}"
        )
    per_role = {str(role): dict(values or {}) for role, values in models.items()}
    return dict(global_params), per_role


def choice_from_form(
    cpt: str,
    chat: str,
    base: str | None,
    method: str,
    params: Mapping[str, Any] | str | None,
    tokenizer_source: str | None,
    chat_template: str | None,
    dtype: str | None,
) -> MergeChoice:
    """Form values (or the JSON a gradio_client caller sends) -> a typed MergeChoice;
    RecipeError naming the field if one is of the wrong kind."""
    global_params, model_params = parse_params(params)
    return validated(
        MergeChoice,
        RecipeError,
        method=method,
        cpt=cpt,
        chat=chat,
        base=base or None,
        global_params=global_params,
        model_params=model_params,
        tokenizer_source=tokenizer_source or None,
        chat_template=chat_template or None,
        dtype=dtype or None,
    )


def _kind(value: Any) -> str:
    """A short description of a JSON value for messages: `a list ([[]])`, `a number (-1)`."""
    names = {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list"}
    return f"{names.get(type(value), type(value).__name__)} ({json.dumps(value, default=str)[:40]})"
