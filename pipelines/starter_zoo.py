"""The starter zoo: the base, domain CPT and chat models the app opens on.

They are the demo zoo shipped under assets/zoo (trained by the project's own CPT and SFT
pipelines on the demo domain: `python -m pipelines.demo_zoo`), copied into
`STUDIO_HOME/models/starter-{base,cpt,chat}` on first start (~1 s). A checkout without the
shipped zoo falls back to building the quick tiny family (~10 s on 2 CPU cores).

    python -m pipelines.starter_zoo          # copy (or find) the zoo and print its folders
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
ZOO_DIR = Path(__file__).resolve().parents[1] / "assets" / "zoo"  # pipelines.demo_zoo writes it


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
        LOG.info("Setting up the starter zoo under %s", settings.models_dir)
        # 1) copy or build all three in a private folder; 2) move each into place.
        work = settings.models_dir / f"{PREFIX}zoo.partial"
        shutil.rmtree(work, ignore_errors=True)
        built = _copy_shipped(work) if shipped_zoo() else _build_tiny(work)
        for role, target in paths.items():
            shutil.rmtree(target, ignore_errors=True)
            built[role].rename(target)
        shutil.rmtree(work, ignore_errors=True)
    return paths


def shipped_zoo() -> bool:
    return all((ZOO_DIR / role / "config.json").is_file() for role in ROLES)


def _copy_shipped(work: Path) -> dict[str, Path]:
    return {role: Path(shutil.copytree(ZOO_DIR / role, work / role)) for role in ROLES}


def _build_tiny(work: Path) -> dict[str, Path]:
    built = build_tiny_family(work / "family", steps=20)
    # The toy family shares one tokenizer; giving base and CPT the chat model's template
    # lets the Chat tab's three columns answer on first start with no template to pick
    # (a real CPT checkpoint usually has none: the Chat tab then asks for one by name).
    # (The shipped demo zoo carries the template on all three already.)
    for role in ("base", "cpt"):
        (built[role] / "chat_template.jinja").write_text(CHATML_TEMPLATE, encoding="utf-8")
    return built


def main() -> int:
    logging.basicConfig(level=logging.INFO)
    for role, path in ensure_starter_zoo().items():
        print(f"{role}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
