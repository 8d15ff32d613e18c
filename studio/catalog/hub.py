"""Add a model by Hugging Face Hub id: download its safetensors folder into the studio.

    add_hub_model("HuggingFaceTB/SmolLM2-135M-Instruct")   # -> STUDIO_HOME/models/HuggingFaceTB--SmolLM2-135M-Instruct

Only configs, tokenizers, chat templates and safetensors are fetched (pickle .bin files can run
code when loaded). The download goes to a temporary folder next to the target, is inspected,
and only then renamed into place, so the catalog never lists half a model. With
HF_HUB_OFFLINE=1 nothing is fetched and the error says how to add the model instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from studio.catalog.inspect import inspect_model, safetensors_files
from studio.catalog.registry import HUB_MARKER, PARTIAL, ModelEntry, entry_for_path
from studio.errors import ModelError
from studio.settings import StudioSettings, load_settings

LOG = logging.getLogger(__name__)

ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.jinja", "*.model"]


def add_hub_model(
    repo_id: str, *, settings: StudioSettings | None = None, revision: str | None = None
) -> ModelEntry:
    """Download `repo_id` (at `revision`) into the models folder and return its catalog entry."""
    settings = settings or load_settings()
    repo_id = repo_id.strip()
    if settings.hub_offline:
        raise ModelError(
            f"Hub downloads are off (HF_HUB_OFFLINE=1): '{repo_id}' cannot be fetched. Download "
            "it elsewhere and add its folder, or allow the network."
        )
    _validate_repo_id(repo_id)
    settings.ensure_dirs()
    target = settings.models_dir / hub_folder_name(repo_id)
    if target.exists():
        return _existing(target, repo_id, settings=settings)
    # 1) download into a private folder next to the target (same filesystem: atomic rename)
    temp = target.with_name(f"{target.name}{PARTIAL}-{uuid.uuid4().hex[:8]}")
    try:
        _download(repo_id, temp, revision=revision)
        # 2) check it is a model the studio can use before anyone can see it
        if not safetensors_files(temp):
            raise ModelError(
                f"'{repo_id}' has no safetensors weights on the Hub; the studio downloads "
                "safetensors only (pickle .bin files can run code when loaded): convert it "
                "elsewhere and add its folder"
            )
        shutil.rmtree(temp / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
        marker = repo_id if revision is None else f"{repo_id}\n{revision}"
        (temp / HUB_MARKER).write_text(marker + "\n", encoding="utf-8")
        inspect_model(temp, settings=settings)
        # 3) publish
        _publish(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    LOG.info("downloaded %s to %s", repo_id, target)
    return entry_for_path(str(target), settings)


def _publish(temp: Path, target: Path) -> None:
    try:
        os.rename(temp, target)
    except OSError as error:  # another download of the same id finished first, or a full disk
        raise ModelError(f"could not move the download into {target}: {error}") from error


def hub_folder_name(repo_id: str) -> str:
    """'org/name' -> 'org--name' (the Hub cache's own spelling; a slash cannot be a folder name)."""
    return repo_id.replace("/", "--")


def _validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ModelError(
            f"'{repo_id}' is not a valid Hugging Face Hub id (expected 'org/name', like "
            f"'HuggingFaceTB/SmolLM2-135M-Instruct'): {error}"
        ) from error


def _existing(target: Path, repo_id: str, *, settings: StudioSettings) -> ModelEntry:
    """Adding the same Hub id twice is a no-op; another folder of that name is a conflict."""
    marker = target / HUB_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8").splitlines()[:1] == [repo_id]:
        inspect_model(target, settings=settings)
        return entry_for_path(str(target), settings)
    raise ModelError(
        f"{target} already exists and is not a download of '{repo_id}'; remove or rename it first"
    )


def _download(repo_id: str, folder: Path, *, revision: str | None) -> None:
    """snapshot_download into `folder`, with Hub failures turned into sentences."""
    import httpx
    import huggingface_hub
    from huggingface_hub import errors

    try:
        huggingface_hub.snapshot_download(
            repo_id, revision=revision, local_dir=folder, allow_patterns=ALLOW_PATTERNS
        )
    except errors.GatedRepoError as error:
        raise ModelError(
            f"'{repo_id}' is gated: accept its licence on its Hub page, then log in "
            "(`hf auth login`) and try again"
        ) from error
    except errors.RepositoryNotFoundError as error:
        raise ModelError(
            f"no model '{repo_id}' on the Hub (or it is private: log in with `hf auth login`)"
        ) from error
    except errors.RevisionNotFoundError as error:
        raise ModelError(f"'{repo_id}' has no revision '{revision}' on the Hub") from error
    except (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError) as error:
        raise ModelError(
            f"the Hub cannot be reached, so '{repo_id}' cannot be fetched ({error}). Download it "
            "elsewhere and add its folder, or allow the network."
        ) from error
    except errors.HfHubHTTPError as error:
        raise ModelError(f"the Hub refused to send '{repo_id}': {error}") from error
    except (httpx.TransportError, ConnectionError, TimeoutError) as error:
        raise ModelError(
            f"the Hub cannot be reached, so '{repo_id}' cannot be fetched ({error}). Download it "
            "elsewhere and add its folder, or allow the network."
        ) from error
