"""Live merging equals mergekit: same recipe, same tensors, on real tiny Llamas and real run_merge.

Every fast method in float32 and bfloat16, gradients and filters, one method through mergekit's
in-memory Executor, merge_into a loaded model (plain and tied embeddings), no reloads while
sliders move, and the refusals (wrong models, wrong dtype, memory).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from pipelines.tiny_models import TinyShape, build_tiny_llama
from studio.errors import RecipeError, StudioError
from studio.merging import fast_methods as fm
from studio.merging.live import LiveMemoryError, LiveMerger

DTYPES = ["float32", "bfloat16"]
FAST = ["linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear"]
SEED = 3


def recipe(family: dict[str, Path], method: str, dtype: str, **overrides: object) -> str:
    """A mergekit YAML over the tiny family; `overrides` replace top-level keys."""
    cpt, chat, base = (str(family[k]) for k in ("cpt", "chat", "base"))
    if method == "linear":
        body: dict = {
            "models": [
                {"model": cpt, "parameters": {"weight": 0.3}},
                {"model": chat, "parameters": {"weight": 0.7}},
            ]
        }
    elif method == "slerp":
        body = {
            "base_model": cpt,
            "models": [{"model": cpt}, {"model": chat}],
            "parameters": {"t": 0.35},
        }
    else:
        dense = method == "task_arithmetic"
        first = {"weight": 0.6} | ({} if dense else {"density": 0.5})
        second = {"weight": 0.5} | ({} if dense else {"density": 0.7})
        body = {
            "base_model": base,
            "models": [{"model": cpt, "parameters": first}, {"model": chat, "parameters": second}],
            "parameters": {"lambda": 0.8} if dense else {},
        }
    return yaml.safe_dump({"merge_method": method, "dtype": dtype, **body, **overrides})


def mergekit_merge(text: str, out: Path, *, seed: int | None = SEED) -> Path:
    """The reference: mergekit's own run_merge to a folder."""
    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    options = MergeOptions(random_seed=seed, quiet=True, write_model_card=False)
    run_merge(config, str(out), options)
    return out


def mergekit_tensors(text: str, out: Path, *, seed: int | None = SEED) -> dict[str, torch.Tensor]:
    return load_file(mergekit_merge(text, out, seed=seed) / "model.safetensors")


@pytest.fixture(scope="module")
def mergers(tiny_family: dict[str, Path]) -> dict[str, LiveMerger]:
    """One live merger per dtype, holding base, cpt and chat (loaded once for the module)."""
    models = [tiny_family["cpt"], tiny_family["chat"]]
    return {d: LiveMerger(models, base_model=tiny_family["base"], dtype=d) for d in DTYPES}


def task_vector(family: dict[str, Path], name: str, parent: str, dtype: str) -> torch.Tensor:
    dt = getattr(torch, dtype)
    base = load_file(family["base"] / "model.safetensors")[name].to(dt)
    return load_file(family[parent] / "model.safetensors")[name].to(dt) - base


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", [m for m in FAST if m != "ties"])
def test_fast_method_equals_mergekit(
    mergers: dict[str, LiveMerger],
    tiny_family: dict[str, Path],
    tmp_path: Path,
    method: str,
    dtype: str,
) -> None:
    """Same YAML (and seed): every live tensor is torch.equal to the one run_merge writes."""
    text = recipe(tiny_family, method, dtype)
    expected = mergekit_tensors(text, tmp_path / "out")
    live = mergers[dtype].merge(text, seed=SEED)
    assert mergers[dtype].last_stats.path == "fast"
    assert live.keys() == expected.keys()
    unequal = [n for n in expected if not torch.equal(live[n], expected[n])]
    assert unequal == []
    assert all(live[n].dtype == expected[n].dtype for n in expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_equals_mergekit_except_threshold_ties(
    mergers: dict[str, LiveMerger], tiny_family: dict[str, Path], tmp_path: Path, dtype: str
) -> None:
    """TIES keeps exactly k = int(density * n) per tensor; differences only where |delta| ties
    at the k-th magnitude (mergekit's unstable argsort picks among those); with exact_ties the
    tensors are equal."""
    text = recipe(tiny_family, "ties", dtype)
    expected = mergekit_tensors(text, tmp_path / "out")
    merger = mergers[dtype]
    live = merger.merge(text)
    stats = merger.last_stats
    densities = {"cpt": 0.5, "chat": 0.7}
    unequal_elements = 0
    for name, reference in expected.items():
        tied_anywhere = torch.zeros(reference.shape, dtype=torch.bool)
        for parent, density in densities.items():
            delta = task_vector(tiny_family, name, parent, dtype)
            k = fm.keep_count(density, delta.numel())
            threshold = fm.MagnitudeIndex(delta).threshold(delta, density)
            mine = fm.magnitude_keep_mask(delta, threshold)
            theirs = fm.mergekit_keep_mask(delta, density)
            tied = delta.abs() == threshold.value
            assert int(mine.double().sum()) == int(theirs.double().sum()) == k
            assert not ((mine != theirs) & ~tied).any(), name
            tied_anywhere |= tied
        differs = live[name] != reference
        assert not (differs & ~tied_anywhere).any(), name
        unequal_elements += int(differs.sum())
    assert stats.threshold_ties >= 0 and (unequal_elements == 0 or stats.threshold_ties > 0)
    exact = merger.merge(text, exact_ties=True)
    assert all(torch.equal(exact[n], expected[n]) for n in expected)


def test_bf16_ties_do_occur_and_are_counted(
    mergers: dict[str, LiveMerger], tiny_family: dict[str, Path]
) -> None:
    """bf16 task vectors have few distinct magnitudes, so thresholds tie; the stats say how often."""
    mergers["bfloat16"].merge(recipe(tiny_family, "ties", "bfloat16"))
    stats = mergers["bfloat16"].last_stats
    assert stats.tensors_with_threshold_ties > 0
    assert stats.threshold_ties >= stats.tensors_with_threshold_ties


GRADIENT_CASES = {
    "slerp": {
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
                {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]},
                {"value": 0.5},
            ]
        }
    },
    "task_arithmetic": {"parameters": {"lambda": [0.5, 1.5], "normalize": True}},
}


@pytest.mark.parametrize(
    ("method", "dtype"), [("slerp", "bfloat16"), ("task_arithmetic", "float32")]
)
def test_gradients_and_filters_equal_mergekit(
    mergers: dict[str, LiveMerger],
    tiny_family: dict[str, Path],
    tmp_path: Path,
    method: str,
    dtype: str,
) -> None:
    """Per-layer gradients (t = layer position) and name filters resolve per tensor as mergekit's."""
    overrides = dict(GRADIENT_CASES[method])
    if method == "task_arithmetic":
        cpt, chat = str(tiny_family["cpt"]), str(tiny_family["chat"])
        overrides["models"] = [
            {
                "model": cpt,
                "parameters": {"weight": [{"filter": "mlp", "value": [0.1, 0.9]}, {"value": 0.4}]},
            },
            {"model": chat, "parameters": {"weight": [0.8, 0.2, 0.6]}},
        ]
    text = recipe(tiny_family, method, dtype, **overrides)
    expected = mergekit_tensors(text, tmp_path / "out")
    live = mergers[dtype].merge(text)
    assert [n for n in expected if not torch.equal(live[n], expected[n])] == []
    uniform = mergers[dtype].merge(recipe(tiny_family, method, dtype))
    layer0 = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(live[layer0], uniform[layer0])  # the gradient really changed layer 0


def test_slow_path_method_equals_mergekit(
    mergers: dict[str, LiveMerger], tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """A method without a fast kernel (della_linear, random) runs through mergekit's in-memory
    planner and Executor, seeded like run_merge, and equals the files run_merge writes."""
    cpt, chat, base = (str(tiny_family[k]) for k in ("cpt", "chat", "base"))
    params = {"weight": 0.5, "density": 0.5, "epsilon": 0.1}
    text = yaml.safe_dump(
        {
            "merge_method": "della_linear",
            "dtype": "float32",
            "base_model": base,
            "models": [{"model": cpt, "parameters": params}, {"model": chat, "parameters": params}],
        }
    )
    expected = mergekit_tensors(text, tmp_path / "out")
    live = mergers["float32"].merge(text, seed=SEED)
    assert mergers["float32"].last_stats.path == "mergekit"
    assert [n for n in expected if not torch.equal(live[n], expected[n])] == []


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(3, 40).reshape(1, -1)  # (1, T)
    with torch.no_grad():
        return model(input_ids=ids).logits  # (1, T, V)


@pytest.mark.parametrize("method", ["dare_ties", "slerp"])
def test_merge_into_gives_the_logits_of_mergekits_folder(
    mergers: dict[str, LiveMerger], tiny_family: dict[str, Path], tmp_path: Path, method: str
) -> None:
    """Writing the merge into a loaded LlamaForCausalLM equals loading mergekit's output folder."""
    text = recipe(tiny_family, method, "float32")
    reference = AutoModelForCausalLM.from_pretrained(mergekit_merge(text, tmp_path / "out"))
    model = AutoModelForCausalLM.from_pretrained(tiny_family["base"])
    parameters = {n: p for n, p in model.named_parameters()}
    stats = mergers["float32"].merge_into(model, text, seed=SEED)
    assert stats.path == "fast" and stats.untied == ()
    assert all(p is parameters[n] for n, p in model.named_parameters())  # in place, no new tensors
    assert torch.equal(logits(model), logits(reference))


@pytest.fixture(scope="module")
def tied_family(
    tiny_family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """base + two noisy children with tied input/output embeddings (like SmolLM2)."""
    root = tmp_path_factory.mktemp("tied")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_family["base"])
    base = build_tiny_llama(
        root / "base", tokenizer, seed=1, shape=TinyShape(tie_word_embeddings=True)
    )
    tensors = load_file(base / "model.safetensors")
    family = {"base": base}
    for seed, name in ((2, "cpt"), (3, "chat")):
        generator = torch.Generator().manual_seed(seed)
        child = {
            k: t + 0.01 * torch.randn(t.shape, generator=generator) for k, t in tensors.items()
        }
        build_tiny_llama(root / name, tokenizer, seed=1, shape=TinyShape(tie_word_embeddings=True))
        save_file(child, root / name / "model.safetensors", metadata={"format": "pt"})
        family[name] = root / name
    return family


@pytest.mark.parametrize("method", ["linear", "dare_linear"])
def test_merge_into_tied_embeddings(
    tied_family: dict[str, Path], tmp_path: Path, method: str
) -> None:
    """With tied embeddings mergekit writes only model.embed_tokens.weight; merge_into writes it
    once into the shared parameter, the model stays tied and gives the reloaded model's logits."""
    text = recipe(tied_family, method, "float32")
    out = mergekit_merge(text, tmp_path / "out")
    assert "lm_head.weight" not in load_file(out / "model.safetensors")
    reference = AutoModelForCausalLM.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(tied_family["base"])
    merger = LiveMerger(
        [tied_family["cpt"], tied_family["chat"]], base_model=tied_family["base"], dtype="float32"
    )
    stats = merger.merge_into(model, text, seed=SEED)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert stats.untied == ()
    assert torch.equal(logits(model), logits(reference))


def test_parameter_changes_reuse_loaded_tensors(
    mergers: dict[str, LiveMerger], tiny_family: dict[str, Path]
) -> None:
    """Moving t twice, or a TIES weight, reloads nothing and recomputes no task vector; only a
    density change re-sparsifies the task vectors (2 parents x 21 tensors)."""
    merger = mergers["bfloat16"]
    held = {m: dict(merger.held_tensors(m)) for m in merger.models}
    outputs = [
        merger.merge(recipe(tiny_family, "slerp", "bfloat16", parameters={"t": t}))
        for t in (0.2, 0.7)
    ]
    name = "model.layers.1.mlp.up_proj.weight"
    assert not torch.equal(outputs[0][name], outputs[1][name])

    def ties(weight: float, density: float) -> str:
        text = recipe(tiny_family, "ties", "bfloat16")
        return text.replace("weight: 0.6", f"weight: {weight}").replace(
            "density: 0.5", f"density: {density}"
        )

    merger.merge(ties(0.6, 0.5))
    vectors = dict(merger.task_vectors())
    merger.merge(ties(0.9, 0.5))
    assert merger.last_stats.task_vector_rows_rebuilt == 0
    assert all(merger.task_vectors()[n] is t for n, t in vectors.items())
    merger.merge(ties(0.9, 0.3))
    assert merger.last_stats.task_vector_rows_rebuilt == 21  # only cpt's density moved
    for model in merger.models:
        assert all(merger.held_tensors(model)[n] is t for n, t in held[model].items())


def test_dare_seed_semantics(mergers: dict[str, LiveMerger], tiny_family: dict[str, Path]) -> None:
    """Same seed -> same tensors (also after other merges); another seed or none -> other masks."""
    merger = mergers["float32"]
    text = recipe(tiny_family, "dare_ties", "float32")
    first = merger.merge(text, seed=1)
    merger.merge(text, seed=2)
    again = merger.merge(text, seed=1)
    other = merger.merge(text, seed=2)
    unseeded = merger.merge(text)
    name = "model.layers.0.mlp.down_proj.weight"
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not torch.equal(first[name], other[name])
    assert not torch.equal(first[name], unseeded[name])


@pytest.mark.parametrize("stream", ["kept as codes", "replayed per merge"])
def test_dare_density_change_still_equals_mergekit(
    tiny_family: dict[str, Path], tmp_path: Path, stream: str
) -> None:
    """After a density change DARE still reproduces run_merge's masks, whether the merger kept the
    seeded stream as codes or (memory budget too small for them) replays it."""
    models = [tiny_family["cpt"], tiny_family["chat"]]
    total = (
        LiveMerger(models, base_model=tiny_family["base"], dtype="bfloat16").estimate_memory().total
    )
    budget = None if stream == "kept as codes" else total + 1024
    merger = LiveMerger(
        models, base_model=tiny_family["base"], dtype="bfloat16", memory_budget_bytes=budget
    )
    text = recipe(tiny_family, "dare_ties", "bfloat16")
    merger.merge(text, seed=SEED)
    moved = text.replace("density: 0.5", "density: 0.3")
    live = merger.merge(moved, seed=SEED)
    assert merger.last_stats.task_vector_rows_rebuilt == 21
    assert bool(merger._task_vectors.codes) == (stream == "kept as codes")
    expected = mergekit_tensors(moved, tmp_path / "out")
    assert [n for n in expected if not torch.equal(live[n], expected[n])] == []


def test_recipe_for_other_models_is_refused(
    mergers: dict[str, LiveMerger], tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """A recipe naming a model the merger does not hold, or another dtype, is refused in a sentence."""
    text = recipe(tiny_family, "linear", "float32").replace(
        str(tiny_family["chat"]), str(tmp_path / "other")
    )
    with pytest.raises(RecipeError, match="are not the ones this live merger holds"):
        mergers["float32"].merge(text)
    with pytest.raises(
        RecipeError, match="dtype is bfloat16 but the live merger holds the models as float32"
    ):
        mergers["float32"].merge(recipe(tiny_family, "linear", "bfloat16"))


def test_memory_budget_is_checked_before_loading(tiny_family: dict[str, Path]) -> None:
    """Base + parents + task vectors + one merged model must fit; the refusal gives the numbers."""
    models = [tiny_family["cpt"], tiny_family["chat"]]
    with pytest.raises(
        LiveMemoryError, match=r"needs about 0\.\d+ GB .* memory budget is 0\.00 GB"
    ):
        LiveMerger(models, base_model=tiny_family["base"], memory_budget_bytes=1000)
    merger = LiveMerger(models, base_model=tiny_family["base"], dtype="bfloat16")
    estimate = merger.estimate_memory()
    model_bytes = (
        os.path.getsize(tiny_family["base"] / "model.safetensors") // 2
    )  # fp32 file, bf16 held
    assert abs(estimate.merged - model_bytes) < 4096
    assert estimate.total == estimate.models + estimate.task_vectors + estimate.merged
    assert estimate.models == 3 * estimate.merged and estimate.task_vectors == 2 * estimate.merged
    assert merger.memory_bytes() >= estimate.models
    with pytest.raises(StudioError, match="memory budget"):
        merger.check_memory(estimate.total - 1)


@pytest.mark.parametrize("method", FAST)
def test_scalar_recipes_resolve_as_mergekits_normalized_config(
    mergers: dict[str, LiveMerger], tiny_family: dict[str, Path], method: str
) -> None:
    """The shortcut for scalar `models:` recipes (no normalize_config per slider move) gives
    every tensor the parameters mergekit's normalized config does, defaults included."""
    from studio.merging.live import _load_config

    variants = [recipe(tiny_family, method, "float32")]
    if method != "slerp":  # global values under per-model ones, and a repeated parameter
        variants.append(
            recipe(tiny_family, method, "float32", parameters={"normalize": False, "weight": 0.2})
        )
    for text in variants:
        config = _load_config(text)
        plan = mergers["float32"]._plan(config)
        fast, reference = plan._resolve(config), plan._resolve(config, shortcut=False)
        assert len(fast) == len(reference) == len(plan.tensors)
        assert [(r.shared, r.per_input) for r in fast] == [
            (r.shared, r.per_input) for r in reference
        ]
