"""Merge-tab choices -> MergeRecipe: every offered method yields a valid recipe from defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from studio.errors import RecipeError
from studio.forms import MergeChoice, build_recipe, default_params
from studio.recipes import list_methods, recipe_to_yaml, validate_recipe


@pytest.mark.parametrize(
    "method", [m.name for m in list_methods() if m.max_models is None or m.max_models >= 2]
)
def test_defaults_of_every_method_make_a_valid_recipe(
    method: str, tiny_family: dict[str, Path]
) -> None:
    """A user who only picks models and a method can press Run: the defaults validate."""
    choice = MergeChoice(
        method=method,
        cpt=str(tiny_family["cpt"]),
        chat=str(tiny_family["chat"]),
        base=str(tiny_family["base"]),
    )
    recipe = build_recipe(choice)
    validate_recipe(recipe)
    config = yaml.safe_load(recipe_to_yaml(recipe))
    assert config["merge_method"] == method
    spec = next(m for m in list_methods() if m.name == method)
    if spec.base_is_first_model:  # slerp: the CPT checkpoint is mergekit's base (the t=0 end)
        assert config["base_model"] == str(tiny_family["cpt"])
    elif spec.base in ("required", "optional"):  # a method that can use the base gets it
        assert config["base_model"] == str(tiny_family["base"])
    else:
        assert "base_model" not in config


def test_slider_values_reach_the_recipe_and_stale_ones_are_dropped(
    tiny_family: dict[str, Path],
) -> None:
    choice = MergeChoice(
        method="ties",
        cpt=str(tiny_family["cpt"]),
        chat=str(tiny_family["chat"]),
        base=str(tiny_family["base"]),
        global_params={"t": 0.9, "lambda": 1.5},  # t is left over from slerp: not a ties parameter
        model_params={"cpt": {"weight": 0.8, "density": 0.3}},
    )
    recipe = build_recipe(choice)
    assert recipe.parameters["lambda"] == 1.5 and "t" not in recipe.parameters
    assert recipe.models[0].parameters["weight"] == 0.8
    assert recipe.models[0].parameters["density"] == 0.3
    assert recipe.models[1].parameters["density"] == 1.0  # mergekit's default


def test_defaults_come_from_the_registry() -> None:
    global_params, per_model = default_params("slerp")
    assert global_params == {"t": 0.5}  # required, no mergekit default: middle of 0..1
    assert per_model == {"cpt": {}, "chat": {}}
    global_params, per_model = default_params("ties")
    assert global_params["normalize"] is True and global_params["lambda"] == 1.0
    assert per_model["chat"]["density"] == 1.0


def test_out_of_range_slider_value_is_refused_with_a_sentence(tiny_family: dict[str, Path]) -> None:
    choice = MergeChoice(
        method="ties",
        cpt=str(tiny_family["cpt"]),
        chat=str(tiny_family["chat"]),
        base=str(tiny_family["base"]),
        model_params={"chat": {"density": 1.5}},
    )
    with pytest.raises(RecipeError, match="density must be between 0 and 1; got 1.5"):
        validate_recipe(build_recipe(choice))
