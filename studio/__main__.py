"""The studio without a browser: the same core functions the app's buttons call.

    python -m studio models                      # the catalog
    python -m studio add PATH | --hub ORG/NAME | --gguf FILE [--name NAME]
    python -m studio inspect MODEL               # architecture, sizes, files (reads no weights)
    python -m studio check CPT CHAT [--base BASE] [--method ties] [--tokenizer-source base]
    python -m studio methods [METHOD]            # mergekit's methods and their parameters
    python -m studio merge RECIPE.yml [--out DIR] [--detach]
    python -m studio jobs | job ID | cancel ID

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
from studio.errors import StudioError
from studio.jobs import JobStatus, get_runner
from studio.merging import start_merge_job
from studio.settings import load_settings

LOG = logging.getLogger(__name__)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.startswith((".", "~"))


def _model_path(ref: str) -> str:
    """A catalog name or a folder -> the folder (so both spellings work everywhere)."""
    return ref if looks_like_path(ref) else catalog.find_model(ref).path


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
