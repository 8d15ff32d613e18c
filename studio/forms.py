"""From the Merge tab's choices to a MergeRecipe, and from a method's spec to its form fields.

The Merge tab (and `gradio_client` callers of /recipe) describe a merge the way a user thinks
of it: a CPT model, a chat model, maybe a base, a method, and slider values. This module turns
that into the typed `MergeRecipe`, so the UI holds no merge logic and the same function is
tested without a browser. Field lists come from `studio.recipes.get_method`, i.e. from
mergekit's own registry: a method mergekit adds shows up with its sliders and no code here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from studio.recipes import MergeRecipe, MethodSpec, ParamScope, ParamSpec, RecipeModel, get_method

LOG = logging.getLogger(__name__)

# The two merged models, in recipe order: for slerp-like methods t=0 is the first (the CPT).
MERGED_ROLES = ("cpt", "chat")


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
