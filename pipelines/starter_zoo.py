"""The starter zoo: a tiny base, a domain CPT fine-tune and a chat fine-tune, built on first start.

The app opens on these so a fresh machine has something to merge before any real model is
added (the demo-zoo issue replaces them with models trained by the project's own pipelines).
They are written to `STUDIO_HOME/models/starter-{base,cpt,chat}`; building takes ~10 s on
2 CPU cores and happens once.

    python -m pipelines.starter_zoo          # build (or find) the zoo and print its folders
"""

from __future__ import annotations

import fcntl
import logging
import shutil
from pathlib import Path

from pipelines.tiny_models import CHATML_TEMPLATE, build_tiny_family
from studio.settings import StudioSettings, load_settings

LOG = logging.getLogger(__name__)

ROLES = ("base", "cpt", "chat")
PREFIX = "starter-"


def starter_paths(settings: StudioSettings) -> dict[str, Path]:
    return {role: settings.models_dir / f"{PREFIX}{role}" for role in ROLES}


def ensure_starter_zoo(settings: StudioSettings | None = None) -> dict[str, Path]:
    """Return the starter models' folders, building them first if any is missing.

    Several processes may start at once (app + CLI, pytest workers): a file lock makes one
    build while the others wait, and each model appears by an atomic rename, so no reader
    ever sees a half-written folder.
    """
    settings = settings or load_settings()
    settings.ensure_dirs()
    paths = starter_paths(settings)
    if all((p / "config.json").is_file() for p in paths.values()):
        return paths
    with open(settings.models_dir / ".starter.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((p / "config.json").is_file() for p in paths.values()):
            return paths
        LOG.info("Building the starter zoo under %s", settings.models_dir)
        # 1) build all three in a private folder; 2) move each into place.
        work = settings.models_dir / f"{PREFIX}zoo.partial"
        shutil.rmtree(work, ignore_errors=True)
        built = build_tiny_family(work / "family", steps=20)
        # The toy family shares one tokenizer; giving base and CPT the chat model's template
        # lets the Chat tab's three columns answer on first start with no template to pick
        # (a real CPT checkpoint usually has none: the Chat tab then asks for one by name).
        for role in ("base", "cpt"):
            (built[role] / "chat_template.jinja").write_text(CHATML_TEMPLATE, encoding="utf-8")
        for role, target in paths.items():
            shutil.rmtree(target, ignore_errors=True)
            built[role].rename(target)
        shutil.rmtree(work, ignore_errors=True)
    return paths


def main() -> int:
    logging.basicConfig(level=logging.INFO)
    for role, path in ensure_starter_zoo().items():
        print(f"{role}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
