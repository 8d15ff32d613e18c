"""Merge recipes: the methods mergekit offers, a typed MergeRecipe, validation, YAML in and out.

from studio.recipes import get_method, MergeRecipe, RecipeModel, recipe_to_yaml
spec = get_method("ties")               # parameters, defaults, ranges, base rule
recipe = MergeRecipe(method="ties", base="/m/base", models=(RecipeModel(path="/m/cpt",
    parameters={"weight": 0.5, "density": 0.5}), RecipeModel(path="/m/chat", parameters={"weight": 0.5})))
print(recipe_to_yaml(recipe))            # what `mergekit-yaml` runs as-is
"""

from __future__ import annotations

from studio.recipes.methods import (
    MethodSpec,
    ModelCount,
    ParamScope,
    ParamSpec,
    get_method,
    list_methods,
    model_count,
)
from studio.recipes.recipe import (
    DTYPES,
    FilteredValue,
    MergeRecipe,
    ParamValue,
    RecipeModel,
    resolve_paths,
    to_merge_configuration,
    validate_recipe,
)
from studio.recipes.templates import (
    LLAMA2_CHAT_TEMPLATE,
    chat_template_names,
    expand_chat_template,
)
from studio.recipes.yaml_io import recipe_from_yaml, recipe_to_yaml

__all__ = [
    "DTYPES",
    "LLAMA2_CHAT_TEMPLATE",
    "FilteredValue",
    "MergeRecipe",
    "MethodSpec",
    "ModelCount",
    "ParamScope",
    "ParamSpec",
    "ParamValue",
    "RecipeModel",
    "chat_template_names",
    "expand_chat_template",
    "get_method",
    "list_methods",
    "model_count",
    "recipe_from_yaml",
    "recipe_to_yaml",
    "resolve_paths",
    "to_merge_configuration",
    "validate_recipe",
]
