"""The score cache: every (model, task, settings) scored once, kept in the studio's SQLite.

A score is keyed by what decides its value and nothing else:

- the model's fingerprint: a folder's config.json and its weight files' names, sizes and
  modification times (a retrained checkpoint in the same folder gets a new key), or for a live
  merge point the recipe (canonical YAML, paths resolved) plus the fingerprints of every model it
  reads and the DARE seed;
- the task's fingerprint (`Task.fingerprint`: format + item contents);
- the scoring settings that change that task's scores (`ScoreSettings.key(task.kind)`: a chat-QA
  task's include max_new_tokens and the chat template) and the engine + dtype that produced it.

So revisiting a sweep point, or re-scoring a parent in another sweep, is a lookup.

    store = ResultStore(settings.db_path)
    key = score_key(model_fp, task, score_settings, engine="transformers/float32")
    cached = store.get(key) or store.put(key, label="chat", score=score_task(...))
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from studio.db import connect, ensure_schema
from studio.recipes.recipe import MergeRecipe, resolve_paths
from studio.recipes.yaml_io import recipe_to_yaml

if TYPE_CHECKING:
    from studio.evaluation.scoring import ScoreSettings, TaskScore
    from studio.evaluation.tasks import Task

_SCHEMA = """
CREATE TABLE IF NOT EXISTS score_results (
    key TEXT PRIMARY KEY,
    model_label TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    task TEXT NOT NULL,
    task_fingerprint TEXT NOT NULL,
    settings_key TEXT NOT NULL,
    score_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS score_results_model ON score_results (model_fingerprint);
"""

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def folder_fingerprint(folder: str | Path) -> str:
    """What identifies a model folder's weights, cheaply: config + weight files' stat data."""
    root = Path(folder).resolve()
    parts = [str(root)]
    config = root / "config.json"
    if config.is_file():
        parts.append(config.read_text(encoding="utf-8"))
    for path in sorted(root.iterdir()) if root.is_dir() else ():
        if path.suffix in _WEIGHT_SUFFIXES:
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return _sha("\n".join(parts))


def recipe_fingerprint(recipe: MergeRecipe, *, seed: int | None) -> str:
    """A live merge point: the recipe as mergekit would read it, its models' weights, the seed."""
    resolved = resolve_paths(recipe)
    folders = sorted({m.path for m in resolved.models} | ({resolved.base} - {None}))
    parts = [recipe_to_yaml(resolved), f"seed={seed}"]
    parts += [f"{folder}={folder_fingerprint(folder)}" for folder in folders if folder]
    return _sha("\n".join(parts))


def score_key(model_fingerprint: str, task: Task, settings: ScoreSettings, *, engine: str) -> str:
    """The cache key of one model scored on one task with these settings by this engine."""
    return _sha("|".join((model_fingerprint, task.fingerprint, settings.key(task.kind), engine)))


@dataclass(frozen=True)
class CachedScore:
    key: str
    model_label: str
    score: TaskScore
    created_at: float


class ResultStore:
    """get/put over the `score_results` table. Thread-safe: one connection under a lock."""

    def __init__(self, db_path: Path) -> None:
        self._conn = connect(db_path)
        ensure_schema(self._conn, _SCHEMA)
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedScore | None:
        from studio.evaluation.scoring import TaskScore

        with self._lock:
            row = self._conn.execute("SELECT * FROM score_results WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return CachedScore(
            key=key,
            model_label=row["model_label"],
            score=TaskScore.from_json(json.loads(row["score_json"])),
            created_at=row["created_at"],
        )

    def put(
        self,
        key: str,
        *,
        label: str,
        model_fingerprint: str,
        task: Task,
        settings: ScoreSettings,
        score: TaskScore,
    ) -> CachedScore:
        now = time.time()
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO score_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    label,
                    model_fingerprint,
                    task.name,
                    task.fingerprint,
                    settings.key(task.kind),
                    json.dumps(score.to_json()),
                    now,
                ),
            )
        return CachedScore(key=key, model_label=label, score=score, created_at=now)

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM score_results").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
