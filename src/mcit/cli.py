"""`mcit` command line: `mcit run [CONFIG.yaml] [key=value ...]`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


class UserError(Exception):
    """Bad input from the user: reported in one line, no traceback, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .data.coin_format import DataError
    from .run import RunError

    return (UserError, ConfigError, DataError, RunError)


def cmd_run(args) -> int:
    from .config import load_config
    from .train import run_stream

    path = Path(args.config) if args.config else DEFAULT_CONFIG
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    cfg = load_config(path, args.overrides)
    run_stream(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcit", description="Continual instruction tuning of multimodal LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a model on a stream of tasks and report forgetting",
                         description="Run a continual-tuning job. Without CONFIG, runs the built-in default "
                                     "(coin-mini, tiny LLaVA, sequential LoRA).")
    run.add_argument("config", nargs="?", help="YAML config (default: the built-in default.yaml)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 method.name=full")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `mcit run key=value` (no config file): argparse would take the override as CONFIG.
    if len(argv) >= 2 and argv[0] == "run" and "=" in argv[1] and not argv[1].endswith((".yaml", ".yml")):
        argv = ["run", str(DEFAULT_CONFIG), *argv[1:]]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # checkpoints are local folders, never downloads
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"mcit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mcit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
