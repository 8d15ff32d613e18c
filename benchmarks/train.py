"""CPT training speed and memory: the studio's pipeline vs a plain Hugging Face Trainer.

    python benchmarks/train.py                 # tiny-ish Llama (~8M parameters), 3 runs each
    python benchmarks/train.py --runs 5 --steps 30 --hidden 384 --layers 6

Both sides train the same model (one folder, fp32), on the same packed blocks (built by
pipelines.data from the same JSONL), with the same batch (micro-batch x gradient
accumulation), AdamW settings, warmup + cosine schedule and gradient clipping, on this CPU.
Each run is a fresh subprocess (so peak RSS is that run's own), and the two sides alternate
run by run so machine load hits both alike. Measured: training tokens/s over the steps after
`--warmup` steps (setup, data loading and the first steps excluded), tokens per CPU-second
over the same steps (steadier than wall time when other processes share the CPU), and the
process's peak RSS. Printed: medians of `--runs`, and ratios to the Trainer (goal: tokens/s ratio >= 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.confine import allow_folders  # noqa: E402

# The benchmark builds its models in the temp folder: the studio's path confinement accepts it.
allow_folders(Path(tempfile.gettempdir()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def build_inputs(folder: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """A tiny-ish Llama (word tokenizer from the demo world) and a JSONL corpus."""
    from pipelines.tiny_models import (
        CHAT_TEXT,
        DOMAIN_TEXT,
        GENERAL_TEXT,
        TinyShape,
        build_tiny_llama,
        train_word_tokenizer,
    )

    tokenizer = train_word_tokenizer(GENERAL_TEXT + DOMAIN_TEXT + CHAT_TEXT)
    shape = TinyShape(
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64),
        max_position_embeddings=args.seq_len,
    )
    model = build_tiny_llama(folder / "model", tokenizer, shape=shape)
    rng = random.Random(0)
    pool = GENERAL_TEXT + DOMAIN_TEXT
    rows = [{"text": " ".join(rng.choice(pool) for _ in range(20))} for _ in range(2000)]
    data = folder / "corpus.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return model, data


def cpt_config(model: Path, data: Path, out: Path, args: argparse.Namespace):
    from studio.training.config import CPTConfig

    return CPTConfig.model_validate(
        {
            "kind": "cpt",
            "model": str(model),
            "output_dir": str(out),
            "micro_batch_size": args.micro_batch,
            "grad_accum": args.grad_accum,
            "max_steps": args.steps,
            "schedule": {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 2},
            "save_every": 10**6,
            "eval_every": 10**6,
            "register_checkpoints": False,
            "data": {
                "seq_len": args.seq_len,
                "sources": [{"name": "corpus", "paths": [str(data)]}],
            },
        }
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_ours(model: Path, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """The studio's CPT recipe: setup, then train_step() as train() calls it."""
    from pipelines.cpt import CPTRecipe

    recipe = CPTRecipe(cpt_config(model, data, out, args))
    recipe.setup()
    times = []
    for _ in range(args.steps):
        recipe.train_step()
        times.append((time.perf_counter(), time.process_time()))
    recipe.close()
    return _result(times, args)


def run_trainer(model: Path, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """transformers.Trainer on the same packed blocks, batch and optimizer settings."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from pipelines.data import pack_documents, read_documents, tokenize_documents

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model)
    blocks = pack_documents(
        tokenize_documents(tokenizer, read_documents([data])), seq_len=args.seq_len
    ).blocks

    class Blocks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return int(blocks.shape[0])

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {
                "input_ids": blocks[i],
                "labels": blocks[i],
                "attention_mask": torch.ones_like(blocks[i]),
            }

    times: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_a, **_k) -> None:
            times.append((time.perf_counter(), time.process_time()))

    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    lm.config.use_cache = False
    training = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.grad_accum,
        max_steps=args.steps,
        learning_rate=1e-3,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        save_strategy="no",
        logging_steps=10**6,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=lm, args=training, train_dataset=Blocks(), callbacks=[Clock()])
    trainer.train()
    return _result(times, args)


def _result(step_ends: list[tuple[float, float]], args: argparse.Namespace) -> dict:
    """Wall-clock tokens/s, and tokens per CPU-second (robust when other work shares the CPU)."""
    first, last = step_ends[args.warmup - 1], step_ends[-1]
    tokens = (len(step_ends) - args.warmup) * args.seq_len * args.micro_batch * args.grad_accum
    return {
        "tokens_per_s": tokens / (last[0] - first[0]),
        "tokens_per_cpu_s": tokens / (last[1] - first[1]),
        "peak_rss_mb": peak_rss_mb(),
    }


def worker(args: argparse.Namespace) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    runner = run_ours if args.worker == "ours" else run_trainer
    result = runner(Path(args.model), Path(args.data), out, args)
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="first steps not timed")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--worker", choices=["ours", "trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    folder = Path(tempfile.mkdtemp(prefix="bench-train-inputs-"))
    model, data = build_inputs(folder, args)
    shape = f"hidden {args.hidden}, {args.layers} layers"
    tokens_per_step = args.seq_len * args.micro_batch * args.grad_accum
    print(
        f"model: tiny Llama ({shape}); batch {args.micro_batch} x {args.grad_accum} x "
        f"{args.seq_len} = {tokens_per_step} tokens/step; {args.steps} steps, first "
        f"{args.warmup} untimed; {args.runs} runs each, alternating"
    )
    results: dict[str, list[dict]] = {"studio CPT pipeline": [], "HF Trainer": []}
    for _ in range(args.runs):
        for name, which in (("studio CPT pipeline", "ours"), ("HF Trainer", "trainer")):
            command = [
                sys.executable,
                __file__,
                "--worker",
                which,
                "--model",
                str(model),
                "--data",
                str(data),
                *(f"--{k.replace('_', '-')}={v}" for k, v in _shape_args(args).items()),
            ]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode != 0 or not line:
                sys.exit(f"{name} run failed:\n{done.stderr[-3000:]}")
            results[name].append(json.loads(line[-1].removeprefix("RESULT ")))
    anchor = results["HF Trainer"]
    anchor_speed = statistics.median(r["tokens_per_s"] for r in anchor)
    anchor_cpu = statistics.median(r["tokens_per_cpu_s"] for r in anchor)
    anchor_rss = statistics.median(r["peak_rss_mb"] for r in anchor)
    print(
        f"\n{'':20} {'tokens/s':>9} {'ratio':>6} {'tok/CPU-s':>9} {'ratio':>6} "
        f"{'peak RSS MB':>11} {'ratio':>6}  runs (tokens/s)"
    )
    for name, runs in results.items():
        speed = statistics.median(r["tokens_per_s"] for r in runs)
        cpu = statistics.median(r["tokens_per_cpu_s"] for r in runs)
        rss = statistics.median(r["peak_rss_mb"] for r in runs)
        each = ", ".join(f"{r['tokens_per_s']:.0f}" for r in runs)
        print(
            f"{name:20} {speed:9.0f} {speed / anchor_speed:5.2f}x {cpu:9.0f} "
            f"{cpu / anchor_cpu:5.2f}x {rss:11.0f} {rss / anchor_rss:5.2f}x  {each}"
        )
    print("\ngoal: tokens/s ratio >= 1.0 (studio pipeline vs HF Trainer, same run)")


def _shape_args(args: argparse.Namespace) -> dict[str, object]:
    keys = ("steps", "warmup", "hidden", "layers", "seq_len", "micro_batch", "grad_accum")
    return {k: getattr(args, k) for k in keys}


if __name__ == "__main__":
    main()
