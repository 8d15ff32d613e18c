"""Optional login and who may see which job: parsing STUDIO_AUTH and the owner checks.

Core only (no gradio): `studio.ui.common` finds the logged-in user of a request and calls these.
With no login configured every visitor sees every job (the studio on one person's machine);
with a login (`StudioSettings.login_required`) each user sees only the jobs they started.

    STUDIO_AUTH="ana:secret,ben:hunter2" python app.py   # or STUDIO_AUTH=/etc/studio/users
    .venv/bin/python -m pytest -q tests/test_access.py
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from studio.errors import StudioError
from studio.jobs.store import JobRecord
from studio.settings import StudioSettings

LOG = logging.getLogger(__name__)


class AccessError(StudioError):
    """A login setting is malformed, or a user asked for another user's job."""


def parse_auth(value: str) -> list[tuple[str, str]]:
    """STUDIO_AUTH -> [(user, password)]: "user:pass,user2:pass2", or the path of a file with
    one "user:pass" per line (or comma-separated); blank lines and "#" comments are skipped."""
    text = value.strip()
    if not text:
        return []
    path = Path(text).expanduser()
    # A value with no ":" cannot be a credential list, so it must be meant as a file.
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        where = f"STUDIO_AUTH file {path}"
    elif ":" not in text:
        raise AccessError(
            f"STUDIO_AUTH is '{value}', which is neither 'user:password,...' nor an existing "
            "file; give credentials like 'ana:secret,ben:hunter2' or the path of a users file"
        )
    else:
        where = "STUDIO_AUTH"
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for item in (part.strip() for part in line.split(",")):
            if not item:
                continue
            user, sep, password = item.partition(":")
            if not sep or not user.strip() or not password:
                raise AccessError(
                    f"{where} has an entry '{user.strip() or item}' without 'user:password'; "
                    "write each login as user:password"
                )
            pairs.append((user.strip(), password))
    users = [u for u, _ in pairs]
    if len(set(users)) != len(users):
        twice = sorted({u for u in users if users.count(u) > 1})
        raise AccessError(
            f"{where} lists {', '.join(twice)} more than once; keep one password each"
        )
    return pairs


def launch_auth(settings: StudioSettings) -> list[tuple[str, str]] | None:
    """What `gr.Blocks.launch(auth=...)` takes; None when no password login is configured."""
    return parse_auth(settings.auth) or None


def check_oauth_available(settings: StudioSettings) -> None:
    """Hugging Face login needs gradio's optional OAuth libraries; say so before gradio fails."""
    if not settings.oauth:
        return
    missing = [m for m in ("authlib", "itsdangerous") if importlib.util.find_spec(m) is None]
    if missing:
        raise AccessError(
            f"STUDIO_OAUTH=1 needs {' and '.join(missing)}: add gradio[oauth]==6.31.0 to the "
            "Space's requirements (and hf_oauth: true to its README), or unset STUDIO_OAUTH"
        )


def visible_owner(settings: StudioSettings, user: str | None) -> str | None:
    """The owner to filter job lists by: None (everyone's jobs) without a login."""
    if not settings.login_required:
        return None
    # Logged out on an OAuth Space: an owner no job has, so the list is empty.
    return user or ""


def check_job_access(settings: StudioSettings, record: JobRecord, user: str | None) -> None:
    """Refuse (AccessError) to show or cancel another user's job when login is on."""
    if not settings.login_required or (user and record.owner == user):
        return
    if not user:
        raise AccessError(
            f"sign in to see job {record.id}; jobs belong to the user who started them"
        )
    raise AccessError(
        f"job {record.id} was started by another user; you can see and cancel only your own "
        "jobs (the Jobs tab lists them)"
    )
