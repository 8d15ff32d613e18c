"""Merge recipes: registry-driven method specs, validation sentences, YAML round trips, mergekit.

python -m pytest -q tests/test_recipes.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mergekit import merge_methods
from mergekit.common import ModelReference
from mergekit.config import MergeConfiguration
from mergekit.merge_methods import registry
from mergekit.merge_methods.base import (
    MISSING,
    BasePolicy,
    InputContract,
    ParameterScope,
    PerInput,
    TensorGroup,
)
from mergekit.merge_methods.easy_define import merge_method
from mergekit.parameter_resolver import resolve_parameters
from pydantic import ValidationError
from transformers import AutoTokenizer

from studio.errors import RecipeError
from studio.recipes import (
    LLAMA2_CHAT_TEMPLATE,
    FilteredValue,
    MergeRecipe,
    MethodSpec,
    ParamScope,
    ParamSpec,
    RecipeModel,
    chat_template_names,
    expand_chat_template,
    get_method,
    list_methods,
    recipe_from_yaml,
    recipe_to_yaml,
    resolve_paths,
    to_merge_configuration,
    validate_recipe,
)

ROOT = "/models"
CPT, CHAT, BASE, THIRD = f"{ROOT}/cpt", f"{ROOT}/chat", f"{ROOT}/base", f"{ROOT}/third"
LLAMA2_EXPECTED = (
    "<s>[INST] <<SYS>>\nYou are a careful clinician.\n<</SYS>>\n\n"
    "What is angina? [/INST] Chest pain from too little blood to the heart. </s>"
    "<s>[INST] And its treatment? [/INST]"
)
CONVERSATION = [
    {"role": "system", "content": "You are a careful clinician."},
    {"role": "user", "content": "What is angina?"},
    {"role": "assistant", "content": "Chest pain from too little blood to the heart."},
    {"role": "user", "content": "And its treatment?"},
]


def ties(**changes: Any) -> MergeRecipe:
    """A valid ties recipe; keyword arguments replace fields."""
    fields: dict[str, Any] = {
        "method": "ties",
        "base": BASE,
        "models": (
            RecipeModel(path=CPT, parameters={"weight": 0.6, "density": 0.5}),
            RecipeModel(path=CHAT, parameters={"weight": 0.4}),
        ),
    }
    return MergeRecipe(**{**fields, **changes})


def two(method: str, params: dict[str, Any] | None = None, **changes: Any) -> MergeRecipe:
    models = (
        RecipeModel(path=CPT, parameters=params or {}),
        RecipeModel(path=CHAT, parameters=params or {}),
    )
    return MergeRecipe(**{"method": method, "models": models, **changes})


def reason(recipe: MergeRecipe) -> str:
    with pytest.raises(RecipeError) as caught:
        validate_recipe(recipe)
    return str(caught.value)


# --------------------------------------------------------------------------- method specs


def test_every_offered_method_mirrors_mergekits_registry() -> None:
    """Names, required flags, defaults and scopes come from mergekit, not from a table here."""
    offered = {m.name: m for m in list_methods()}
    assert [m.name for m in list_methods()] == sorted(offered)
    wanted = {
        "linear", "slerp", "nuslerp", "task_arithmetic", "ties", "dare_ties", "dare_linear",
        "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock", "nearswap",
        "multislerp", "karcher", "sce", "arcee_fusion", "ram",
    }  # fmt: skip
    assert wanted <= set(offered)
    assert "passthrough" not in offered
    for method in registry.registered_methods():
        if method.spec.name not in offered:
            continue
        ours = offered[method.spec.name]
        theirs = method.spec.parameters
        assert [p.name for p in ours.parameters] == [p.name for p in theirs]
        assert [p.required for p in ours.parameters] == [p.required for p in theirs]
        assert [p.default for p in ours.parameters] == [
            None if p.default is MISSING else p.default for p in theirs
        ]
        assert [p.scope == ParamScope.GLOBAL for p in ours.parameters] == [
            p.scope == ParameterScope.SHARED for p in theirs
        ]
        assert ours.pretty_name == (method.spec.pretty_name or method.spec.name)
        assert ours.reference_url == method.spec.reference_url


def test_base_rules_and_model_counts_match_mergekits_contracts() -> None:
    """The studio counts merged models; slerp-like methods take their base as the first model."""
    shape = {
        m.name: (m.base, m.min_models, m.max_models, m.base_is_first_model) for m in list_methods()
    }
    assert shape["slerp"] == ("forbidden", 2, 2, True)
    assert shape["nearswap"] == ("forbidden", 2, 2, True)
    assert shape["arcee_fusion"] == ("forbidden", 2, 2, True)
    assert shape["nuslerp"] == ("optional", 2, 2, False)
    assert shape["model_stock"] == ("required", 2, None, False)  # mergekit: >= 3 inputs
    assert shape["ties"] == ("required", 1, None, False)
    assert shape["linear"] == ("ignored", 1, None, False)
    assert shape["multislerp"] == ("optional", 1, None, False)


def test_ranges_come_from_the_name_table_and_unknown_names_get_none() -> None:
    ties_spec = get_method("ties")
    assert (ties_spec.param("density").minimum, ties_spec.param("density").maximum) == (0.0, 1.0)
    assert ties_spec.param("weight").scope == ParamScope.PER_MODEL
    assert ties_spec.param("weight").required and ties_spec.param("weight").default is None
    assert ties_spec.param("normalize") == ParamSpec(
        name="normalize", kind="bool", scope=ParamScope.GLOBAL, default=True, required=False,
        minimum=None, maximum=None, step=None,
        description="divide by the sum of the weights so they add up to 1",
    )  # fmt: skip
    assert (
        get_method("slerp").param("t").minimum == 0.0
        and get_method("slerp").param("t").maximum == 1.0
    )
    ramplus = get_method("ramplus_tl").param("alpha")
    assert (ramplus.minimum, ramplus.maximum, ramplus.default) == (None, None, 0.2)
    with pytest.raises(
        RecipeError, match="ties has no parameter 'temperature'; its parameters are: int8_mask"
    ):
        ties_spec.param("temperature")


@merge_method(
    name="studio_test_fake",
    pretty_name="Fake Average",
    contract=InputContract(base=BasePolicy.FORBIDDEN, min_inputs=2, max_inputs=3),
)
def _fake_average(group: TensorGroup, scale: PerInput[float], zeta: float = 0.25) -> torch.Tensor:
    return torch.stack([e.tensor for e in group.entries]).mean(0)


def test_a_method_registered_in_mergekit_appears_without_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Registering a method in mergekit's registry is all it takes (no cache to clear)."""
    assert "studio_test_fake" not in [m.name for m in list_methods()]
    monkeypatch.setitem(registry._METHODS, "studio_test_fake", _fake_average)
    spec = get_method("studio_test_fake")
    assert spec in list_methods()
    assert (spec.pretty_name, spec.base, spec.min_models, spec.max_models) == (
        "Fake Average",
        "forbidden",
        2,
        3,
    )
    scale, zeta = spec.parameters
    assert (scale.name, scale.scope, scale.required, scale.kind) == (
        "scale",
        ParamScope.PER_MODEL,
        True,
        "float",
    )
    assert (zeta.name, zeta.scope, zeta.default, zeta.minimum, zeta.maximum) == (
        "zeta", ParamScope.GLOBAL, 0.25, None, None,
    )  # fmt: skip
    recipe = two("studio_test_fake", {"scale": 1.0}, parameters={"zeta": 0.5})
    assert recipe_from_yaml(recipe_to_yaml(recipe)) == recipe
    assert reason(two("studio_test_fake", {"scale": 1.0}, base=BASE)) == (
        f"studio_test_fake does not take a base model; remove the base '{BASE}'"
    )


def test_passthrough_is_refused_with_the_reason() -> None:
    with pytest.raises(
        RecipeError, match="merge method 'passthrough' is not offered: it cannot merge two models"
    ):
        get_method("passthrough")


# --------------------------------------------------------------------------- round trips


def _sample(param: ParamSpec) -> Any:
    """A valid value that differs from mergekit's default, so the YAML must carry it."""
    if param.kind == "bool":
        return not param.default
    if param.kind == "int":
        return int(param.minimum or 0) + 3
    if param.minimum is not None and param.maximum is not None:
        return round(param.minimum + 0.4 * (param.maximum - param.minimum), 4)
    return 0.5


def full_recipe(spec: MethodSpec) -> MergeRecipe:
    """Every parameter of a method set, the base used if allowed, dtypes and template set."""
    count = (
        max(spec.min_models, 2)
        if spec.max_models is None
        else min(max(spec.min_models, 2), spec.max_models)
    )
    paths = [CPT, CHAT, THIRD][:count]
    per_model = {p.name: _sample(p) for p in spec.parameters if p.scope == ParamScope.PER_MODEL}
    models = [RecipeModel(path=p, parameters=per_model) for p in paths]
    if spec.base_is_first_model:  # NON_BASE parameters never apply to the first model
        mk = {p.name: p.scope for p in merge_methods.get(spec.name).spec.parameters}
        first = {k: v for k, v in per_model.items() if mk[k] != ParameterScope.NON_BASE}
        models[0] = RecipeModel(path=paths[0], parameters=first)
    base = BASE if spec.base in ("required", "optional") else None
    return MergeRecipe(
        method=spec.name,
        models=tuple(models),
        base=base,
        parameters={p.name: _sample(p) for p in spec.parameters if p.scope == ParamScope.GLOBAL},
        tokenizer_source="base" if base or spec.base_is_first_model else CHAT,
        chat_template="chatml",
        dtype="float32",
        out_dtype="bfloat16",
    )


@pytest.mark.parametrize("name", [m.name for m in list_methods()])
def test_every_method_round_trips_and_mergekit_accepts_it(name: str) -> None:
    """recipe -> YAML -> recipe is the identity, and mergekit's own checks pass on the YAML."""
    recipe = full_recipe(get_method(name))
    text = recipe_to_yaml(recipe)
    assert recipe_from_yaml(text) == recipe
    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    assert config.merge_method == name
    # mergekit's contract: input ids (models plus a base it adds) and the base
    method = merge_methods.get(name)
    inputs = [m.model for m in config.models]
    if config.base_model is not None and config.base_model not in inputs:
        inputs.append(config.base_model)
    method.validate_inputs(inputs, config.base_model)
    # mergekit's resolver finds every parameter (required ones included) for every input
    by_model = {m.model: m.parameters for m in config.models}
    shared, per_input = resolve_parameters(
        method.spec,
        tensor_name="model.layers.0.mlp.up_proj.weight",
        inputs={ref: "model.layers.0.mlp.up_proj.weight" for ref in inputs},
        sources=lambda model: (by_model.get(model), config.parameters),
        base_model=config.base_model,
    )
    assert set(shared) == {p.name for p in method.spec.shared_parameters}


def _value(param: ParamSpec) -> st.SearchStrategy[Any]:
    low, high = param.minimum, param.maximum
    number = st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
    if param.kind == "bool":
        return st.booleans()
    filtered = st.lists(
        st.builds(
            FilteredValue,
            filter=st.sampled_from(["self_attn", "mlp", "embed_tokens"]),
            value=number,
        ),
        max_size=2,
    ).map(lambda fs: [*fs, FilteredValue(value=(low + high) / 2)])  # a catch-all last
    return st.one_of(number, st.lists(number, min_size=1, max_size=4), filtered)


def _params(spec: MethodSpec, scope: ParamScope) -> st.SearchStrategy[dict[str, Any]]:
    chosen = [p for p in spec.parameters if p.scope == scope]
    return st.fixed_dictionaries(
        {p.name: _value(p) for p in chosen if p.required},
        optional={p.name: _value(p) for p in chosen if not p.required},
    )


@st.composite
def recipes(draw: st.DrawFn, method: str) -> MergeRecipe:
    spec = get_method(method)
    count = draw(st.integers(2, 2 if spec.max_models == 2 else 3))
    models = tuple(
        RecipeModel(path=p, parameters=draw(_params(spec, ParamScope.PER_MODEL)))
        for p in (CPT, CHAT, THIRD)[:count]
    )
    return MergeRecipe(
        method=method,
        models=models,
        base=BASE if spec.base == "required" else None,
        parameters=draw(_params(spec, ParamScope.GLOBAL)),
        tokenizer_source=draw(st.sampled_from([None, "union", CHAT])),
        chat_template=draw(
            st.sampled_from(
                [None, "auto", "llama2", "chatml", "{{ messages[0]['content'] }} plus text"]
            )
        ),
        dtype=draw(st.sampled_from([None, "float32", "bfloat16"])),
        out_dtype=draw(st.sampled_from([None, "float16"])),
    )


@pytest.mark.parametrize("method", ["linear", "ties", "slerp"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_valid_recipe_round_trips_through_yaml(method: str, data: st.DataObject) -> None:
    recipe = data.draw(recipes(method))
    try:
        validate_recipe(recipe)
    except RecipeError as error:  # e.g. linear weights that add up to 0 with normalize on
        assert "weights" in str(error)
        return
    text = recipe_to_yaml(recipe)
    assert recipe_from_yaml(text) == recipe
    MergeConfiguration.model_validate(yaml.safe_load(text))


def test_yaml_reads_naturally_with_base_first_for_slerp() -> None:
    recipe = two("slerp", parameters={"t": [0.0, 0.5, 1.0]}, dtype="bfloat16")
    assert recipe_to_yaml(recipe) == (
        "merge_method: slerp\n"
        f"base_model: {CPT}\n"
        "models:\n"
        f"- model: {CPT}\n"
        f"- model: {CHAT}\n"
        "parameters:\n"
        "  t: [0.0, 0.5, 1.0]\n"
        "dtype: bfloat16\n"
    )


def test_to_merge_configuration_makes_relative_paths_absolute(
    tiny_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative local paths are resolved against the cwd; Hub ids are left alone."""
    monkeypatch.chdir(tiny_family["base"].parent)
    recipe = MergeRecipe(
        method="ties",
        base="base",
        models=(
            RecipeModel(path="./cpt", parameters={"weight": 1.0}),
            RecipeModel(path="chat", parameters={"weight": 1.0}),
        ),
        tokenizer_source="chat",
    )
    config = to_merge_configuration(recipe)
    assert config.base_model == ModelReference.parse(str(tiny_family["base"]))
    assert [m.model.model.path for m in config.models] == [
        str(tiny_family["cpt"]),
        str(tiny_family["chat"]),
    ]
    assert config.tokenizer_source == ModelReference.parse(str(tiny_family["chat"]))
    assert resolve_paths(recipe).models[0].path == str(tiny_family["cpt"])
    hub = ties(base="meta-llama/Llama-2-7b-hf")
    assert resolve_paths(hub).base == "meta-llama/Llama-2-7b-hf"


# --------------------------------------------------------------------------- validation sentences


def m(path: str, **params: Any) -> RecipeModel:
    return RecipeModel(path=path, parameters=params)


def fv(value: Any, where: str | None = None) -> FilteredValue:
    return FilteredValue(filter=where, value=value)


# (recipe factory, a sentence the error must contain); each is one thing a user gets wrong.
BAD_RECIPES: list[tuple[Any, str]] = [
    (
        lambda: two("slerp", parameters={"t": 0.5}, models=(m(CPT), m(CHAT), m(THIRD))),
        "slerp needs exactly 2 models; got 3",
    ),
    (
        lambda: two("nearswap", parameters={"t": 0.5}, models=(m(CPT), m(CHAT), m(THIRD))),
        "nearswap needs exactly 2 models; got 3",
    ),
    (
        lambda: two(
            "nuslerp", models=(m(CPT, weight=1.0), m(CHAT, weight=1.0), m(THIRD, weight=1.0))
        ),
        "nuslerp needs exactly 2 models; got 3",
    ),
    (
        lambda: MergeRecipe(method="model_stock", base=BASE, models=(m(CPT),)),
        "model_stock needs at least 2 models; got 1",
    ),
    (
        lambda: ties(base=None),
        "ties needs a base model: the model both parents were fine-tuned from",
    ),
    (
        lambda: two("linear", {"weight": 0.5}, base=BASE),
        "linear does not use a base model (mergekit would merge it as one more model); "
        f"remove the base '{BASE}' or add it to the models",
    ),
    (
        lambda: two("slerp", parameters={"t": 0.5}, base=BASE),
        "slerp does not take a separate base model: the first of its 2 models is the base; "
        f"remove the base '{BASE}'",
    ),
    (
        lambda: ties(base=CPT),
        f"'{CPT}' is both the base and a merged model; list it only as the base",
    ),
    (
        lambda: ties(parameters={"temperature": 0.7}),
        "ties has no parameter 'temperature'; "
        "its parameters are: int8_mask, normalize, rescale, lambda, weight, density",
    ),
    (
        lambda: two("slerp", {"t": 0.5}, parameters={"t": 0.5}),
        f"t is a global parameter of slerp: set it once for the recipe, not per model (model '{CPT}')",
    ),
    (
        lambda: ties(parameters={"density": 1.5}),
        "density must be between 0 and 1; got 1.5",
    ),
    (
        lambda: ties(parameters={"density": [0.5, 1.5]}),
        "density must be between 0 and 1; got 1.5 (in the gradient [0.5, 1.5])",
    ),
    (
        lambda: ties(
            models=(m(CPT, weight=1.0, density=[fv(1.5, "mlp"), fv(0.5)]), m(CHAT, weight=1.0))
        ),
        f"density must be between 0 and 1; got 1.5 (filter 'mlp') (model '{CPT}')",
    ),
    (
        lambda: ties(
            models=(m(CPT, weight=1.0, density=[fv([0.2, 3.0], "mlp")]), m(CHAT, weight=1.0))
        ),
        "density must be between 0 and 1; got 3 (in the gradient [0.2, 3]) (filter 'mlp')",
    ),
    (
        lambda: ties(parameters={"lambda": -0.5}),
        "lambda must be between 0 and 2; got -0.5",
    ),
    (
        lambda: ties(models=(m(CPT, weight=0.5), m(CHAT))),
        f"ties needs a weight for every model; '{CHAT}' has none: "
        "set its weight, or a global weight for all models",
    ),
    (
        lambda: two("slerp"),
        "slerp needs t (mergekit has no default); set it",
    ),
    (
        lambda: ties(models=(m(CPT, weight=[fv(1.0, "mlp")]), m(CHAT, weight=1.0))),
        f"weight for '{CPT}' has filters but no value for the tensors they do not match; "
        "add an entry without a filter",
    ),
    (
        lambda: two("linear", {"weight": 0.0}),
        "all weights are 0 and normalize is on: the merge would divide by zero; "
        "give at least one model a non-zero weight",
    ),
    (
        lambda: two("linear", models=(m(CPT, weight=1.0), m(CHAT, weight=-1.0))),
        "the weights add up to 0 and normalize is on",
    ),
    (
        lambda: ties(parameters={"density": "abc"}),
        "density must be a number; got 'abc'",
    ),
    (
        lambda: ties(parameters={"normalize": "yes"}),
        "normalize must be true or false; got 'yes'",
    ),
    (
        lambda: ties(parameters={"normalize": [1.0, 0.0]}),
        "normalize takes one value, not a per-layer gradient list",
    ),
    (
        lambda: two("karcher", parameters={"max_iter": 2.5}),
        "max_iter must be a whole number; got 2.5",
    ),
    (
        lambda: two("linear", models=(m(CPT, weight=0.5), m(CPT + "/", weight=0.5))),
        f"model '{CPT}/' is listed twice; list each model once",
    ),
    (
        lambda: ties(tokenizer_source=THIRD),
        f"tokenizer_source '{THIRD}' is not one of the recipe's models; "
        f"choose 'base', 'union' or one of: {CPT}, {CHAT}, {BASE}",
    ),
    (
        lambda: two("linear", {"weight": 0.5}, tokenizer_source="base"),
        "tokenizer_source 'base' needs a base model and this linear recipe has none",
    ),
    (
        lambda: ties(chat_template="llama9"),
        "chat_template 'llama9' is neither a known template (auto, alpaca, chatml",
    ),
    (
        lambda: ties(chat_template="{% for m in messages %}{{ m['content'] }}"),
        "chat_template is not valid jinja",
    ),
    (
        # only reachable by skipping pydantic (model_construct); the constructor refuses it too
        lambda: MergeRecipe.model_construct(**{**dict(ties()), "dtype": "float8"}),
        "dtype 'float8' is not supported; choose one of: float32, bfloat16, float16",
    ),
]


@pytest.mark.parametrize(("recipe", "message"), BAD_RECIPES)
def test_bad_recipes_get_one_sentence(recipe: Any, message: str) -> None:
    assert message in reason(recipe())


def test_unknown_method_lists_the_known_ones() -> None:
    text = reason(MergeRecipe(method="frobnicate", models=()))
    assert text.startswith("unknown merge method 'frobnicate'; choose one of: arcee_fusion, ")
    assert "slerp" in text and "ties" in text and "passthrough" not in text


def test_defaults_from_mergekit_need_not_be_set() -> None:
    """della's epsilon and ties' density have mergekit defaults; leaving them out is valid."""
    validate_recipe(
        MergeRecipe(
            method="della", base=BASE, models=(RecipeModel(path=CPT, parameters={"weight": 1.0}),)
        )
    )
    validate_recipe(
        ties(models=(RecipeModel(path=CPT), RecipeModel(path=CHAT)), parameters={"weight": 0.5})
    )


def test_an_unknown_dtype_is_refused_when_the_recipe_is_built() -> None:
    with pytest.raises(
        ValidationError,
        match="dtype 'float8' is not supported; choose one of: float32, bfloat16, float16",
    ):
        ties(dtype="float8")


# --------------------------------------------------------------------------- YAML import


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("merge_method: ties\nmodels: [\n", "the recipe is not valid YAML at line"),
        (
            "- just\n- a list\n",
            "the recipe must be a YAML mapping with merge_method: and models:; got a list",
        ),
        ("merge_method: frobnicate\nmodels: []\n", "unknown merge method 'frobnicate'"),
        ("models: []\n", "the recipe has no merge_method"),
        (
            "merge_method: passthrough\nslices:\n- sources:\n  - model: /a\n    layer_range: [0, 2]\n",
            "merge method 'passthrough' is not offered",
        ),
        (
            "merge_method: linear\nslices:\n- sources:\n  - model: /a\n    layer_range: [0, 2]\n",
            "slices: is not supported yet: the studio merges whole models",
        ),
        ("merge_method: linear\nmodules: {}\n", "modules: is not supported yet"),
        (
            "merge_method: linear\nmodels: [{model: /a}]\ntokenizer: {source: union}\n",
            "tokenizer: (mergekit's detailed tokenizer settings) is not supported yet",
        ),
        (
            "merge_method: linear\nmodel: /a\n",
            "unknown key 'model' in the recipe; known keys: merge_method",
        ),
        (
            f"merge_method: ties\nbase_model: {BASE}\nmodels:\n- model: {CPT}\n  parameters: {{weight: 1, density: abc}}\n",
            f"density must be a number; got 'abc' (model '{CPT}')",
        ),
        (
            f"merge_method: ties\nbase_model: {BASE}\nmodels:\n- model: {CPT}\n  parameters: {{weight: 1, densty: 0.5}}\n",
            "ties has no parameter 'densty'; its parameters are:",
        ),
        (
            f"merge_method: linear\nmodels:\n- model: {CPT}\n  parameters: {{weight: 1}}\ndtype: float8\n",
            "dtype 'float8' is not supported",
        ),
        (
            f"merge_method: slerp\nbase_model: {CPT}\nmodels:\n- model: {CPT}\n- model: {CHAT}\n- model: {THIRD}\nparameters: {{t: 0.5}}\n",
            "slerp needs exactly 2 models; got 3",
        ),
        (
            "merge_method: linear\nmodels: /a\n",
            "models: must be a list of entries like '- model: /path/to/model'",
        ),
    ],
)
def test_bad_yaml_gets_one_sentence(text: str, message: str) -> None:
    with pytest.raises(RecipeError) as caught:
        recipe_from_yaml(text)
    assert message in str(caught.value)


def test_import_normalises_what_mergekit_allows() -> None:
    """A base listed among the models, slerp's base second, `1e-5` read as text, a single
    filter mapping: each becomes the one spelling the recipe uses."""
    text = f"""
merge_method: della
base_model: {BASE}
models:
  - model: {BASE}
  - model: {CPT}
    parameters:
      weight: 0.7
      density: {{filter: mlp, value: 0.3}}
      epsilon: 1e-2
parameters:
  lambda: 1
"""
    recipe = recipe_from_yaml(text)
    assert recipe.base == BASE
    assert recipe.models == (
        RecipeModel(
            path=CPT,
            parameters={
                "weight": 0.7,
                "density": [FilteredValue(filter="mlp", value=0.3)],
                "epsilon": 0.01,
            },
        ),
    )
    slerp = recipe_from_yaml(
        f"merge_method: slerp\nbase_model: {CHAT}\nmodels:\n- model: {CPT}\n- model: {CHAT}\nparameters: {{t: 0.2}}\n"
    )
    assert [m.path for m in slerp.models] == [CHAT, CPT] and slerp.base is None
    linear = recipe_from_yaml(
        f"merge_method: linear\nbase_model: {CPT}\nmodels:\n- model: {CPT}\n  parameters: {{weight: 1.0}}\n- model: {CHAT}\n  parameters: {{weight: 1.0}}\n"
    )
    assert linear.base is None and len(linear.models) == 2


def test_ties_yaml_from_the_app_reads_back() -> None:
    recipe = ties(parameters={"normalize": False, "lambda": 1.2}, dtype="float32")
    text = recipe_to_yaml(recipe)
    assert "merge_method: ties" in text and f"base_model: {BASE}" in text
    assert "density: 0.5" in text and "weight: 0.6" in text and "weight: 0.4" in text
    assert recipe_from_yaml(text) == recipe


# --------------------------------------------------------------------------- chat templates


def test_chat_template_names_and_expansion() -> None:
    names = chat_template_names()
    assert names[0] == "auto" and {"alpaca", "chatml", "llama2", "llama3", "mistral"} <= set(names)
    assert expand_chat_template("llama2") == LLAMA2_CHAT_TEMPLATE
    assert expand_chat_template("chatml") == "chatml" and expand_chat_template("auto") == "auto"


def test_raw_jinja_is_kept_as_text_including_transformers_generation_blocks() -> None:
    template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    recipe = ties(chat_template=template)
    assert recipe_from_yaml(recipe_to_yaml(recipe)).chat_template == template


def test_llama2_template_renders_the_documented_format() -> None:
    """system + user + assistant + user gives Meta's Llama-2-chat prompt exactly."""
    env = jinja2.Environment()
    rendered = env.from_string(LLAMA2_CHAT_TEMPLATE).render(
        messages=CONVERSATION, bos_token="<s>", eos_token="</s>"
    )
    assert rendered == LLAMA2_EXPECTED
    no_system = env.from_string(LLAMA2_CHAT_TEMPLATE).render(
        messages=CONVERSATION[1:2], bos_token="<s>", eos_token="</s>"
    )
    assert no_system == "<s>[INST] What is angina? [/INST]"


def test_llama2_template_renders_the_same_through_transformers(
    tiny_family: dict[str, Path],
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_family["chat"])
    tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == LLAMA2_EXPECTED


def test_llama2_is_exported_as_jinja_and_read_back_as_its_name() -> None:
    recipe = ties(chat_template="llama2")
    text = recipe_to_yaml(recipe)
    assert "[INST]" in text and "<<SYS>>" in text
    assert yaml.safe_load(text)["chat_template"] == LLAMA2_CHAT_TEMPLATE
    assert recipe_from_yaml(text).chat_template == "llama2"


# --------------------------------------------------------------------------- one real merge


def test_exported_ties_yaml_runs_in_mergekit(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    """The YAML we export is what mergekit-yaml runs: a ties merge of the tiny family."""
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    recipe = MergeRecipe(
        method="ties",
        base=str(tiny_family["base"]),
        models=(
            RecipeModel(
                path=str(tiny_family["cpt"]), parameters={"weight": 0.5, "density": [0.3, 0.7]}
            ),
            RecipeModel(path=str(tiny_family["chat"]), parameters={"weight": 0.5}),
        ),
        parameters={"density": 0.6},
        chat_template="llama2",
        dtype="float32",
    )
    text = recipe_to_yaml(recipe)
    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    out = tmp_path / "merged"
    run_merge(
        config,
        str(out),
        MergeOptions(copy_tokenizer=True, write_model_card=True, quiet=True),
        config_source=text,
    )
    assert (out / "model.safetensors").is_file()
    assert recipe_from_yaml((out / "mergekit_config.yml").read_text()) == recipe
    assert AutoTokenizer.from_pretrained(out).chat_template == LLAMA2_CHAT_TEMPLATE
