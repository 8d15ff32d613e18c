"""Studio settings, read once from environment variables.

| variable | default | meaning |
|---|---|---|
| STUDIO_HOME | ~/.merge_studio | job history (SQLite), merges, training runs, imported models, starter zoo |
| STUDIO_MODEL_ROOTS | (none) | extra folders, separated by ':', whose model sub-folders appear in the catalog |
| STUDIO_DATA_ROOTS | (none) | extra folders, separated by ':', under which model, data and task paths are accepted (not listed in the catalog) |
| STUDIO_MAX_UPLOAD_MB | 2048 | largest file a user may upload (task files, GGUF), in MB |
| STUDIO_ALLOW_PICKLE | 0 | 1 lets the studio read pickle (.bin/.pt) checkpoints |
| STUDIO_TRUST_REMOTE_CODE | 0 | 1 lets the studio load models that need trust_remote_code |
| HF_HUB_OFFLINE | 0 | 1 forbids Hub downloads; adding a Hub id then says so plainly |
| STUDIO_AUTH | (none) | login: "user:pass,user2:pass2", or a file with one user:pass a line |
| STUDIO_OAUTH | 0 | 1 on a Space (SPACE_ID set): "Sign in with Hugging Face" instead |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}
DEFAULT_MAX_UPLOAD_BYTES = 2048 * 1024 * 1024


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _env_roots(name: str) -> tuple[Path, ...]:
    return tuple(
        Path(p).expanduser().resolve()
        for p in os.environ.get(name, "").split(os.pathsep)
        if p.strip()
    )


def _env_max_upload_bytes() -> int:
    text = os.environ.get("STUDIO_MAX_UPLOAD_MB", "").strip()
    try:
        return int(float(text) * 1024 * 1024) if text else DEFAULT_MAX_UPLOAD_BYTES
    except ValueError:
        return DEFAULT_MAX_UPLOAD_BYTES


@dataclass(frozen=True)
class StudioSettings:
    home: Path
    model_roots: tuple[Path, ...] = ()
    allow_pickle: bool = False
    trust_remote_code: bool = False
    hub_offline: bool = False
    auth: str = ""  # STUDIO_AUTH as given; parsed by studio.access (a file is read at launch)
    oauth: bool = False  # Hugging Face OAuth: STUDIO_OAUTH=1 and running on a Space
    # Read from the environment even when a caller builds settings by hand (tests, app.py):
    # these widen or cap what any entry point accepts, so they must never silently reset.
    data_roots: tuple[Path, ...] = field(default_factory=lambda: _env_roots("STUDIO_DATA_ROOTS"))
    max_upload_bytes: int = field(default_factory=_env_max_upload_bytes)

    @property
    def login_required(self) -> bool:
        """With a login, each user sees only their own jobs, chats and results."""
        return bool(self.auth) or self.oauth

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
    return StudioSettings(
        home=home.resolve(),
        model_roots=_env_roots("STUDIO_MODEL_ROOTS"),
        allow_pickle=_flag("STUDIO_ALLOW_PICKLE"),
        trust_remote_code=_flag("STUDIO_TRUST_REMOTE_CODE"),
        hub_offline=_flag("HF_HUB_OFFLINE"),
        auth=os.environ.get("STUDIO_AUTH", "").strip(),
        oauth=_flag("STUDIO_OAUTH") and bool(os.environ.get("SPACE_ID")),
    )
