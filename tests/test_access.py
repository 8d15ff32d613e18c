"""Optional login: STUDIO_AUTH parsing, and two users of one launched app who each see only
their own jobs (gradio_client with auth).

.venv/bin/python -m pytest -q tests/test_access.py
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from pipelines.starter_zoo import ensure_starter_zoo
from studio.access import AccessError, check_job_access, parse_auth, visible_owner
from studio.jobs import JobStore
from studio.settings import StudioSettings, load_settings
from studio.ui import build_app, launch_kwargs

USERS = {"ana": "s3cret", "ben": "hunter2"}


def test_parse_auth_from_a_string_and_from_a_file(tmp_path: Path) -> None:
    """Both spellings give the same (user, password) pairs; comments and blanks are skipped."""
    assert parse_auth("ana:s3cret, ben:hunter2") == [("ana", "s3cret"), ("ben", "hunter2")]
    assert parse_auth("ana:pa:ss") == [("ana", "pa:ss")]  # only the first ':' splits
    users = tmp_path / "users"
    users.write_text("# the studio's users\nana:s3cret\n\nben:hunter2\n", encoding="utf-8")
    assert parse_auth(str(users)) == [("ana", "s3cret"), ("ben", "hunter2")]
    assert parse_auth("  ") == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/no/such/users-file", "neither 'user:password,...' nor an existing file"),
        ("ana:s3cret,ben", "entry 'ben' without 'user:password'"),
        ("ana:s3cret,:x", "without 'user:password'"),
        ("ana:one,ana:two", "lists ana more than once"),
    ],
)
def test_malformed_auth_is_a_sentence(value: str, message: str) -> None:
    with pytest.raises(AccessError, match=message):
        parse_auth(value)


def test_settings_and_launch_kwargs_read_the_login(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """STUDIO_AUTH turns login on and reaches launch(auth=...); OAuth needs a Space too."""
    monkeypatch.delenv("STUDIO_AUTH", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("STUDIO_OAUTH", "1")
    settings = load_settings()
    assert (settings.login_required, settings.oauth) == (False, False)  # not on a Space
    assert "auth" not in launch_kwargs(settings)
    monkeypatch.setenv("SPACE_ID", "org/merge-studio")
    assert load_settings().oauth is True and load_settings().login_required is True
    monkeypatch.delenv("STUDIO_OAUTH")
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.setenv("STUDIO_AUTH", "ana:s3cret,ben:hunter2")
    settings = load_settings()
    assert settings.login_required is True
    assert launch_kwargs(settings)["auth"] == [("ana", "s3cret"), ("ben", "hunter2")]


def test_oauth_login_button_or_a_sentence(tmp_path: Path) -> None:
    """STUDIO_OAUTH on a Space adds "Sign in with Hugging Face" when gradio[oauth] is installed,
    and is refused in a sentence naming the requirement when it is not."""
    import importlib.util

    import gradio as gr

    settings = StudioSettings(home=tmp_path, oauth=True)
    if importlib.util.find_spec("authlib") and importlib.util.find_spec("itsdangerous"):
        demo = build_app(settings)
        assert [b for b in demo.blocks.values() if isinstance(b, gr.LoginButton)]
    else:
        with pytest.raises(AccessError, match=r"add gradio\[oauth\]==6.31.0"):
            build_app(settings)


def test_job_access_rules(tmp_path: Path) -> None:
    """Without login everything is visible; with it, only the owner's jobs."""
    store = JobStore(tmp_path / "db.sqlite3")
    record = store.create(kind="merge", title="t", job_dir=tmp_path, owner="ana")
    open_studio = StudioSettings(home=tmp_path)
    check_job_access(open_studio, record, None)  # no login: anyone may look
    assert visible_owner(open_studio, "ben") is None
    locked = StudioSettings(home=tmp_path, auth="ana:s3cret,ben:hunter2")
    check_job_access(locked, record, "ana")
    assert visible_owner(locked, "ana") == "ana" and visible_owner(locked, None) == ""
    with pytest.raises(AccessError, match=f"job {record.id} was started by another user"):
        check_job_access(locked, record, "ben")
    with pytest.raises(AccessError, match="sign in"):
        check_job_access(locked, record, None)
    store.close()


# -- two users of one launched app -----------------------------------------------------------


@pytest.fixture(scope="module")
def locked_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, StudioSettings]]:
    auth = ",".join(f"{u}:{p}" for u, p in USERS.items())
    settings = StudioSettings(home=tmp_path_factory.mktemp("locked_home"), auth=auth)
    ensure_starter_zoo(settings)
    demo = build_app(settings)
    kwargs = launch_kwargs(settings)
    demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", auth=kwargs["auth"])
    try:
        yield demo.local_url, settings
    finally:
        demo.close()


def client_for(url: str, user: str) -> Client:
    return Client(url, auth=(user, USERS[user]), verbose=False)


def wait_done(client: Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.predict(job_id, api_name="/job_status")
        if status["done"]:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


@pytest.mark.app
def test_each_user_sees_only_their_own_jobs(locked_app: tuple[str, StudioSettings]) -> None:
    """ana's merge is ana's: listed, shown and cancellable for her, refused to ben."""
    url, settings = locked_app
    with pytest.raises(Exception):  # noqa: B017 - any refusal: no credentials, no API
        Client(url, verbose=False).predict(api_name="/jobs")
    ana, ben = client_for(url, "ana"), client_for(url, "ben")
    recipe = ana.predict(
        str(settings.models_dir / "starter-cpt"),
        str(settings.models_dir / "starter-chat"),
        "",
        "linear",
        "",
        "",
        "",
        "float32",
        api_name="/recipe",
    )
    started = ana.predict(recipe, "", api_name="/merge_start")
    assert started["owner"] == "ana"
    job = started["id"]
    assert [j["id"] for j in ana.predict(50, api_name="/jobs")] == [job]
    assert ben.predict(50, api_name="/jobs") == []
    for api_name in ("/job_status", "/job_cancel"):
        with pytest.raises(Exception, match=f"job {job} was started by another user"):
            ben.predict(job, api_name=api_name)
    final = wait_done(ana, job)
    assert final["state"] == "succeeded", final["log_tail"]  # ben's cancel did not touch it
    assert (Path(final["output_path"]) / "model.safetensors").is_file()
