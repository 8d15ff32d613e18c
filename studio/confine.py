"""Confinement: every model, data, task and output path a user gives must lie under a root.

The studio is a shared service: a path typed into the UI, the Gradio API or the CLI must not
let anyone read or write elsewhere on the machine. The allowed roots are

| root                        | why                                                         |
|-----------------------------|-------------------------------------------------------------|
| STUDIO_HOME                 | models, merges, training runs, jobs (settings.home)        |
| STUDIO_MODEL_ROOTS folders  | shared model folders, listed in the catalog                 |
| STUDIO_DATA_ROOTS folders   | data, task files and models accepted by path, not listed    |
| the project's shipped data  | assets/ and pipelines/configs/ (demo data, tasks, presets)  |

A path is checked after `~` expansion and with every symbolic link and `..` resolved, so
`merges/../../etc` and a link that points outside the roots are both refused; a link between
two folders inside the roots is fine. The path handed back keeps the name the user gave (made
absolute, not link-resolved), as the rest of the studio expects.

    from studio.confine import confine_path
    folder = confine_path(user_text, settings=settings, what="model folder")

Tested by tests/test_robustness.py (`.venv/bin/python -m pytest -q tests/test_robustness.py`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from studio.errors import PathNotAllowedError, StudioError
from studio.settings import StudioSettings, load_settings

LOG = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Read-only data the project ships (demo data, task files, training presets' data).
SHIPPED_ROOTS: tuple[Path, ...] = (REPO_ROOT / "assets", REPO_ROOT / "pipelines" / "configs")
NAME_MAX_BYTES = 255  # one file or folder name (Linux NAME_MAX)
PATH_MAX_BYTES = 4096  # a whole path (Linux PATH_MAX)


def allowed_roots(settings: StudioSettings | None = None) -> tuple[Path, ...]:
    """The folders (link-resolved, without duplicates) under which user paths are accepted."""
    settings = settings or load_settings()
    roots = (settings.home, *settings.model_roots, *settings.data_roots, *SHIPPED_ROOTS)
    return tuple(dict.fromkeys(Path(os.path.realpath(r)) for r in roots))


def is_allowed(path: str | os.PathLike[str], settings: StudioSettings | None = None) -> bool:
    """True if `path` (links and `..` resolved) lies under one of the allowed roots."""
    real = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
    return any(real == root or root in real.parents for root in allowed_roots(settings))


def confine_path(
    path: str | os.PathLike[str],
    *,
    settings: StudioSettings | None = None,
    what: str = "path",
) -> Path:
    """`path` made absolute, if it lies under an allowed root; PathNotAllowedError if not.

    `what` names the field in the message ("model folder", "output folder", "task file").
    Existence is not checked here: callers say "does not exist" in their own words.
    """
    settings = settings or load_settings()
    text = check_path_text(os.fspath(path), what=what)
    absolute = Path(os.path.abspath(os.path.expanduser(text)))
    if is_allowed(absolute, settings):
        return absolute
    roots = ", ".join(str(r) for r in allowed_roots(settings))
    real = Path(os.path.realpath(absolute))
    if real != absolute:
        reason = f"leads through a symbolic link to {real}, outside the folders the studio may use"
    else:
        reason = "is outside the folders the studio may use"
    LOG.warning("refused %s %s (%s)", what, absolute, real)
    raise PathNotAllowedError(
        f"{what} {absolute} {reason} ({roots}); move it under one of them, or ask an "
        "administrator to add its folder to STUDIO_MODEL_ROOTS or STUDIO_DATA_ROOTS"
    )


def check_path_text(text: str, *, what: str = "path") -> str:
    """`text` stripped, if the operating system can take it as a path; StudioError if not.

    A NUL byte, a lone surrogate (valid in JSON, not encodable as a file name) or a name longer
    than the filesystem allows would otherwise surface as a raw ValueError/UnicodeEncodeError/
    OSError from the first os call that sees it.
    """
    text = text.strip()
    if not text:
        raise StudioError(f"no {what} given")
    if "\x00" in text:
        raise PathNotAllowedError(f"{what} {text!r} contains a NUL character; give a plain path")
    try:
        encoded = os.fsencode(text)
    except UnicodeEncodeError:
        raise PathNotAllowedError(
            f"{what} {text!r} contains characters that are not valid text; give a plain path"
        ) from None
    if len(encoded) > PATH_MAX_BYTES or any(len(p) > NAME_MAX_BYTES for p in encoded.split(b"/")):
        raise PathNotAllowedError(
            f"{what} '{text[:40]}...' is too long for a path ({len(encoded)} bytes; one name may "
            f"have {NAME_MAX_BYTES}, a whole path {PATH_MAX_BYTES}); give a shorter one"
        )
    return text


def check_upload_size(
    path: str | os.PathLike[str], *, settings: StudioSettings | None = None, what: str = "upload"
) -> Path:
    """An uploaded file's path, if it is within STUDIO_MAX_UPLOAD_MB; StudioError if larger."""
    settings = settings or load_settings()
    file = Path(path)
    size = file.stat().st_size
    if size > settings.max_upload_bytes:
        raise StudioError(
            f"{what} {file.name} is {size / 2**20:.1f} MB, more than the "
            f"{settings.max_upload_bytes / 2**20:.0f} MB upload limit; ask an administrator to "
            "raise STUDIO_MAX_UPLOAD_MB, or put the file under a model or data root"
        )
    return file


def allow_folders(*folders: Path) -> None:
    """Add `folders` to this process's (and its children's) STUDIO_MODEL_ROOTS and
    STUDIO_DATA_ROOTS. For administrators' scripts (the demo zoo build, the benchmarks) that
    work in folders of their own; never called by the app on a user's behalf."""
    for variable in ("STUDIO_MODEL_ROOTS", "STUDIO_DATA_ROOTS"):
        present = [p for p in os.environ.get(variable, "").split(os.pathsep) if p]
        os.environ[variable] = os.pathsep.join(present + [str(f.resolve()) for f in folders])
