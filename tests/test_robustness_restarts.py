"""The app itself killed while merges run (issue 8): history kept, the live worker re-attached,
the dead one interrupted with no partial folder.

    .venv/bin/python -m pytest -q tests/test_robustness_restarts.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from studio.jobs import JobRunner, JobState, JobStore
from studio.jobs.runner import INTERRUPTED_MESSAGE, REPO_ROOT
from studio.settings import load_settings
from tests.test_robustness import (
    WAIT,
    digest,
    leftovers,
    wait_for,
)

# ---------------------------------------------------------------------- 2. app killed mid-job

APP_THAT_DIES = """
import json, os, sys
from pathlib import Path
from studio.jobs import JobRunner
from studio.merging import start_merge_job
from studio.recipes import MergeRecipe, RecipeModel
from studio.settings import load_settings

cpt, chat, merges = sys.argv[1], sys.argv[2], Path(sys.argv[3])
recipe = MergeRecipe(method="linear", dtype="float32", models=(
    RecipeModel(path=cpt, parameters={"weight": 0.5}),
    RecipeModel(path=chat, parameters={"weight": 0.5})))
settings = load_settings()
runner = JobRunner(settings)
done = start_merge_job(recipe, merges / "done", runner=runner, settings=settings)
assert runner.wait(done.id, timeout=120).state.value == "succeeded"
os.environ["STUDIO_WORKER_STEP_DELAY"] = "0.4"  # the next two are still merging when we die
live = start_merge_job(recipe, merges / "live", runner=runner, settings=settings)
dead = start_merge_job(recipe, merges / "dead", runner=runner, settings=settings)
print(json.dumps([r.model_dump(mode="json") for r in (done, live, dead)]), flush=True)
os._exit(0)  # a crash: no watcher finalises anything
"""


@pytest.mark.slow
def test_an_app_killed_mid_merge_keeps_history_reattaches_and_interrupts(
    tiny_family: dict[str, Path],
) -> None:
    """The app process dies with three merges: one finished, two running. One worker then dies
    too. A new app (runner) shows the finished one SUCCEEDED with its output untouched, the dead
    one INTERRUPTED with no partial folder, and re-attaches to the live one until it SUCCEEDS."""
    settings = load_settings()
    settings.ensure_dirs()
    app = subprocess.run(
        [sys.executable, "-c", APP_THAT_DIES, str(tiny_family["cpt"]), str(tiny_family["chat"])]
        + [str(settings.merges_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    done, live, dead = json.loads(app.stdout.strip().splitlines()[-1])
    store = JobStore(settings.db_path)
    assert [store.get(j["id"]).state for j in (done, live, dead)] == [
        JobState.SUCCEEDED,
        JobState.RUNNING,
        JobState.RUNNING,
    ]
    before = digest(Path(done["output_path"]))
    wait_for(lambda: Path(dead["temp_path"]).exists(), "the dead job's temp folder")
    os.killpg(dead["pid"], signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(dead["pid"]) or _zombie(dead["pid"]), "worker death")

    runner = JobRunner(settings)  # the restarted app
    assert {s.id for s in runner.list()} == {done["id"], live["id"], dead["id"]}
    interrupted = runner.status(dead["id"])
    assert interrupted.state == JobState.INTERRUPTED
    assert interrupted.record.error == INTERRUPTED_MESSAGE
    assert not Path(dead["temp_path"]).exists() and not Path(dead["output_path"]).exists()
    final = runner.wait(live["id"], timeout=WAIT)
    assert final.state == JobState.SUCCEEDED, final.record.error
    assert (Path(live["output_path"]) / "model.safetensors").is_file()
    assert runner.status(done["id"]).state == JobState.SUCCEEDED
    assert digest(Path(done["output_path"])) == before
    assert leftovers(settings.merges_dir) == []


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
