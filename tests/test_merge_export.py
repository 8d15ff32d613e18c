"""Merge export: merge_to_folder equals mergekit-yaml tensor for tensor; jobs run it in the background.

Every method is merged twice from the same YAML text: by `merge_to_folder` in this process and
by mergekit's own `mergekit-yaml` command (its click entry point, all configs in one subprocess so
the torch import is paid once). DARE and DELLA sparsify at random; with the same
`--random-seed` they are reproducible run to run, so they are compared with a fixed seed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from pipelines.tiny_models import CHATML_TEMPLATE, TinyShape, build_tiny_llama
from studio.errors import CompatibilityError, JobError, ModelError, RecipeError
from studio.jobs import JobState, get_runner
from studio.merging import merge_to_folder, start_merge_job
from studio.recipes import MergeRecipe, RecipeModel, recipe_to_yaml
from studio.settings import load_settings

SEED = 7
WAIT = 180.0  # generous bound on a hang; never a speed assertion
DETERMINISTIC = [
    "linear",
    "slerp",
    "nuslerp",
    "task_arithmetic",
    "ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "model_stock",
]
RANDOM = ["dare_ties", "dare_linear", "della", "della_linear"]


def method_yaml(method: str, fam: dict[str, Path], *, extra: str = "") -> str:
    """A mergekit YAML for `method` on the tiny family (absolute paths, float32)."""
    base, cpt, chat = fam["base"], fam["cpt"], fam["chat"]
    if method == "linear":
        body = f"models:\n  - model: {cpt}\n    parameters: {{weight: 0.3}}\n  - model: {chat}\n    parameters: {{weight: 0.7}}\n"
    elif method == "slerp":
        body = f"base_model: {cpt}\nmodels:\n  - model: {cpt}\n  - model: {chat}\nparameters: {{t: 0.3}}\n"
    elif method == "nuslerp":
        body = f"models:\n  - model: {cpt}\n    parameters: {{weight: 0.4}}\n  - model: {chat}\n    parameters: {{weight: 0.6}}\n"
    elif method == "model_stock":
        body = f"base_model: {base}\nmodels:\n  - model: {cpt}\n  - model: {chat}\n"
    else:
        params = {
            "task_arithmetic": "weight: 0.6",
            "ties": "weight: 0.5, density: 0.6",
            "breadcrumbs": "weight: 0.5, density: 0.8, gamma: 0.05",
            "breadcrumbs_ties": "weight: 0.5, density: 0.8, gamma: 0.05",
            "dare_ties": "weight: 0.5, density: 0.5",
            "dare_linear": "weight: 0.5, density: 0.5",
            "della": "weight: 0.5, density: 0.5, epsilon: 0.1",
            "della_linear": "weight: 0.5, density: 0.5, epsilon: 0.1",
        }[method]
        body = (
            f"base_model: {base}\nmodels:\n  - model: {cpt}\n    parameters: {{{params}}}\n"
            f"  - model: {chat}\n    parameters: {{{params}}}\n"
        )
    return f"merge_method: {method}\n{body}dtype: float32\n{extra}"


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_tensors(ours: Path, theirs: Path) -> None:
    a, b = tensors(ours), tensors(theirs)
    assert sorted(a) == sorted(b)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert different == []


def leftovers(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f"{name}*"))


@pytest.fixture(scope="module")
def mergekit_yaml_outputs(
    tiny_family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each method merged by mergekit's `mergekit-yaml` command, in one subprocess."""
    root = tmp_path_factory.mktemp("mergekit_yaml")
    specs, outs = [], {}
    for method in DETERMINISTIC + RANDOM:
        config = root / f"{method}.yml"
        config.write_text(method_yaml(method, tiny_family))
        outs[method] = root / method
        seed = str(SEED) if method in RANDOM else ""
        specs.append(f"{config}::{outs[method]}::{seed}")
    script = (
        "import sys\n"
        "from mergekit.scripts.run_yaml import main  # the mergekit-yaml console script\n"
        "for spec in sys.argv[1:]:\n"
        "    config, out, seed = spec.split('::')\n"
        "    main([config, out, *(['--random-seed', seed] if seed else [])], standalone_mode=False)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, *specs], check=True, capture_output=True, timeout=600
    )
    return outs


@pytest.fixture(scope="module")
def bigger_family(
    tiny_family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Three random Llamas big enough (hidden 128, 4 layers) that a TIES merge takes seconds."""
    root = tmp_path_factory.mktemp("bigger_family")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_family["base"])
    shape = TinyShape(
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    return {
        name: build_tiny_llama(root / name, tokenizer, seed=seed, shape=shape)
        for seed, name in enumerate(["base", "cpt", "chat"])
    }


def ties_recipe(fam: dict[str, Path]) -> MergeRecipe:
    params = {"weight": 0.5, "density": 0.6}
    return MergeRecipe(
        method="ties",
        base=str(fam["base"]),
        models=(
            RecipeModel(path=str(fam["cpt"]), parameters=params),
            RecipeModel(path=str(fam["chat"]), parameters=params),
        ),
        dtype="float32",
    )


# ---------------------------------------------------------------------- in-process merges


@pytest.mark.parametrize("method", DETERMINISTIC + RANDOM)
def test_merge_to_folder_writes_exactly_the_tensors_of_mergekit_yaml(
    method: str,
    tiny_family: dict[str, Path],
    mergekit_yaml_outputs: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Same YAML -> torch.equal for every tensor (DARE/DELLA: same --random-seed)."""
    seed = SEED if method in RANDOM else None
    out = merge_to_folder(method_yaml(method, tiny_family), tmp_path / "out", random_seed=seed)
    assert out == tmp_path / "out"
    assert_same_tensors(out, mergekit_yaml_outputs[method])


@pytest.mark.parametrize("method", ["dare_ties", "della"])
def test_random_methods_depend_on_the_seed(
    method: str, tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """The seed really drives the sparsification: another seed, other tensors."""
    text = method_yaml(method, tiny_family)
    a = merge_to_folder(text, tmp_path / "a", random_seed=SEED)
    b = merge_to_folder(text, tmp_path / "b", random_seed=SEED + 1)
    ta, tb = tensors(a), tensors(b)
    assert any(not torch.equal(ta[name], tb[name]) for name in ta)


def test_the_output_folder_is_a_complete_model_with_card_tokenizer_and_chat_template(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    text = method_yaml("ties", tiny_family, extra="chat_template: auto\n")
    calls: list[tuple[int, int, str]] = []
    out = merge_to_folder(
        text, tmp_path / "ties-out", on_progress=lambda d, t, m: calls.append((d, t, m))
    )
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"README.md", "mergekit_config.yml"} <= names
    assert (out / "mergekit_config.yml").read_text() == text
    card = (out / "README.md").read_text()
    for parent in tiny_family.values():
        assert f"`{parent}`" in card
    assert f"`{tiny_family['base']}` (base model)" in card
    assert f"mergekit {version('mergekit')}" in card and "Merge Studio" in card
    assert "# ties-out" in card  # named after the output, not the temp folder
    # chat_template: auto picks the one template among the parents: the chat model's ChatML
    assert PreTrainedTokenizerFast.from_pretrained(out).chat_template == CHATML_TEMPLATE
    # progress: one total throughout, never going back, ending at done == total
    totals = {t for _, t, _ in calls}
    assert len(totals) == 1 and totals.pop() > 1
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
    assert calls[-1][0] == calls[-1][1]
    assert any(m.startswith("merged model.layers.0.") for _, _, m in calls)
    assert leftovers(tmp_path, "ties-out.partial") == []


@pytest.mark.parametrize("first", ["cpt", "chat"])
def test_without_a_base_the_first_model_gives_config_and_tokenizer(
    first: str, tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """linear has no base model. mergekit would take config and tokenizer from an unordered set
    of the models (it changes with the hash seed); the studio takes the first listed, every time.
    Only the chat model has a chat template, so it shows which one was copied."""
    other = "chat" if first == "cpt" else "cpt"
    text = (
        f"merge_method: linear\nparameters: {{weight: 0.5}}\nmodels:\n"
        f"  - model: {tiny_family[first]}\n  - model: {tiny_family[other]}\ndtype: float32\n"
    )
    out = merge_to_folder(text, tmp_path / "lin")
    assert (out / "chat_template.jinja").exists() == (first == "chat")
    assert (out / "tokenizer.json").read_bytes() == (
        tiny_family[first] / "tokenizer.json"
    ).read_bytes()


def test_a_failing_merge_leaves_no_temp_and_no_output(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_family["base"])
    odd = build_tiny_llama(tmp_path / "odd", tokenizer, shape=TinyShape(hidden_size=48))
    text = (
        f"merge_method: linear\nmodels:\n  - model: {tiny_family['base']}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {odd}\n    parameters: {{weight: 0.5}}\ndtype: float32\n"
    )
    with pytest.raises(ValueError, match="Tensor size mismatch"):
        merge_to_folder(text, tmp_path / "bad")
    assert leftovers(tmp_path, "bad") == []


def test_merge_to_folder_refuses_an_existing_folder_and_names_it(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    message = f"output folder {out} already exists; choose another name or delete it"
    with pytest.raises(JobError, match=re.escape(message)):
        merge_to_folder(method_yaml("linear", tiny_family), out)
    assert list(out.iterdir()) == [] and leftovers(tmp_path, "taken.") == []


def test_a_missing_model_folder_is_named_before_anything_is_written(tmp_path: Path) -> None:
    text = "merge_method: linear\nmodels:\n  - model: /no/such/model\n  - model: /no/other\n"
    with pytest.raises(ModelError, match="model folder /no/such/model does not exist"):
        merge_to_folder(text, tmp_path / "x")
    assert leftovers(tmp_path, "x") == []


# ---------------------------------------------------------------------- background jobs


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_start_merge_job_merges_in_a_worker_exactly_like_in_process(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = ties_recipe(tiny_family)
    settings = load_settings()
    record = start_merge_job(recipe, owner="ann")
    out = Path(record.output_path)
    assert record.kind == "merge" and record.owner == "ann"
    assert out.parent == settings.merges_dir and out.name.startswith("ties-")
    assert record.temp_path == f"{out}.partial-{record.id}"
    job_yaml = (Path(record.job_dir) / "mergekit_config.yml").read_text()
    assert job_yaml == recipe_to_yaml(recipe)

    final = get_runner().wait(record.id, timeout=WAIT)
    assert final.state == JobState.SUCCEEDED, final.record.error
    assert final.record.progress_done == final.record.progress_total
    assert (out / "mergekit_config.yml").read_text() == job_yaml
    assert not Path(record.temp_path).exists()
    reference = merge_to_folder(job_yaml, tmp_path / "reference")
    assert_same_tensors(out, reference)


def test_cancel_mid_merge_leaves_neither_output_nor_temp(
    bigger_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    record = start_merge_job(ties_recipe(bigger_family), "big-merge")  # relative: from the cwd
    assert record.output_path == str(tmp_path / "big-merge")
    runner = get_runner()

    def merging() -> bool:
        status = runner.status(record.id)
        return status.done or status.record.progress_done >= 1

    wait_for(merging, "the first merged tensor")
    mid = runner.status(record.id)
    assert mid.state == JobState.RUNNING, "the merge ended before it could be cancelled"
    assert 1 <= mid.record.progress_done < mid.record.progress_total
    assert mid.fraction is not None and 0 < mid.fraction < 1

    cancelled = runner.cancel(record.id)
    assert cancelled.state == JobState.CANCELLED
    assert leftovers(tmp_path, "big-merge") == []


def test_start_merge_job_refuses_an_existing_folder_and_writes_nothing(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    message = f"output folder {out} already exists; choose another name or delete it"
    with pytest.raises(JobError, match=re.escape(message)):
        start_merge_job(ties_recipe(tiny_family), out)
    assert list(out.iterdir()) == [] and leftovers(tmp_path, "taken.") == []
    assert get_runner().list() == []
    assert not load_settings().home.exists()  # not even the job history was created


def test_start_merge_job_rejects_an_invalid_recipe_before_starting(
    tiny_family: dict[str, Path],
) -> None:
    recipe = MergeRecipe(
        method="slerp",
        models=tuple(RecipeModel(path=str(p)) for p in tiny_family.values()),
        parameters={"t": 0.5},
    )
    with pytest.raises(RecipeError, match="slerp"):
        start_merge_job(recipe)
    assert get_runner().list() == []


def test_start_merge_job_refuses_incompatible_models_before_any_job(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """The compatibility report runs first (headers only): a shape mismatch is a sentence
    naming the tensor, and no job, history or folder appears."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_family["base"])
    odd = build_tiny_llama(tmp_path / "odd", tokenizer, shape=TinyShape(hidden_size=48))
    recipe = MergeRecipe(
        method="linear",
        models=(
            RecipeModel(path=str(tiny_family["cpt"]), parameters={"weight": 0.5}),
            RecipeModel(path=str(odd), parameters={"weight": 0.5}),
        ),
    )
    with pytest.raises(CompatibilityError, match=r"tensor \S+ has shape .*hidden size 32 vs 48"):
        start_merge_job(recipe, tmp_path / "out")
    assert get_runner().list() == []
    assert leftovers(tmp_path, "out") == []
