"""The studio without a browser: the same core functions the app's buttons call.

    python -m studio models                      # the catalog
    python -m studio add PATH | --hub ORG/NAME | --gguf FILE [--name NAME]
    python -m studio inspect MODEL               # architecture, sizes, files (reads no weights)
    python -m studio check CPT CHAT [--base BASE] [--method ties] [--tokenizer-source base]
    python -m studio methods [METHOD]            # mergekit's methods and their parameters
    python -m studio merge RECIPE.yml [--out DIR] [--detach]
    python -m studio jobs | job ID | cancel ID
    python -m studio chat MODEL [MODEL ...] --prompt TEXT [--system TEXT] [--template NAME]
                     [--temperature 0] [--max-new-tokens 64] [--seed N]
    python -m studio preview RECIPE.yml [--prompt TEXT]   # live in-memory merge + quick probe
    python -m studio diagnose RECIPE.yml [--density 0.5]  # task-vector diagnostics per layer
    python -m studio score MODEL [MODEL ...] [--recipe R.yml] [--task FILE ...] [--limit N]
                     [--fewshot K] [--max-new-tokens T] [--chat-template chatml]
                     [--csv OUT.csv]      # accuracy / perplexity / chat QA side by side
    python -m studio sweep RECIPE.yml --parameter weight --values 0,0.25,0.5,0.75,1
                     [--task FILE ...] [--limit N] [--csv OUT.csv]   # score vs merge parameter
    python -m studio sweep-checkpoints RUN_DIR [--recipe R.yml] [--task FILE ...]
                     # a CPT run's checkpoints by step, alone and merged by the recipe

MODEL is a catalog name (see `models`) or a folder. Add --json to any command for JSON output.
A user error prints one sentence and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from studio import catalog, recipes
from studio.errors import StudioError, validated
from studio.evaluation import jobs as scoring_jobs
from studio.evaluation.checkpoint_sweep import CheckpointSweepRequest
from studio.evaluation.scoring import ScoreSettings
from studio.evaluation.sweeps import (
    ScoreReport,
    ScoreRequest,
    ScoreTarget,
    SweepError,
    SweepRequest,
)
from studio.evaluation.tasks import preselected_demo_tasks
from studio.inference import (
    ChatMessage,
    GenerationResult,
    ModelSpec,
    chat,
    generation_settings,
    get_pool,
)
from studio.jobs import JobStatus, get_runner
from studio.merging import start_merge_job
from studio.merging.diagnostics import DiagnosticRow, DiagnosticsReport
from studio.merging.preview import LivePreview, PreviewResult, ProbeResult, probe_settings
from studio.settings import load_settings

LOG = logging.getLogger(__name__)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _model_path(ref: str) -> str:
    """A catalog name or a folder -> the folder (so both spellings work everywhere)."""
    return catalog.model_folder(ref)


def cmd_models(args: argparse.Namespace) -> int:
    entries = catalog.list_models(load_settings())
    rows = [f"{e.name:32} {e.source:9} {e.path}" for e in entries]
    _emit(args, [e.model_dump() for e in entries], "\n".join(rows) or "no models yet")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.hub:
        entry = catalog.add_hub_model(args.hub, settings=settings)
    elif args.gguf:
        entry = catalog.import_gguf(args.gguf, name=args.name, settings=settings)
    elif args.path:
        entry = catalog.add_local_model(args.path, settings=settings)
    else:
        raise StudioError("give a model folder, --hub ORG/NAME or --gguf FILE")
    _emit(args, entry.model_dump(), f"added {entry.name}: {entry.path}")
    return 0


def format_model_info(info: catalog.ModelInfo) -> str:
    lines = [
        f"{info.name}  ({info.path})",
        f"  architecture    {info.architecture} ({info.model_type})",
        f"  parameters      {info.num_parameters:,}",
        f"  dtype           {info.dtype}",
        f"  layers          {info.num_layers}",
        f"  hidden size     {info.hidden_size}",
        f"  vocab size      {info.vocab_size} (tokenizer: {info.tokenizer_vocab_size})",
        f"  tied embeddings {'yes' if info.tied_embeddings else 'no'}",
        f"  chat template   {'yes' if info.has_chat_template else 'no'}",
        f"  weights         {info.weight_format}",
        "  files",
    ]
    lines += [f"    {f.name:40} {f.size_bytes:>14,} B" for f in info.files]
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    info = catalog.inspect_model(_model_path(args.model), settings=load_settings())
    _emit(args, info.model_dump(exclude={"tensor_shapes"}), format_model_info(info))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    settings = load_settings()
    roles = {"cpt": args.cpt, "chat": args.chat} | ({"base": args.base} if args.base else {})
    infos = {
        role: catalog.inspect_model(_model_path(ref), settings=settings)
        for role, ref in roles.items()
    }
    report = catalog.check_compatibility(
        infos, method=args.method, tokenizer_source=args.tokenizer_source
    )
    text = "\n".join(
        ["compatible" if report.ok else "NOT compatible"]
        + [f"  problem: {p}" for p in report.problems]
        + [f"  note: {n}" for n in report.notes]
    )
    _emit(args, report.model_dump(), text)
    return 0 if report.ok else 1


def cmd_methods(args: argparse.Namespace) -> int:
    specs = [recipes.get_method(args.method)] if args.method else recipes.list_methods()
    lines = []
    for spec in specs:
        count = f"{spec.min_models}..{spec.max_models or 'n'} models"
        lines.append(f"{spec.name:18} base {spec.base:9} {count}  {spec.pretty_name}")
        if args.method:
            for p in spec.parameters:
                bounds = "" if p.minimum is None else f" [{p.minimum}, {p.maximum}]"
                lines.append(
                    f"    {p.name:12} {p.kind:5} {p.scope.value:9} default={p.default}{bounds}"
                    f"{' (required)' if p.required else ''}"
                )
    _emit(args, [_spec_dict(s) for s in specs], "\n".join(lines))
    return 0


def _spec_dict(spec: recipes.MethodSpec) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(spec)


def format_status(status: JobStatus) -> str:
    r = status.record
    progress = f"{r.progress_done}/{r.progress_total}" if r.progress_total else "-"
    eta = f" eta {status.eta_seconds:.0f}s" if status.eta_seconds is not None else ""
    extra = f" error: {r.error}" if r.error else ""
    out = f" -> {r.output_path}" if r.output_path else ""
    return f"{r.id}  {r.kind:6} {r.state.value:11} {progress:>9}{eta}  {r.title}{out}{extra}"


def cmd_merge(args: argparse.Namespace) -> int:
    settings = load_settings()
    recipe = recipes.recipe_from_yaml(Path(args.recipe).read_text(encoding="utf-8"))
    runner = get_runner(settings)
    record = start_merge_job(recipe, args.out, runner=runner, settings=settings)
    if args.detach:
        _emit(args, record.model_dump(), f"started job {record.id}: {record.title}")
        return 0
    status = _follow(runner.status, record.id, quiet=args.json)
    _emit(args, status.record.model_dump(), format_status(status))
    return 0 if status.record.state.value == "succeeded" else 1


def _follow(poll: Callable[[str], JobStatus], job_id: str, *, quiet: bool) -> JobStatus:
    """Print progress until the job ends; Ctrl-C cancels it (nothing half-written stays)."""
    last = ""
    try:
        while True:
            status = poll(job_id)
            line = format_status(status)
            if not quiet and line != last:
                print(line, file=sys.stderr)
                last = line
            if status.done:
                return status
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("cancelling...", file=sys.stderr)
        return get_runner(load_settings()).cancel(job_id)


def cmd_jobs(args: argparse.Namespace) -> int:
    statuses = get_runner(load_settings()).list(limit=args.limit)
    text = "\n".join(format_status(s) for s in statuses) or "no jobs yet"
    _emit(args, [s.record.model_dump() for s in statuses], text)
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    status = get_runner(load_settings()).status(args.job_id)
    _emit(args, status.record.model_dump(), format_status(status) + "\n" + status.log_tail)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    status = get_runner(load_settings()).cancel(args.job_id)
    _emit(args, status.record.model_dump(), format_status(status))
    return 0


def _chat_messages(args: argparse.Namespace) -> list[ChatMessage]:
    system = [ChatMessage(role="system", content=args.system)] if args.system else []
    return [*system, ChatMessage(role="user", content=args.prompt)]


def format_reply(model: str, result: GenerationResult) -> str:
    stats = (
        f"[{result.tokens} tokens, {result.tokens_per_second:.1f} tokens/s,"
        f" stopped by {result.stop_reason}]"
    )
    return f"== {model}\n{result.text}\n{stats}"


def cmd_chat(args: argparse.Namespace) -> int:
    settings = generation_settings(
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    messages = _chat_messages(args)
    # Every spec is checked before any model loads: a typo fails fast, not after a long load.
    specs = [(ref, ModelSpec.from_path(_model_path(ref))) for ref in args.models]
    replies = []
    for ref, spec in specs:
        with get_pool().lease(spec) as engine:
            replies.append((ref, chat(engine, messages, settings, template=args.template)))
    data = [
        {
            "model": ref,
            "text": r.text,
            "stop_reason": r.stop_reason,
            "tokens": r.tokens,
            "tokens_per_second": r.tokens_per_second,
        }
        for ref, r in replies
    ]
    _emit(args, data, "\n\n".join(format_reply(ref, r) for ref, r in replies))
    return 0


def _read_recipe(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")  # OSError -> one sentence in main()


def _ppl(value: float | None) -> str:
    return "not finite" if value is None else f"{value:.2f}"


def format_probe(probe: ProbeResult) -> str:
    top = ", ".join(f"{t.text!r} {t.probability:.2f}" for t in probe.top_tokens) or "-"
    return (
        f"{probe.label:24} domain ppl {_ppl(probe.domain_perplexity):>10}"
        f"  general ppl {_ppl(probe.general_perplexity):>10}  next: {top}"
    )


def format_preview(result: PreviewResult) -> str:
    lines = [f"{result.method} merge, prompt {result.prompt!r}", format_probe(result.merged)]
    lines += [format_probe(p) for p in result.parents]
    lines.append(
        f"load {result.load_seconds:.2f} s, merge {result.merge_seconds:.3f} s,"
        f" probe {result.probe_seconds:.3f} s"
    )
    return "\n".join(lines)


def cmd_preview(args: argparse.Namespace) -> int:
    recipe = _read_recipe(args.recipe)
    probe = probe_settings(prompt=args.prompt)
    preview = LivePreview(settings=load_settings())
    try:
        result = preview.update(recipe, probe=probe)
    finally:
        preview.close()  # a one-shot CLI run keeps no merged model around
    _emit(args, result.to_json(), format_preview(result))
    return 0


DIAGNOSTIC_HEADER = (
    f"{'layer':>5} {'group':10} {'|a-base|':>9} {'|b-base|':>9} {'cos(ta,tb)':>10}"
    f" {'cos(a,b)':>9} {'trimmed':>8} {'conflict':>8} {'dropped':>8} {'kept|a|':>8} {'kept|b|':>8}"
)


def format_diagnostic_row(row: DiagnosticRow) -> str:
    layer = "-" if row.layer is None else str(row.layer)
    return (
        f"{layer:>5} {row.group:10} {row.task_vector_norm_a:9.4f} {row.task_vector_norm_b:9.4f}"
        f" {row.task_vector_cosine:10.3f} {row.parent_cosine:9.3f} {row.trimmed_fraction:8.3f}"
        f" {row.sign_conflict_fraction:8.3f} {row.election_dropped_fraction:8.3f}"
        f" {row.kept_norm_share_a:8.3f} {row.kept_norm_share_b:8.3f}"
    )


def format_diagnostics(report: DiagnosticsReport) -> str:
    lines = [
        f"a = {report.model_a}, b = {report.model_b}, base = {report.base},"
        f" density {report.density}",
        DIAGNOSTIC_HEADER,
        *(format_diagnostic_row(row) for row in report.rows),
        "summary",
        format_diagnostic_row(report.summary),
    ]
    return "\n".join(lines)


def cmd_diagnose(args: argparse.Namespace) -> int:
    recipe = _read_recipe(args.recipe)
    preview = LivePreview(settings=load_settings())
    try:
        report = preview.diagnose(recipe, density=args.density)
    finally:
        preview.close()
    _emit(args, report.records(), format_diagnostics(report))
    return 0


def _task_files(args: argparse.Namespace) -> tuple[str, ...]:
    """The --task files (absolute), or the demo domain's evaluation sets when none is given."""
    if args.task:
        return tuple(str(Path(t).expanduser().resolve()) for t in args.task)
    return tuple(str(p) for p in preselected_demo_tasks())


def _score_settings(args: argparse.Namespace) -> ScoreSettings:
    return validated(
        ScoreSettings,
        SweepError,
        num_fewshot=args.fewshot,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        chat_template=args.chat_template,
    )


def format_report(report: ScoreReport) -> str:
    headers, rows = report.table()
    lines = ["\t".join(headers)]
    lines += ["\t".join("" if c is None else str(c) for c in row) for row in rows]
    cached = sum(r.cached for r in report.rows)
    return "\n".join(lines) + f"\n({len(report.rows)} scores, {cached} from the cache)"


def _run_scoring(args: argparse.Namespace, record_id: str) -> int:
    settings = load_settings()
    if args.detach:
        _emit(args, {"job": record_id}, f"started job {record_id}")
        return 0
    status = _follow(get_runner(settings).status, record_id, quiet=args.json)
    report = scoring_jobs.read_report(record_id, settings=settings)
    if report is None:
        _emit(args, status.record.model_dump(), format_status(status))
        return 1
    if args.csv:
        Path(args.csv).write_text(report.to_csv(), encoding="utf-8")
        if report.answers:  # chat-QA replies beside it: OUT_replies.csv
            replies = Path(args.csv).with_name(Path(args.csv).stem + "_replies.csv")
            replies.write_text(report.answers_csv(), encoding="utf-8")
    _emit(args, report.to_json(), format_report(report))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    targets = [
        ScoreTarget(label=Path(_model_path(m)).name, model=_model_path(m)) for m in args.models
    ]
    for path in args.recipe or ():
        text = Path(path).read_text(encoding="utf-8")
        targets.append(ScoreTarget(label=Path(path).stem, recipe=text))
    request = validated(
        ScoreRequest,
        SweepError,
        targets=tuple(targets),
        tasks=_task_files(args),
        settings=_score_settings(args),
    )
    record = scoring_jobs.start_score_job(request, settings=load_settings())
    return _run_scoring(args, record.id)


def _values(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as error:
        raise StudioError(f"--values must be numbers separated by commas; got '{text}'") from error


def cmd_sweep(args: argparse.Namespace) -> int:
    request = validated(
        SweepRequest,
        SweepError,
        recipe=Path(args.recipe).read_text(encoding="utf-8"),
        parameter=args.parameter,
        values=_values(args.values),
        model_index=args.model_index,
        only_filter=args.only_filter,
        include_parents=not args.no_parents,
        tasks=_task_files(args),
        settings=_score_settings(args),
    )
    record = scoring_jobs.start_sweep_job(request, settings=load_settings())
    return _run_scoring(args, record.id)


def cmd_sweep_checkpoints(args: argparse.Namespace) -> int:
    request = validated(
        CheckpointSweepRequest,
        SweepError,
        run_dir=str(Path(args.run_dir).expanduser().resolve()),
        recipe=Path(args.recipe).read_text(encoding="utf-8") if args.recipe else None,
        tasks=_task_files(args),
        settings=_score_settings(args),
    )
    record = scoring_jobs.start_checkpoint_sweep_job(request, settings=load_settings())
    return _run_scoring(args, record.id)


def _scoring_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", action="append", help="task file (repeat); default: the demo tasks")
    p.add_argument("--limit", type=int, help="quick mode: score only the first N items")
    p.add_argument("--fewshot", type=int, default=0, help="few-shot examples per question")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=ScoreSettings().max_new_tokens,
        help="chat QA: longest reply, in tokens",
    )
    p.add_argument(
        "--chat-template", help="chat QA: template name (chatml, llama2, ...); default: own"
    )
    p.add_argument(
        "--csv", help="also write the scores to this CSV file (chat-QA replies: OUT_replies.csv)"
    )
    p.add_argument("--detach", action="store_true", help="start the job and return")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the catalog").set_defaults(fn=cmd_models)

    p = sub.add_parser("add", help="add a model folder, a Hub id or a GGUF file")
    p.add_argument("path", nargs="?")
    p.add_argument("--hub", metavar="ORG/NAME")
    p.add_argument("--gguf", metavar="FILE")
    p.add_argument("--name", help="catalog name for an imported GGUF")
    p.set_defaults(fn=cmd_add)

    p = sub.add_parser("inspect", help="describe a model without reading its weights")
    p.add_argument("model")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("check", help="can these models be merged?")
    p.add_argument("cpt")
    p.add_argument("chat")
    p.add_argument("--base")
    p.add_argument("--method")
    p.add_argument("--tokenizer-source")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("methods", help="merge methods and their parameters")
    p.add_argument("method", nargs="?")
    p.set_defaults(fn=cmd_methods)

    p = sub.add_parser("merge", help="run a mergekit YAML recipe as a background job")
    p.add_argument("recipe")
    p.add_argument("--out", help="output folder (default: under STUDIO_HOME/merges)")
    p.add_argument("--detach", action="store_true", help="start the job and return")
    p.set_defaults(fn=cmd_merge)

    p = sub.add_parser("jobs", help="job history")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(fn=cmd_jobs)

    p = sub.add_parser("job", help="one job's status and log tail")
    p.add_argument("job_id")
    p.set_defaults(fn=cmd_job)

    p = sub.add_parser("cancel", help="cancel a running job")
    p.add_argument("job_id")
    p.set_defaults(fn=cmd_cancel)

    p = sub.add_parser("chat", help="each model answers the same prompt")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--prompt", required=True)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--template", help="chat template name or jinja (default: the model's own)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (deterministic)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int)
    p.set_defaults(fn=cmd_chat)

    p = sub.add_parser("preview", help="live in-memory merge of a recipe, then a quick probe")
    p.add_argument("recipe")
    p.add_argument("--prompt", help="show the most likely next tokens after this text")
    p.set_defaults(fn=cmd_preview)

    p = sub.add_parser("diagnose", help="task-vector diagnostics of a recipe's two parents")
    p.add_argument("recipe")
    p.add_argument("--density", type=float, default=0.5)
    p.set_defaults(fn=cmd_diagnose)

    p = sub.add_parser("score", help="score models (and merges) on tasks, side by side")
    p.add_argument("models", nargs="*", metavar="MODEL")
    p.add_argument("--recipe", action="append", help="also score this merge, merged in memory")
    _scoring_options(p)
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("sweep", help="score a merge at each value of one parameter")
    p.add_argument("recipe")
    p.add_argument("--parameter", required=True, help="t, weight, density, lambda, ...")
    p.add_argument("--values", required=True, help="comma-separated values, e.g. 0,0.5,1")
    p.add_argument("--model-index", type=int, help="vary only this model's parameter")
    p.add_argument(
        "--only-filter",
        metavar="NAME_PART",
        help="vary it only on tensors whose names contain this (mlp, self_attn); the rest keep "
        "the recipe's value",
    )
    p.add_argument("--no-parents", action="store_true", help="do not score the recipe's models")
    _scoring_options(p)
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("sweep-checkpoints", help="score a training run's checkpoints by step")
    p.add_argument("run_dir")
    p.add_argument("--recipe", help="also merge each checkpoint (as the recipe's first model)")
    _scoring_options(p)
    p.set_defaults(fn=cmd_sweep_checkpoints)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # unreadable recipe file and the like: still one sentence
        print(f"error: {error.strerror}: {error.filename}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
