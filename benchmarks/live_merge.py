"""Live merge vs mergekit: time from a parameter change to an updated model, side by side.

    python benchmarks/live_merge.py                  # small: SmolLM2-135M's shape, bf16
    python benchmarks/live_merge.py --size tiny      # seconds; a smoke run
    python benchmarks/live_merge.py --workdir /tmp/lm-bench   # keep and reuse the checkpoints

It builds a random Llama (small: hidden 576, 30 layers, vocab 49152, tied embeddings --
SmolLM2-135M's shape -- in bf16) as the base, and two "fine-tunes" = base + small noise, then for
each fast method prints in ONE run:

- live: median seconds of `LiveMerger.merge_into(model, recipe)` after a parameter change (the
  first call, which builds task vectors and other caches, is reported separately as "first");
  for ties/dare_ties both a weight change and a density change are timed;
- mergekit: median seconds of `run_merge` to a temporary folder + `from_pretrained` reload;
- the ratio, whether the live tensors equal mergekit's (max abs diff; TIES threshold ties are
  the only allowed difference and are counted), and the peak RSS of the process.

Targets on a 2-core CPU: linear <= 0.1 s and >= 20x; ties/dare_ties <= 1 s and >= 7x.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.confine import allow_folders  # noqa: E402

# The benchmark builds its models in the temp folder: the studio's path confinement accepts it.
allow_folders(Path(tempfile.gettempdir()))

from pipelines.tiny_models import TinyShape, build_tiny_llama, train_word_tokenizer  # noqa: E402
from studio.merging.live import LiveMerger  # noqa: E402

SHAPES = {
    "tiny": (TinyShape(), 256),
    # SmolLM2-135M: hidden 576, 30 layers, 9 heads / 3 kv heads, vocab 49152, tied embeddings.
    "small": (
        TinyShape(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        ),
        49152,
    ),
}
NOISE = 2e-3  # fine-tune-sized change relative to the 0.02 init std


def build_models(workdir: Path, size: str) -> dict[str, Path]:
    """base + two noisy children (bf16 safetensors folders); reused if already there."""
    shape, vocab = SHAPES[size]
    folders = {name: workdir / size / name for name in ("base", "cpt", "chat")}
    if all((f / "model.safetensors").exists() for f in folders.values()):
        return folders
    tokenizer = train_word_tokenizer(["a tiny corpus for a tokenizer ."], vocab_size=64)
    build_tiny_llama(
        folders["base"], tokenizer, seed=0, shape=shape, dtype=torch.bfloat16, vocab_size=vocab
    )
    base = load_file(folders["base"] / "model.safetensors")
    for seed, name in ((1, "cpt"), (2, "chat")):
        generator = torch.Generator().manual_seed(seed)
        child = {
            key: (t.float() + NOISE * torch.randn(t.shape, generator=generator)).to(t.dtype)
            for key, t in base.items()
        }
        shutil.copytree(folders["base"], folders[name], dirs_exist_ok=True)
        save_file(child, folders[name] / "model.safetensors", metadata={"format": "pt"})
    return folders


def recipe(folders: dict[str, Path], method: str, *, weight: float, density: float) -> str:
    base = folders["base"]
    if method == "linear":
        body = {
            "models": [
                {"model": str(folders["cpt"]), "parameters": {"weight": weight}},
                {"model": str(folders["chat"]), "parameters": {"weight": 1 - weight}},
            ]
        }
    elif method == "slerp":
        body = {
            "base_model": str(folders["cpt"]),
            "models": [{"model": str(folders["cpt"])}, {"model": str(folders["chat"])}],
            "parameters": {"t": weight},
        }
    else:
        params = {"weight": weight}
        if method != "task_arithmetic":
            params["density"] = density
        body = {
            "base_model": str(base),
            "models": [
                {"model": str(folders["cpt"]), "parameters": params},
                {"model": str(folders["chat"]), "parameters": {**params, "weight": 1 - weight}},
            ],
        }
    return yaml.safe_dump({"merge_method": method, "dtype": "bfloat16", **body})


def median_seconds(run: Callable[[int], object], repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mergekit_reload(text: str, out_dir: Path) -> torch.nn.Module:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import AutoModelForCausalLM

    shutil.rmtree(out_dir, ignore_errors=True)
    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    run_merge(config, str(out_dir), MergeOptions(random_seed=0, quiet=True, write_model_card=False))
    return AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16)


def compare(model: torch.nn.Module, out_dir: Path) -> tuple[float, int]:
    """Max abs diff between the live model and mergekit's files, and unequal tensor count."""
    written = load_file(out_dir / "model.safetensors")
    state = model.state_dict()
    worst, unequal = 0.0, 0
    for name, tensor in written.items():
        live = state[name]
        if not torch.equal(live, tensor):
            unequal += 1
            worst = max(worst, float((live.float() - tensor.float()).abs().max()))
    return worst, unequal


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SHAPES), default="small")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--methods", default="linear,slerp,task_arithmetic,ties,dare_ties,dare_linear"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="live-merge-bench-"))
    folders = build_models(workdir, args.size)
    model = AutoModelForCausalLM.from_pretrained(folders["base"], dtype=torch.bfloat16)
    start = time.perf_counter()
    merger = LiveMerger(
        [folders["cpt"], folders["chat"]], base_model=folders["base"], dtype="bfloat16"
    )
    load_seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {args.size}, {params / 1e6:.1f}M parameters, bf16, torch threads {torch.get_num_threads()}"
    )
    print(
        f"LiveMerger load (once): {load_seconds:.2f} s; holds ~{merger.memory_bytes() / 1e9:.2f} GB"
    )
    print()
    header = f"{'method':<16}{'change':<9}{'first s':>9}{'live s':>9}{'mergekit+reload s':>19}{'ratio':>8}  equal to mergekit"
    print(header)
    print("-" * len(header))
    weights = [0.3, 0.45, 0.6, 0.75, 0.4]
    densities = [0.5, 0.6, 0.4, 0.7, 0.55]
    out_dir = workdir / "mergekit-out"
    for method in args.methods.split(","):
        first_start = time.perf_counter()
        merger.merge_into(model, recipe(folders, method, weight=0.2, density=0.5), seed=0)
        first = time.perf_counter() - first_start
        changes = ["weight"] + (
            ["density"] if method in {"ties", "dare_ties", "dare_linear"} else []
        )
        live_times = {}
        for change in changes:

            def live(i: int, change: str = change, method: str = method) -> None:
                w = weights[i % len(weights)] if change == "weight" else 0.2
                d = densities[i % len(densities)] if change == "density" else 0.5
                merger.merge_into(model, recipe(folders, method, weight=w, density=d), seed=0)

            live_times[change] = median_seconds(live, args.repeats)
        final = recipe(folders, method, weight=0.35, density=0.45)
        merger.merge_into(model, final, seed=0)
        ties = merger.last_stats.threshold_ties if merger.last_stats else 0

        def anchor(i: int, final: str = final) -> None:
            reloaded = mergekit_reload(final, out_dir)
            del reloaded
            gc.collect()

        anchor_seconds = median_seconds(anchor, args.repeats)
        worst, unequal = compare(model, out_dir)
        verdict = (
            "yes (torch.equal)" if unequal == 0 else f"{unequal} tensors differ, max {worst:.3g}"
        )
        if unequal and ties:
            verdict += f" ({ties} elements tied at TIES thresholds)"
        for change, seconds in live_times.items():
            print(
                f"{method:<16}{change:<9}{first:>9.3f}{seconds:>9.3f}{anchor_seconds:>19.2f}"
                f"{anchor_seconds / seconds:>7.1f}x  {verdict}"
            )
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print()
    print(f"peak RSS: {peak_gb:.2f} GB (includes the mergekit runs and their reloads)")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
