"""Training configs for the pipelines: load, check and print a CPT or SFT YAML file.

The typed schema (one place for every default) is `studio.training.config`, because the app
validates configs and previews commands without importing the pipelines (imports flow
studio <- pipelines, never back); this module is the pipelines' door to it.

    python -m pipelines.train_config pipelines/configs/tiny_cpt.yml      # check + print resolved
    python -m pipelines.train_config pipelines/configs/*.yml --processes 8

Tests: tests/test_cpt.py::test_every_shipped_config_loads.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from studio.errors import StudioError
from studio.training.config import (
    CPTConfig,
    SFTConfig,
    TrainConfigError,
    dump_train_config,
    load_train_config,
    parse_train_config,
    resolve_paths,
)

__all__ = [
    "CPTConfig",
    "SFTConfig",
    "TrainConfigError",
    "dump_train_config",
    "load_train_config",
    "parse_train_config",
    "resolve_paths",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.train_config", description=__doc__)
    parser.add_argument("configs", nargs="+", help="training config YAML files")
    parser.add_argument("--processes", type=int, default=1, help="processes, for tokens/step")
    parser.add_argument("--quiet", action="store_true", help="only check; print one line each")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.configs:
        try:
            config = load_train_config(path)
        except StudioError as error:
            print(f"{path}: INVALID: {error}")
            failed += 1
            continue
        tokens = config.global_tokens_per_step(args.processes)
        print(f"{path}: {config.kind}, {tokens} tokens per step on {args.processes} process(es)")
        if not args.quiet:
            print(dump_train_config(config))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
