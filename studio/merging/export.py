"""Merge export: a mergekit merge written to a folder, in-process or as a background job.

`merge_to_folder` is mergekit's `run_merge` driven step by step so it can report progress
(mergekit has no callback) and so the output appears atomically: everything is written into a
temporary folder next to the destination and renamed into place only when complete. For the
same YAML it writes the same tensors as `mergekit-yaml` (tests/test_merge_export.py checks
every deterministic method).

`start_merge_job` validates a MergeRecipe and runs `merge_to_folder` in a worker subprocess
(`studio.merging.worker`) owned by the job runner.

    from studio.merging import merge_to_folder, start_merge_job
    merge_to_folder(Path("ties.yml").read_text(), Path("/merges/ties-1"))
    record = start_merge_job(recipe)           # -> settings.merges_dir / "ties-<time>"
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import transformers
import yaml
from mergekit.architecture import get_architecture_info
from mergekit.config import MergeConfiguration
from mergekit.graph import Executor
from mergekit.io.tasks import LoaderCache
from mergekit.merge import (
    _copy_tagalong_files,
    _copy_tokenizer,
    _model_out_config,
    _set_chat_template,
    _update_config_vocab,
)
from mergekit.options import MergeOptions
from mergekit.plan import MergePlanner
from mergekit.tokenizer import TokenizerInfo
from pydantic import ValidationError

from studio.catalog import check_compatibility, inspect_model
from studio.confine import confine_path
from studio.errors import JobError, ModelError, RecipeError
from studio.jobs import JobRecord, JobRunner, get_runner, new_job_id
from studio.merging.card import build_model_card, parent_models
from studio.recipes import MergeRecipe, recipe_to_yaml, resolve_paths, validate_recipe
from studio.settings import StudioSettings, load_settings

LOG = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]

WORKER_MODULE = "studio.merging.worker"
CONFIG_FILE = "mergekit_config.yml"


# ---------------------------------------------------------------------- in-process merge


def merge_to_folder(
    config_yaml: str,
    out_dir: str | Path,
    *,
    temp_dir: str | Path | None = None,
    on_progress: ProgressCallback | None = None,
    random_seed: int | None = None,
    device: str = "cpu",
) -> Path:
    """Run the mergekit merge described by `config_yaml` into `out_dir`; return `out_dir`.

    Writes into `temp_dir` (default `<out_dir>.partial-<id>`, same parent so the final rename
    is atomic) and renames it to `out_dir` when complete; on any error the temp folder is
    removed and the error re-raised, so a failed merge leaves nothing behind. `on_progress`
    gets (done, total, message) after each of mergekit's output tasks. `random_seed` seeds the
    random sparsification of DARE and DELLA exactly as `mergekit-yaml --random-seed` does.
    """
    # 1) where: refuse to overwrite anything
    out_dir = Path(out_dir).expanduser().absolute()
    refuse_existing_output(out_dir)
    temp = Path(temp_dir).expanduser().absolute() if temp_dir else _temp_for(out_dir, new_job_id())
    if temp.exists():
        raise JobError(
            f"temporary folder {temp} already exists; delete it or choose another output folder"
        )
    config = parse_merge_config(config_yaml)
    options = MergeOptions(random_seed=random_seed, device=device, quiet=True)

    # 2) merge into the temp folder, then rename into place
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.mkdir()
    try:
        _run_merge(
            config, config_yaml, temp, name=out_dir.name, options=options, report=on_progress
        )
        refuse_existing_output(out_dir)  # someone may have made it while we merged
        os.rename(temp, out_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    LOG.info("merged into %s", out_dir)
    return out_dir


def parse_merge_config(config_yaml: str) -> MergeConfiguration:
    """mergekit's validated config for a YAML text; RecipeError with mergekit's reason if not."""
    try:
        data = yaml.safe_load(config_yaml)
    except yaml.YAMLError as error:
        raise RecipeError(f"the merge config is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise RecipeError("the merge config must be a YAML mapping with merge_method and models")
    try:
        config = MergeConfiguration.model_validate(data)
    except (ValidationError, ValueError, RuntimeError) as error:
        # mergekit raises RuntimeError from some of its validators.
        raise RecipeError(f"mergekit cannot read this merge config: {error}") from error
    if not (config.models or config.slices or config.modules):
        raise RecipeError("the merge config names no models; list at least one under models")
    for model in parent_models(config):
        path = model.model.path
        if os.path.isabs(path) and not os.path.exists(path):
            # Otherwise transformers tries it as a Hub id and says "Repo id must be ...".
            raise ModelError(
                f"model folder {path} does not exist; check the path in the merge config"
            )
        if not os.path.isabs(path) and os.path.exists(path):
            # mergekit and transformers take a relative path for a Hub id.
            raise RecipeError(
                f"model path '{path}' is relative, so mergekit would look it up on the Hub; "
                f"write it as {os.path.abspath(path)}"
            )
    return config


def refuse_existing_output(out_dir: Path) -> None:
    if out_dir.exists():
        raise JobError(f"output folder {out_dir} already exists; choose another name or delete it")


def _run_merge(
    config: MergeConfiguration,
    config_yaml: str,
    out: Path,
    *,
    name: str,
    options: MergeOptions,
    report: ProgressCallback | None,
) -> None:
    """mergekit.merge.run_merge, step for step, with progress reports (single device)."""
    report = report or _no_progress
    out_path = str(out)
    # 1) seed, architecture, output config, loaders (same order as run_merge, so the random
    #    draws of DARE/DELLA line up with mergekit-yaml's)
    if options.random_seed is not None:
        transformers.trainer_utils.set_seed(options.random_seed)
    arch_info = get_architecture_info(config, options)
    if getattr(arch_info, "post_fill_parameters", False):
        raise ModelError(
            f"{config.referenced_models()[0]} needs mergekit's fill-missing-parameters step, "
            "which the studio does not run; merge it with mergekit-yaml instead"
        )
    loader_cache = LoaderCache()
    loader_cache.setup(options=options)
    donor = _with_fixed_donor(config)
    # private mergekit helper: the output config (donor's, with dtype and layer count)
    cfg_out = _model_out_config(donor, arch_info, trust_remote_code=options.trust_remote_code)
    LOG.info("loading models")
    for model in config.referenced_models():
        loader_cache.get(model)

    # 2) plan and execute, counting finished output tasks (one per tensor, plus finalise and
    #    tokenizer): mergekit's Executor yields each target as it completes
    try:
        targets = MergePlanner(
            config, arch_info, options=options, out_model_config=cfg_out
        ).plan_to_disk(out_path=out_path)
        executor = Executor(
            targets=targets,
            math_device=options.device,
            storage_device=options.device if options.low_cpu_memory else "cpu",
        )
        total = len(set(executor.targets)) + 1  # + 1: config, card and tokenizer at the end
        report(0, total, "merging tensors")
        tokenizer = None
        for done, (task, value) in enumerate(executor.run(quiet=True), start=1):
            if isinstance(value, TokenizerInfo):
                tokenizer = value.tokenizer
            report(min(done, total - 1), total, _describe(task))
    finally:
        loader_cache.flush_all()

    # 3) config (vocab size follows a merged tokenizer), card, recipe, tokenizer, tag-alongs
    if tokenizer is not None:
        pad = config.tokenizer.pad_to_multiple_of if config.tokenizer else None
        # private mergekit helper: vocab_size of the output config
        _update_config_vocab(cfg_out, arch_info, tokenizer, pad_to_multiple_of=pad or None)
    cfg_out.save_pretrained(out_path)
    (out / "README.md").write_text(
        build_model_card(config, config_yaml, name=name), encoding="utf-8"
    )
    (out / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
    _save_tokenizer(donor, out_path, tokenizer, options)
    # private mergekit helper: copies the architecture's extra files from the donor model
    _copy_tagalong_files(donor, out_path, files=arch_info.tagalong_files or [], options=options)
    report(total, total, "saved")


def _with_fixed_donor(config: MergeConfiguration) -> MergeConfiguration:
    """The config mergekit's donor helpers should see: without a base model, the first listed.

    mergekit takes the model whose config and tokenizer the output gets from
    `config.base_model or config.referenced_models()[0]`, and referenced_models() is
    list(set(...)): without a base model (linear, nuslerp) the donor changes with Python's hash
    seed from run to run. Naming the first listed model makes it one stable choice among
    mergekit's possible ones. Only the donor helpers get this copy; planning and the card
    use the config as written, so the tensors are unchanged.
    """
    if config.base_model is not None or not config.models:
        return config
    return config.model_copy(update={"base_model": config.models[0].model})


def _save_tokenizer(
    config: MergeConfiguration, out_path: str, tokenizer: Any, options: MergeOptions
) -> None:
    """As run_merge does, except that a tokenizer that cannot be saved is an error here: a
    merged model without one cannot be chatted with or scored."""
    try:
        if tokenizer is not None:
            # private mergekit helper: resolves `chat_template` (auto, a name, or jinja text)
            _set_chat_template(tokenizer, config)
            tokenizer.save_pretrained(out_path, safe_serialization=True)
        else:
            # private mergekit helper: copies the donor's tokenizer files, or re-saves it with
            # the requested chat template
            _copy_tokenizer(config, out_path, options=options)
    except Exception as error:
        raise ModelError(
            f"the tensors merged but the tokenizer could not be saved ({error}); "
            "check chat_template or set tokenizer_source"
        ) from error


def _describe(task: object) -> str:
    name = getattr(task, "tensor_name", None)
    if name:
        return f"merged {name}"
    return (
        "wrote the model files" if type(task).__name__ == "FinalizeModel" else "built the tokenizer"
    )


def _no_progress(done: int, total: int, message: str) -> None:
    return None


def _temp_for(out_dir: Path, token: str) -> Path:
    # Same parent as the output: the final os.rename stays on one filesystem (atomic).
    return out_dir.with_name(f"{out_dir.name}.partial-{token}")


# ---------------------------------------------------------------------- background job


def start_merge_job(
    recipe: MergeRecipe,
    out_dir: str | Path | None = None,
    *,
    runner: JobRunner | None = None,
    settings: StudioSettings | None = None,
    owner: str | None = None,
) -> JobRecord:
    """Validate `recipe` and merge it into `out_dir` in a background worker; the job's record.

    `out_dir` defaults to settings.merges_dir / "<method>-<date>-<time>"; a relative one is
    taken from the working directory. An existing folder is refused before anything is written.
    """
    settings = settings or (runner.settings if runner is not None else load_settings())
    # 1) validate, and make every local model path absolute (relative ones read as Hub ids)
    validate_recipe(recipe)
    recipe = resolve_paths(recipe)
    check_recipe_models(recipe, settings)
    # 2) where
    out = _output_folder(recipe, out_dir, settings)
    refuse_existing_output(out)
    runner = runner or get_runner(settings)
    # 3) the exact YAML the worker runs, kept in the job folder (reproducible with mergekit-yaml)
    job_id = new_job_id()
    job_dir = runner.settings.jobs_dir / job_id
    job_dir.mkdir(parents=True)
    config_path = job_dir / CONFIG_FILE
    config_path.write_text(recipe_to_yaml(recipe), encoding="utf-8")
    # 4) the worker
    temp = _temp_for(out, job_id)
    try:
        return runner.start(
            kind="merge",
            title=_title(recipe, out),
            module=WORKER_MODULE,
            args=["--config", str(config_path), "--out", str(out), "--temp", str(temp)],
            output_path=str(out),
            temp_path=str(temp),
            owner=owner,
            job_id=job_id,
        )
    except BaseException:
        if not _recorded(runner, job_id):  # a recorded job keeps its folder (log, YAML)
            shutil.rmtree(job_dir, ignore_errors=True)
        raise


def check_recipe_models(recipe: MergeRecipe, settings: StudioSettings) -> None:
    """Refuse a merge that cannot work before a job starts or any weights are read.

    Inspects every local model (headers only: refuses pickle-only, remote-code, unknown or
    corrupt models) and runs the compatibility report (shapes, layers, vocab vs the recipe's
    tokenizer source). Hub ids are left to the worker, which downloads them.
    """
    paths = [m.path for m in recipe.models]
    roles = ["cpt", "chat"] if len(paths) == 2 else [f"model {i + 1}" for i in range(len(paths))]
    named = dict(zip(roles, paths, strict=True)) | ({"base": recipe.base} if recipe.base else {})
    source = recipe.tokenizer_source
    for role, path in [*named.items(), ("tokenizer source", source or "")]:
        if os.path.isabs(path):  # local folders only: a Hub id is not a path
            confine_path(path, settings=settings, what=f"{role} folder")
    infos = {
        role: inspect_model(path, settings=settings)
        for role, path in named.items()
        if Path(path).is_absolute() and Path(path).exists()
    }
    if len(infos) < 2:
        return
    roles_by_path = {path: role for role, path in named.items()}
    report = check_compatibility(
        infos, method=recipe.method, tokenizer_source=roles_by_path.get(source or "", source)
    )
    report.raise_if_blocked()


def _recorded(runner: JobRunner, job_id: str) -> bool:
    try:
        runner.store.get(job_id)
    except JobError:
        return False
    return True


def _output_folder(
    recipe: MergeRecipe, out_dir: str | Path | None, settings: StudioSettings
) -> Path:
    if out_dir is not None and str(out_dir).strip():
        return confine_path(str(out_dir), settings=settings, what="output folder")
    stem = f"{recipe.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate = settings.merges_dir / stem
    counter = 2
    while candidate.exists() or _partial_exists(candidate):
        candidate = settings.merges_dir / f"{stem}-{counter}"
        counter += 1
    return candidate


def _partial_exists(out: Path) -> bool:
    return out.parent.is_dir() and any(out.parent.glob(f"{out.name}.partial-*"))


def _title(recipe: MergeRecipe, out: Path) -> str:
    names = ", ".join(Path(m.path).name for m in recipe.models)
    return f"{recipe.method} merge of {names} -> {out.name}"
