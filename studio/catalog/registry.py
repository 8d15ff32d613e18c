"""The catalog: which models the studio offers, and where each came from.

A model is a folder with a config.json. The catalog is not a list kept in sync by hand: it is
read from the folders on every call, plus the folders a user registered by path:

| source   | where                                                                 |
|----------|-----------------------------------------------------------------------|
| starter  | STUDIO_HOME/models/starter-*   (the tiny zoo built on first start)     |
| imported | STUDIO_HOME/models/*           (GGUF imports: `.gguf_source` marker)   |
| hub      | STUDIO_HOME/models/*           (Hub downloads: `.hub_id` marker)       |
| merge    | STUDIO_HOME/merges/*                                                   |
| train    | STUDIO_HOME/runs/*/step-NNNNNNNN (training checkpoints)               |
| root     | each STUDIO_MODEL_ROOTS folder/*                                       |
| local    | folders added with `add_local_model` (SQLite table catalog_models)    |

Folders still being written (`*.partial*`) are skipped. A training checkpoint is named
`<run>/step-NNNNNNNN` and carries its `step`. A folder found twice is listed once, under the
first source of that table (a registered checkpoint under runs/ stays "train"). Names are
unique: a name seen twice gets its source appended.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel

from studio import db
from studio.catalog.inspect import CONFIG_FILE, inspect_model, resolve_model_path
from studio.confine import check_path_text, confine_path, is_allowed
from studio.errors import ModelError
from studio.settings import StudioSettings, load_settings
from studio.training.checkpoints import checkpoint_step

LOG = logging.getLogger(__name__)

Source = Literal["starter", "imported", "hub", "local", "merge", "train", "root"]
SOURCE_ORDER: tuple[str, ...] = get_args(Source)
STARTER_PREFIX = "starter-"
HUB_MARKER = ".hub_id"
GGUF_MARKER = ".gguf_source"
PARTIAL = ".partial"

SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog_models (
    path TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    added_at REAL NOT NULL
);
"""


class ModelEntry(BaseModel, frozen=True):
    """One model the studio offers: a unique name, its absolute folder, where it came from
    (and, for a training checkpoint, its optimizer step)."""

    name: str
    path: str
    source: Source
    step: int | None = None


def list_models(settings: StudioSettings | None = None) -> list[ModelEntry]:
    """Every model in the catalog, sorted by source (in SOURCE_ORDER) then name."""
    settings = settings or load_settings()
    found: dict[str, tuple[str, Source]] = {}  # path -> (name, source); first one wins
    for path, source in _scan(settings):
        name = f"{path.parent.name}/{path.name}" if source == "train" else path.name
        found.setdefault(str(path), (name, source))
    ordered = sorted(
        found.items(),
        key=lambda item: (SOURCE_ORDER.index(item[1][1]), item[1][0].lower(), item[0]),
    )
    return _with_unique_names(ordered)


def add_local_model(ref: str | Path, *, settings: StudioSettings | None = None) -> ModelEntry:
    """Register a model folder by path (inspected first: its errors say why it cannot be added)."""
    settings = settings or load_settings()
    info = inspect_model(ref, settings=settings)
    with _connect(settings) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO catalog_models (path, name, added_at) VALUES (?, ?, ?)",
            (info.path, info.name, time.time()),
        )
    LOG.info("registered local model %s", info.path)
    # The entry as the catalog lists it (a folder under a scanned root keeps that source).
    return entry_for_path(info.path, settings)


def remove_local_model(path: str, *, settings: StudioSettings | None = None) -> None:
    """Forget a folder registered with add_local_model (the folder itself is left alone)."""
    settings = settings or load_settings()
    key = _absolute(path)
    registered = _registered_paths(settings)
    target = key if key in registered else _registered_by_name(path, settings)
    if target is None:
        known = ", ".join(registered) or "none"
        raise ModelError(
            f"{path} is not a registered local model, so there is nothing to remove; "
            f"registered folders: {known}"
        )
    with _connect(settings) as conn:
        conn.execute("DELETE FROM catalog_models WHERE path = ?", (target,))
    LOG.info("unregistered local model %s", target)


def find_model(name_or_path: str, *, settings: StudioSettings | None = None) -> ModelEntry:
    """The catalog entry called `name_or_path`, or whose folder it is; ModelError listing names."""
    settings = settings or load_settings()
    entries = list_models(settings)
    text = check_path_text(str(name_or_path), what="model")
    for entry in entries:
        if entry.name == text:
            return entry
    key = _absolute(text) if text else ""
    for entry in entries:
        if entry.path == key:
            return entry
    names = ", ".join(e.name for e in entries) or "none yet"
    if text and Path(key).is_dir():
        raise ModelError(
            f"folder {key} is not in the catalog; add it first (Add folder). Known models: {names}"
        )
    raise ModelError(f"no model called '{text}' in the catalog; known models: {names}")


def model_folder(ref: str, *, settings: StudioSettings | None = None) -> str:
    """A model folder from what a user typed: an existing folder (kept as given), else a catalog
    name (including `<run>/step-NNNNNNNN`); ModelError listing the names if it is neither."""
    text = check_path_text(str(ref), what="model")  # before any os call sees it
    if Path(text).expanduser().exists():
        confine_path(text, settings=settings, what="model folder")
        return text
    try:
        return find_model(text, settings=settings).path
    except ModelError:
        if text.startswith(("/", ".", "~")):  # meant as a folder: say that it is missing
            raise ModelError(
                f"model path {_absolute(text)} does not exist; choose a model folder or a "
                "catalog name"
            ) from None
        raise


# --------------------------------------------------------------------------- scanning


def _scan(settings: StudioSettings) -> Iterator[tuple[Path, Source]]:
    for folder in _model_folders(settings.models_dir):
        yield folder, _models_dir_source(folder)
    for folder in _model_folders(settings.merges_dir):
        yield folder, "merge"
    for run in _run_folders(settings.runs_dir):
        for folder in _model_folders(run):
            if checkpoint_step(folder) is not None:
                yield folder, "train"
    for root in settings.model_roots:
        if _is_model_folder(root):
            yield Path(os.path.abspath(root)), "root"
        for folder in _model_folders(root):
            yield folder, "root"
    for path in _registered_paths(settings):
        folder = Path(path)
        if not is_allowed(folder, settings):
            # Registered before the roots were narrowed: offering it would bypass them.
            LOG.warning(
                "registered model folder %s is outside the studio's roots; not listed", path
            )
        elif _is_model_folder(folder):
            yield folder, "local"
        else:
            LOG.info("registered model folder %s is gone; not listed", path)


def _model_folders(parent: Path) -> Iterator[Path]:
    """Sub-folders of `parent` holding a config.json; hidden and half-written ones skipped."""
    if not parent.is_dir():
        return
    for child in sorted(parent.iterdir()):
        if child.name.startswith(".") or PARTIAL in child.name:
            continue
        if _is_model_folder(child):
            yield Path(os.path.abspath(child))


def _run_folders(parent: Path) -> Iterator[Path]:
    """Training run folders under `parent` (hidden ones skipped)."""
    if not parent.is_dir():
        return
    for child in sorted(parent.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            yield child


def _is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / CONFIG_FILE).is_file()


def _models_dir_source(folder: Path) -> Source:
    if folder.name.startswith(STARTER_PREFIX):
        return "starter"
    if (folder / HUB_MARKER).is_file():
        return "hub"
    return "imported"


def _with_unique_names(ordered: list[tuple[str, tuple[str, Source]]]) -> list[ModelEntry]:
    """The first of equal names keeps it; later ones become name-source (then -2, -3...)."""
    taken: set[str] = set()
    entries = []
    for path, (name, source) in ordered:
        unique = name if name not in taken else f"{name}-{source}"
        counter = 2
        while unique in taken:
            unique = f"{name}-{source}-{counter}"
            counter += 1
        taken.add(unique)
        step = checkpoint_step(path) if source == "train" else None
        entries.append(ModelEntry(name=unique, path=path, source=source, step=step))
    return entries


def entry_for_path(path: str, settings: StudioSettings) -> ModelEntry:
    """The catalog's entry for a folder just added (its name made unique as list_models does)."""
    for entry in list_models(settings):
        if entry.path == path:
            return entry
    # Only if the folder vanished between registering and listing.
    raise ModelError(f"model folder {path} disappeared while it was being added; add it again")


# --------------------------------------------------------------------------- database


def _connect(settings: StudioSettings) -> closing[sqlite3.Connection]:
    conn = db.connect(settings.db_path)
    db.ensure_schema(conn, SCHEMA)
    return closing(conn)


def _registered_paths(settings: StudioSettings) -> list[str]:
    # Reading the catalog must not create a database in a home that has none yet.
    if not settings.db_path.is_file():
        return []
    with _connect(settings) as conn:
        rows = conn.execute("SELECT path FROM catalog_models ORDER BY added_at").fetchall()
    return [row["path"] for row in rows]


def _registered_by_name(name: str, settings: StudioSettings) -> str | None:
    registered = set(_registered_paths(settings))
    for entry in list_models(settings):
        if entry.name == name and entry.path in registered:
            return entry.path
    return None


def _absolute(path: str) -> str:
    """Like resolve_model_path, without requiring the folder to exist (it may be gone)."""
    try:
        return str(resolve_model_path(path))
    except ModelError:
        return os.path.abspath(os.path.expanduser(path))
