"""Studio settings, read once from environment variables.

| variable | default | meaning |
|---|---|---|
| STUDIO_HOME | ~/.merge_studio | job history (SQLite), merges, training runs, imported models, starter zoo |
| STUDIO_MODEL_ROOTS | (none) | extra folders, separated by ':', whose model sub-folders appear in the catalog |
| STUDIO_ALLOW_PICKLE | 0 | 1 lets the studio read pickle (.bin/.pt) checkpoints |
| STUDIO_TRUST_REMOTE_CODE | 0 | 1 lets the studio load models that need trust_remote_code |
| HF_HUB_OFFLINE | 0 | 1 forbids Hub downloads; adding a Hub id then says so plainly |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


@dataclass(frozen=True)
class StudioSettings:
    home: Path
    model_roots: tuple[Path, ...] = ()
    allow_pickle: bool = False
    trust_remote_code: bool = False
    hub_offline: bool = False

    @property
    def models_dir(self) -> Path:
        """Imported and downloaded models, and the starter zoo."""
        return self.home / "models"

    @property
    def merges_dir(self) -> Path:
        """Default parent folder of merge outputs."""
        return self.home / "merges"

    @property
    def runs_dir(self) -> Path:
        """Default parent of training run folders (their step-* checkpoints are in the catalog)."""
        return self.home / "runs"

    @property
    def jobs_dir(self) -> Path:
        """One sub-folder per job: its event stream and log."""
        return self.home / "jobs"

    @property
    def db_path(self) -> Path:
        return self.home / "studio.sqlite3"

    def ensure_dirs(self) -> None:
        for folder in (self.home, self.models_dir, self.merges_dir, self.runs_dir, self.jobs_dir):
            folder.mkdir(parents=True, exist_ok=True)


def load_settings() -> StudioSettings:
    """Read settings from the environment (call again after changing it; nothing is cached)."""
    home = Path(os.environ.get("STUDIO_HOME") or Path.home() / ".merge_studio").expanduser()
    roots = tuple(
        Path(p).expanduser().resolve()
        for p in os.environ.get("STUDIO_MODEL_ROOTS", "").split(os.pathsep)
        if p.strip()
    )
    return StudioSettings(
        home=home.resolve(),
        model_roots=roots,
        allow_pickle=_flag("STUDIO_ALLOW_PICKLE"),
        trust_remote_code=_flag("STUDIO_TRUST_REMOTE_CODE"),
        hub_offline=_flag("HF_HUB_OFFLINE"),
    )
