"""Bad input (issue 8): corrupt parents (truncated, not JSON, NaN/Inf weights) found at inspect
time, and confinement of every path to the studio's roots. Worker faults and restarts are in
tests/test_robustness_workers.py and tests/test_robustness_restarts.py (helpers shared from here).

    .venv/bin/python -m pytest -q tests/test_robustness.py        # about 20 s
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from studio.catalog import add_local_model, inspect_model, list_models, model_folder
from studio.catalog.gguf_import import import_gguf
from studio.catalog.inspect import non_finite_tensor
from studio.confine import allowed_roots, check_upload_size, confine_path
from studio.errors import ModelError, PathNotAllowedError, StudioError
from studio.evaluation.tasks import load_task
from studio.jobs import get_runner
from studio.jobs.runner import REPO_ROOT
from studio.merging import start_merge_job
from studio.recipes import MergeRecipe, RecipeModel
from studio.settings import StudioSettings, load_settings
from studio.training import CPTConfig, start_train_job

WAIT = 120.0  # a bound on a hang, never a speed assertion


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def poison(folder: Path, tensor: str, values: list[float]) -> None:
    """Write `values` (NaN/Inf) into the first elements of one tensor of a model folder."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    flat = tensors[tensor].flatten().clone()
    flat[: len(values)] = torch.tensor(values, dtype=flat.dtype)
    tensors[tensor] = flat.reshape(tensors[tensor].shape)
    save_file(tensors, path, metadata={"format": "pt"})


def linear_recipe(cpt: Path, chat: Path) -> MergeRecipe:
    return MergeRecipe(
        method="linear",
        models=(
            RecipeModel(path=str(cpt), parameters={"weight": 0.5}),
            RecipeModel(path=str(chat), parameters={"weight": 0.5}),
        ),
        dtype="float32",
    )


def leftovers(parent: Path) -> list[str]:
    """Half-written folders under `parent` (what a failed job must not leave)."""
    return sorted(p.name for p in parent.rglob("*.partial*")) if parent.is_dir() else []


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


# ---------------------------------------------------------------------- 4. corrupt inputs


@pytest.mark.parametrize(
    ("values", "counts"),
    [([float("nan")], "1 NaN and 0 Inf"), ([float("inf"), float("-inf")], "0 NaN and 2 Inf")],
)
def test_non_finite_weights_are_found_at_inspect_and_stop_a_merge_before_it_starts(
    tiny_family: dict[str, Path], tmp_path: Path, values: list[float], counts: str
) -> None:
    """A parent with NaN or Inf in one tensor: inspect names the file, the tensor and the counts;
    start_merge_job refuses it before any job or folder exists."""
    bad = copy_model(tiny_family["cpt"], tmp_path / "bad-cpt")
    poison(bad, "model.layers.1.mlp.down_proj.weight", values)
    with pytest.raises(
        ModelError,
        match=rf"model.safetensors in {bad} holds non-finite weights \(tensor "
        rf"model.layers.1.mlp.down_proj.weight: {counts} values\)",
    ):
        inspect_model(bad)
    settings = load_settings()
    with pytest.raises(ModelError, match="holds non-finite weights"):
        start_merge_job(linear_recipe(bad, tiny_family["chat"]), settings=settings)
    assert get_runner(settings).list() == []
    assert not settings.merges_dir.exists() or list(settings.merges_dir.iterdir()) == []
    # the clean parents still inspect (the check is per file, not a sticky global)
    assert inspect_model(tiny_family["cpt"]).num_layers == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_the_bit_test_counts_nan_and_inf_in_every_float_dtype(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    """The scan reads raw bits: the largest finite value, subnormals and -0 are finite; NaN and
    both infinities are counted as torch counts them. Integer tensors are skipped."""
    info = torch.finfo(dtype)
    finite = torch.tensor([0.0, -0.0, 1.0, info.max, -info.max, info.tiny / 2], dtype=dtype)
    bad = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), float("nan")], dtype=dtype)
    path = tmp_path / "t.safetensors"
    save_file({"a": finite, "ids": torch.arange(5), "b": bad}, path)
    stat = path.stat()
    found = non_finite_tensor(str(path), stat.st_size, stat.st_mtime_ns)
    assert found == ("b", int(torch.isnan(bad).sum()), int(torch.isinf(bad).sum())) == ("b", 2, 2)
    save_file({"a": finite, "ids": torch.arange(5)}, path)
    stat = path.stat()
    assert non_finite_tensor(str(path), stat.st_size, stat.st_mtime_ns + 1) is None


def test_a_file_rewritten_in_place_is_checked_again(
    tiny_family: dict[str, Path], tmp_path: Path
) -> None:
    """The value scan is cached per file version: fixing a poisoned file clears the refusal."""
    folder = copy_model(tiny_family["chat"], tmp_path / "chat")
    clean = (folder / "model.safetensors").read_bytes()
    inspect_model(folder)
    poison(folder, "model.norm.weight", [float("nan")])
    with pytest.raises(ModelError, match=r"tensor model.norm.weight: 1 NaN"):
        inspect_model(folder)
    (folder / "model.safetensors").write_bytes(clean)
    os.utime(folder / "model.safetensors", ns=(time.time_ns(), time.time_ns() + 10_000))
    assert inspect_model(folder).name == "chat"


def test_corrupt_models_reach_the_api_as_one_sentence_not_a_traceback(
    tiny_family: dict[str, Path], tmp_path: Path, studio_home: Path
) -> None:
    """/inspect and /add_model on a truncated file, a config that is not JSON, NaN weights and a
    folder outside the roots: each answers with the core's sentence, and the app keeps serving."""
    from gradio_client import Client

    from studio.ui.models_tab import build_models_tab
    from tests.conftest import launched_tab

    cut = copy_model(tiny_family["base"], tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 3])
    not_json = copy_model(tiny_family["base"], tmp_path / "not-json")
    (not_json / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    nan = copy_model(tiny_family["base"], tmp_path / "nan")
    poison(nan, "model.embed_tokens.weight", [float("nan")])
    cases = {
        cut: "is truncated or corrupt",
        not_json: "is not valid JSON (line 1, column 40",
        nan: "holds non-finite weights",
        Path("/etc"): "is outside the folders the studio may use",
    }
    with launched_tab(build_models_tab, studio_home) as url:
        client = Client(url, verbose=False)
        for folder, sentence in cases.items():
            for api in ("/inspect", "/add_model"):
                with pytest.raises(Exception) as caught:  # gradio_client's AppError
                    client.predict(str(folder), api_name=api)
                message = str(caught.value)
                assert sentence in message, (api, message)
                assert "Traceback" not in message and 'File "' not in message
        info, _ = client.predict(str(tiny_family["base"]), api_name="/inspect")
        assert info["num_layers"] == 2  # still serving


# ---------------------------------------------------------------------- 5. confinement


@pytest.fixture()
def confined(
    tiny_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[StudioSettings, Path, Path]:
    """Roots narrowed to STUDIO_HOME + tmp_path/inside; a model in it and one outside it."""
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    monkeypatch.setenv("STUDIO_DATA_ROOTS", str(inside))
    settings = load_settings()
    settings.ensure_dirs()
    copy_model(tiny_family["cpt"], inside / "cpt")
    copy_model(tiny_family["chat"], inside / "chat")
    copy_model(tiny_family["chat"], outside / "chat")
    return settings, inside, outside


def test_the_roots_are_home_model_roots_data_roots_and_shipped_data(
    confined: tuple[StudioSettings, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, inside, _ = confined
    monkeypatch.setenv("STUDIO_MODEL_ROOTS", str(tmp_path / "shared"))
    roots = allowed_roots(load_settings())
    assert roots == (
        settings.home,
        (tmp_path / "shared").resolve(),
        inside.resolve(),
        REPO_ROOT / "assets",
        REPO_ROOT / "pipelines" / "configs",
    )
    # settings built by hand (app.py, tests) still honour STUDIO_DATA_ROOTS
    assert StudioSettings(home=settings.home).data_roots == (inside.resolve(),)


def test_outside_paths_dotdot_and_symlinks_out_are_refused_by_every_catalog_entry_point(
    confined: tuple[StudioSettings, Path, Path],
) -> None:
    """An absolute path elsewhere, a `..` walk out of a root and a symlink inside a root that
    points out are all refused by inspect, add and the catalog's folder lookup; a symlink that
    stays inside the roots is fine."""
    settings, inside, outside = confined
    (inside / "escape").symlink_to(outside / "chat")
    (inside / "alias").symlink_to(inside / "chat")
    hostile = {
        str(outside / "chat"): "is outside the folders the studio may use",
        f"{inside}/../outside/chat": "is outside the folders the studio may use",
        str(inside / "escape"): f"leads through a symbolic link to {outside / 'chat'}",
    }
    for path, reason in hostile.items():
        for call in (
            lambda p: inspect_model(p, settings=settings),
            lambda p: add_local_model(p, settings=settings),
            lambda p: model_folder(p, settings=settings),
        ):
            with pytest.raises(PathNotAllowedError, match=reason) as caught:
                call(path)
            assert "STUDIO_MODEL_ROOTS or STUDIO_DATA_ROOTS" in str(caught.value)
    assert list_models(settings) == []  # nothing was registered
    assert inspect_model(inside / "alias", settings=settings).name == "alias"
    assert add_local_model(inside / "chat", settings=settings).source == "local"


def test_a_registered_folder_outside_narrowed_roots_is_no_longer_listed(
    confined: tuple[StudioSettings, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, inside, outside = confined
    monkeypatch.setenv("STUDIO_DATA_ROOTS", f"{inside}{os.pathsep}{outside}")
    wide = load_settings()
    add_local_model(outside / "chat", settings=wide)
    assert [e.path for e in list_models(wide)] == [str(outside / "chat")]
    assert list_models(settings) == []  # the administrator narrowed the roots again


def test_merge_outputs_and_parents_outside_the_roots_are_refused_before_any_job(
    confined: tuple[StudioSettings, Path, Path],
) -> None:
    settings, inside, outside = confined
    recipe = linear_recipe(inside / "cpt", inside / "chat")
    for out in (outside / "merged", f"{settings.merges_dir}/../../outside/m", "/etc/merged"):
        with pytest.raises(PathNotAllowedError, match="output folder .* is outside"):
            start_merge_job(recipe, out, settings=settings)
    with pytest.raises(PathNotAllowedError, match="chat folder .* is outside"):
        start_merge_job(linear_recipe(inside / "cpt", outside / "chat"), settings=settings)
    base_outside = recipe.model_copy(update={"method": "task_arithmetic", "base": "/etc"})
    with pytest.raises(PathNotAllowedError, match="base folder /etc is outside"):
        start_merge_job(base_outside, settings=settings)
    assert get_runner(settings).list() == []
    assert not (outside / "merged").exists() and list(settings.merges_dir.iterdir()) == []


def tiny_cpt(model: Path, data: Path, out: Path, **overrides: object) -> CPTConfig:
    values = {
        "kind": "cpt",
        "model": str(model),
        "output_dir": str(out),
        "micro_batch_size": 2,
        "max_steps": 6,
        "schedule": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1},
        "eval_every": 3,
        "save_every": 3,
        "data": {"seq_len": 16, "sources": [{"name": "domain", "paths": [str(data)]}]},
    }
    values.update(overrides)
    return CPTConfig.model_validate(values)


def write_text_data(path: Path, rows: int = 12) -> Path:
    from pipelines.tiny_models import DOMAIN_TEXT

    path.parent.mkdir(parents=True, exist_ok=True)
    texts = [{"text": t} for _ in range(rows) for t in DOMAIN_TEXT]
    path.write_text("".join(json.dumps(r) + "\n" for r in texts))
    return path


def test_training_model_data_and_run_folder_outside_the_roots_are_refused(
    confined: tuple[StudioSettings, Path, Path],
) -> None:
    settings, inside, outside = confined
    data_in = write_text_data(inside / "data" / "domain.jsonl")
    data_out = write_text_data(outside / "data" / "domain.jsonl")
    run = settings.runs_dir / "r"
    refusals = {
        "output_dir": tiny_cpt(inside / "cpt", data_in, outside / "run"),
        "model": tiny_cpt(outside / "chat", data_in, run),
        r"data.sources \(domain\) file": tiny_cpt(inside / "cpt", data_out, run),
        "resume": tiny_cpt(inside / "cpt", data_in, run, resume=str(outside / "chat")),
    }
    for field, config in refusals.items():
        with pytest.raises(PathNotAllowedError, match=rf"^{field} .* is outside"):
            start_train_job(config, settings=settings)
    assert get_runner(settings).list() == [] and not (outside / "run").exists()


def test_task_files_gguf_files_and_uploads_are_confined_and_size_limited(
    confined: tuple[StudioSettings, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, inside, outside = confined
    row = {"question": "2+2?", "choices": ["3", "4"], "answer": 1}
    for folder in (inside, outside):
        (folder / "task.jsonl").write_text(json.dumps(row) + "\n")
    assert len(load_task(inside / "task.jsonl").items) == 1
    with pytest.raises(PathNotAllowedError, match="task file .*outside"):
        load_task(outside / "task.jsonl")
    with pytest.raises(PathNotAllowedError, match="task file .*outside"):
        load_task(f"{inside}/../outside/task.jsonl")
    (outside / "m.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00")
    with pytest.raises(PathNotAllowedError, match="GGUF file .*outside"):
        import_gguf(outside / "m.gguf", settings=settings)
    # uploads: the limit is a setting, the refusal a sentence naming it
    monkeypatch.setenv("STUDIO_MAX_UPLOAD_MB", "0.001")  # ~1 KB
    small = load_settings()
    assert small.max_upload_bytes == 1048
    (inside / "big.jsonl").write_text(json.dumps(row) * 40)
    assert check_upload_size(inside / "task.jsonl", settings=small) == inside / "task.jsonl"
    with pytest.raises(StudioError, match=r"upload big.jsonl is 0.0 MB, more than the 0 MB upload"):
        check_upload_size(inside / "big.jsonl", settings=small)
    with pytest.raises(StudioError, match="NUL character"):
        confine_path("a\x00b", settings=settings)


def test_pickle_and_remote_code_stay_refused_inside_the_roots(
    confined: tuple[StudioSettings, Path, Path],
) -> None:
    """Confinement does not replace the format gates: inside the roots, pickle weights and
    trust_remote_code still need the administrator's settings (tests/test_catalog.py checks
    the messages and the opt-ins in detail)."""
    settings, inside, _ = confined
    pickled = inside / "chat"
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="pickle can run code when loaded"):
        inspect_model(pickled, settings=settings)
    assert inspect_model(pickled, settings=dataclasses.replace(settings, allow_pickle=True))
    config = json.loads((inside / "cpt" / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "x.Y"}
    (inside / "cpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="needs trust_remote_code"):
        inspect_model(inside / "cpt", settings=settings)


def task_file(folder: Path) -> Path:
    """A one-question multiple-choice task (the format load_task detects as mc)."""
    path = folder / "task.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer": 1}) + "\n")
    return path


def test_score_targets_recipes_and_checkpoint_folders_outside_the_roots_are_refused(
    confined: tuple[StudioSettings, Path, Path],
) -> None:
    """/score, /sweep and /checkpoint_sweep read every folder they name: a model target, any
    recipe model (a `..` walk or a symlink out too) and a run or checkpoint folder elsewhere
    are each refused in PathNotAllowedError's sentence, before any job starts."""
    from studio.evaluation.checkpoint_sweep import CheckpointSweepRequest
    from studio.evaluation.jobs import (
        start_checkpoint_sweep_job,
        start_score_job,
        start_sweep_job,
    )
    from studio.evaluation.sweeps import ScoreRequest, ScoreTarget, SweepRequest
    from studio.recipes import recipe_to_yaml

    settings, inside, outside = confined
    tasks = (str(task_file(inside)),)
    (inside / "escape").symlink_to(outside / "chat")
    (outside / "run" / "step-00000003").mkdir(parents=True)
    out_chat = linear_recipe(inside / "cpt", outside / "chat")
    dotdot = linear_recipe(Path(f"{inside}/../outside/chat"), inside / "chat")
    linked = linear_recipe(inside / "cpt", inside / "escape")
    model = ScoreTarget(label="chat", model=str(outside / "chat"))
    refusals = {
        "model of 'chat' .* is outside": lambda: start_score_job(
            ScoreRequest(tasks=tasks, targets=(model,)), settings=settings
        ),
        "recipe model 2 folder .* is outside": lambda: start_score_job(
            ScoreRequest(
                tasks=tasks, targets=(ScoreTarget(label="m", recipe=recipe_to_yaml(out_chat)),)
            ),
            settings=settings,
        ),
        "recipe model 1 folder .* is outside": lambda: start_sweep_job(
            SweepRequest(
                tasks=tasks, recipe=recipe_to_yaml(dotdot), parameter="weight", values=(0, 1)
            ),
            settings=settings,
        ),
        "recipe model 2 folder .* leads through a symbolic link": lambda: start_sweep_job(
            SweepRequest(
                tasks=tasks, recipe=recipe_to_yaml(linked), parameter="weight", values=(0, 1)
            ),
            settings=settings,
        ),
        "run folder .* is outside": lambda: start_checkpoint_sweep_job(
            CheckpointSweepRequest(tasks=tasks, run_dir=str(outside / "run")), settings=settings
        ),
        "checkpoint folder .* is outside": lambda: start_checkpoint_sweep_job(
            CheckpointSweepRequest(
                tasks=tasks, checkpoints=(str(outside / "run" / "step-00000003"),)
            ),
            settings=settings,
        ),
    }
    for reason, start in refusals.items():
        with pytest.raises(PathNotAllowedError, match=reason) as caught:
            start()
        assert "STUDIO_MODEL_ROOTS or STUDIO_DATA_ROOTS" in str(caught.value)
    assert get_runner(settings).list() == []


def test_live_preview_and_engines_refuse_model_folders_outside_the_roots(
    confined: tuple[StudioSettings, Path, Path],
) -> None:
    """The live preview (and the diagnostics and sweeps built on it) confines every folder of
    a recipe before it loads any weights; ModelSpec.from_path, through which chat, scoring and
    the CLI load models, confines too, and text no path can be is a sentence."""
    from studio.inference.engine import ModelSpec
    from studio.merging.preview import LivePreview

    settings, inside, outside = confined
    preview = LivePreview(settings=settings)
    recipe = linear_recipe(inside / "cpt", outside / "chat")
    with pytest.raises(PathNotAllowedError, match="recipe model folder .* is outside"):
        preview.update(recipe)
    base_outside = recipe.model_copy(
        update={
            "method": "task_arithmetic",
            "models": linear_recipe(inside / "cpt", inside / "chat").models,
            "base": str(outside / "chat"),
        }
    )
    with pytest.raises(PathNotAllowedError, match="recipe model folder .* is outside"):
        preview.diagnose(base_outside)
    assert preview.merger is None and preview.engine is None  # nothing was loaded
    with pytest.raises(PathNotAllowedError, match=f"model {outside / 'chat'} is outside"):
        ModelSpec.from_path(outside / "chat", settings=settings)
    with pytest.raises(PathNotAllowedError, match="contains a NUL character"):
        ModelSpec.from_path("a\x00b", settings=settings)
    spec = ModelSpec.from_path(inside / "chat", settings=settings)
    assert spec.path == str((inside / "chat").resolve())


def test_synthetic_data_inputs_held_out_and_output_outside_the_roots_are_refused(
    confined: tuple[StudioSettings, Path, Path],
) -> None:
    """start_synth_job confines the documents it reads and the folder it writes; paths no
    folder can have are a sentence (resolve_synth_paths checks them first)."""
    from studio.synth import SynthConfig, start_synth_job

    settings, inside, outside = confined
    docs_in = write_text_data(inside / "docs.jsonl")
    docs_out = write_text_data(outside / "docs.jsonl")
    good = {
        "generator": str(inside / "chat"),
        "inputs": [str(docs_in)],
        "output_dir": str(settings.home / "synth" / "s"),
    }
    refusals = {
        "^inputs .* is outside": {"inputs": [str(docs_out)]},
        "^held_out_inputs .* is outside": {"held_out_inputs": [f"{inside}/../outside/docs.jsonl"]},
        "^output_dir .* is outside": {"output_dir": str(outside / "synth")},
        "^inputs .* contains a NUL character": {"inputs": ["docs\x00.jsonl"]},
        "^generator .* too long for a path": {"generator": "x" * 300},
    }
    for reason, change in refusals.items():
        with pytest.raises(PathNotAllowedError, match=reason):
            start_synth_job(SynthConfig.model_validate(good | change), settings=settings)
    assert get_runner(settings).list() == [] and not (outside / "synth").exists()


def test_the_upload_limit_reaches_gradios_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """STUDIO_MAX_UPLOAD_MB is passed to launch(max_file_size=...), so gradio refuses a larger
    upload while it streams in, not after it is on disk."""
    from studio.ui import launch_kwargs

    monkeypatch.setenv("STUDIO_MAX_UPLOAD_MB", "2")
    assert launch_kwargs(load_settings())["max_file_size"] == 2 * 2**20
