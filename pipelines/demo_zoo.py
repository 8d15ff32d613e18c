"""The demo zoo: base, CPT and chat models trained by the project's own pipelines on the demo domain.

    python -m pipelines.demo_zoo                 # ~10 min on 2 cores; writes assets/zoo + data
    python -m pipelines.demo_zoo --scale 0.01    # a few steps per stage: checks the plumbing

Steps (each a normal training run, so its metrics.jsonl and eval losses are kept in the work
folder for inspection):
1. `pipelines.demo_domain` writes the fictional domain's training and evaluation files
   (assets/demo_domain/).
2. A word-level tokenizer is trained on every file's words and a ~1M-parameter Llama is
   initialised at random (ChatML template on all three, so each can be asked questions).
3. base  = `pipelines.cpt` on the general world only    (pipelines/configs/demo_base.yml)
   cpt   = `pipelines.cpt` from base, domain + 20% replay (pipelines/configs/demo_cpt.yml)
   chat  = `pipelines.sft` from base, general chat only   (pipelines/configs/demo_chat.yml)
4. Each stage's last checkpoint is copied (weights, config, tokenizer; no optimizer state) to
   assets/zoo/{base,cpt,chat}, which the app copies into its catalog on first start
   (pipelines/starter_zoo.py). The three share one tokenizer and every tensor shape.

Tests: tests/test_demo_zoo.py (the shipped zoo loads and matches; a --scale run works).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines import cpt, sft
from pipelines.demo_domain import write_demo_domain
from pipelines.tiny_models import (
    CHATML_TEMPLATE,
    TinyShape,
    build_tiny_llama,
    train_word_tokenizer,
)
from studio.confine import allow_folders
from studio.training.checkpoints import (
    RESUME_STATE_FILE,
    TRAINER_STATE_DIR,
    list_checkpoints,
)
from studio.training.config import dump_train_config, load_train_config

LOG = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
ZOO_DIR = REPO / "assets" / "zoo"
DATA_DIR = REPO / "assets" / "demo_domain"
CONFIGS = {
    role: REPO / "pipelines" / "configs" / f"demo_{role}.yml" for role in ("base", "cpt", "chat")
}
ROLES = ("base", "cpt", "chat")

# ~1.1M parameters: big enough to hold a few hundred facts, small enough to train in minutes
# on 2 cores and to ship three copies in a few MB.
ZOO_SHAPE = TinyShape(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def corpus_lines(data_dir: Path) -> list[str]:
    """Every text of the demo files (training and evaluation), for the tokenizer's vocabulary.

    Evaluation words are in the vocabulary (so an unseen phrasing is not <unk>) but never in
    a training batch: knowing a word's id teaches the model nothing about it.
    """
    lines = ["user assistant system"]
    for path in sorted(data_dir.rglob("*")):
        if path.suffix == ".jsonl":
            for raw in path.read_text("utf-8").splitlines():
                lines.append(" ".join(_strings(json.loads(raw))))
        elif path.suffix == ".txt":
            lines += path.read_text("utf-8").splitlines()
    return lines


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _rebase(path: str, data_dir: Path) -> str:
    """A shipped config's `assets/demo_domain/...` path, moved under `data_dir` (any other
    repository path, such as the real pair's own CPT text, stays where it is)."""
    shipped = DATA_DIR.relative_to(REPO)
    if not Path(path).is_relative_to(shipped):
        return str(REPO / path)
    return str(data_dir / Path(path).relative_to(shipped))


def run_stage(
    role: str,
    model: Path,
    work: Path,
    *,
    data_dir: Path = DATA_DIR,
    scale: float = 1.0,
    config_path: Path | None = None,
) -> Path:
    """Train one stage from `model` with its shipped config (`pipelines/configs/demo_<role>.yml`
    unless `config_path`), data read from `data_dir`; return its last checkpoint folder."""
    config = load_train_config(config_path or CONFIGS[role])
    steps = max(2, round(config.max_steps * scale))
    config = config.model_copy(
        update={
            "model": str(model),
            "output_dir": str(work / role),
            "max_steps": steps,
            "save_every": min(config.save_every, steps),
            "eval_every": max(1, min(config.eval_every, steps)),
        }
    )
    data = config.data.model_copy(
        update={
            group: [
                item.model_copy(update={"paths": [_rebase(p, data_dir) for p in item.paths]})
                for item in getattr(config.data, group)
            ]
            for group in ("sources", "eval_sets")
        }
        if config.kind == "cpt"
        else {"paths": [_rebase(p, data_dir) for p in config.data.paths]}
    )
    schedule = config.schedule.model_copy(
        update={"warmup_steps": min(config.schedule.warmup_steps, steps // 2)}
    )
    config = config.model_copy(update={"data": data, "schedule": schedule})
    shutil.rmtree(work / role, ignore_errors=True)
    (work / f"{role}.yml").write_text(dump_train_config(config), encoding="utf-8")
    recipe = cpt.CPTRecipe if config.kind == "cpt" else sft.SFTRecipe
    if cpt.main([str(work / f"{role}.yml")], recipe_class=recipe) != 0:
        raise RuntimeError(f"the demo zoo's {role} stage failed; see the log above")
    return Path(list_checkpoints(work / role)[-1].path)


def publish(checkpoint: Path, target: Path) -> Path:
    """Copy a checkpoint's model files (not its optimizer state) to `target`, atomically."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(
        checkpoint, partial, ignore=shutil.ignore_patterns(TRAINER_STATE_DIR, RESUME_STATE_FILE)
    )
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def build_demo_zoo(
    *,
    out_dir: Path = ZOO_DIR,
    data_dir: Path = DATA_DIR,
    work: Path | None = None,
    seed: int = 0,
    scale: float = 1.0,
) -> dict[str, Path]:
    """Write the demo data, train the three models, publish them under `out_dir`."""
    work = Path(work or REPO / "runs" / "demo-zoo-build")
    work.mkdir(parents=True, exist_ok=True)
    allow_folders(work, data_dir)
    write_demo_domain(data_dir, seed=seed)
    tokenizer = train_word_tokenizer(corpus_lines(data_dir), vocab_size=8192)
    init = build_tiny_llama(
        work / "init", tokenizer, seed=seed, shape=ZOO_SHAPE, chat_template=CHATML_TEMPLATE
    )
    started = time.monotonic()
    base = run_stage("base", init, work, data_dir=data_dir, scale=scale)
    trained = {
        "base": base,
        "cpt": run_stage("cpt", base, work, data_dir=data_dir, scale=scale),
        "chat": run_stage("chat", base, work, data_dir=data_dir, scale=scale),
    }
    LOG.info("demo zoo trained in %.0f s", time.monotonic() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {role: publish(trained[role], out_dir / role) for role in ROLES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ZOO_DIR)
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each stage's steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    zoo = build_demo_zoo(
        out_dir=args.out, data_dir=args.data, work=args.work, seed=args.seed, scale=args.scale
    )
    for role, path in zoo.items():
        print(f"{role}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
