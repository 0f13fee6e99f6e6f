"""`mcit` command line: `mcit run [CONFIG.yaml] [key=value ...]`."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


class UserError(Exception):
    """Bad input from the user: reported in one line, no traceback, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .data.coin_format import DataError
    from .run import RunError
    from .train import DataCheckFailed

    return (UserError, ConfigError, DataError, RunError, DataCheckFailed)


def cmd_run(args) -> int:
    from .config import load_config
    from .train import run_stream

    if args.resume:
        run_dir = Path(args.resume)
        if args.config or args.overrides:
            raise UserError("--resume continues a run with its own saved config; give no config or overrides")
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--resume: {run_dir} is not a run folder (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml", [])
        cfg.output_dir, cfg.name = str(run_dir.parent), run_dir.name
        run_stream(cfg, resume=True)
        return 0
    cfg = load_config(_config_path(args.config), args.overrides)
    run_stream(cfg)
    return 0


def cmd_data_check(args) -> int:
    """Validate every file of a stream; print counts and every problem; exit 1 on problems."""
    from .config import load_config
    from .data import coin_mini
    from .data.check import check_release, check_stream_config
    from .data.stream import coin_mini_root

    cfg = load_config(_config_path(args.config), args.overrides)
    dc = cfg.data
    if dc.benchmark == "coin-mini":  # check what mcit generated, in the same layout
        root = coin_mini_root(dc, cfg.seed)
        if not (root / "meta.json").is_file():
            raise UserError(f"coin-mini has not been generated yet at {root}; `mcit run` generates it")
        report = check_release(root / dc.instruction_set, root / "images", list(dc.tasks or coin_mini.TASKS))
    else:
        report = check_stream_config(dc)
    print(report.format())
    print("ok" if report.ok else f"{len(report.problems)} problem(s)")
    return 0 if report.ok else 1


def _config_path(config: str | None) -> Path:
    path = Path(config) if config else DEFAULT_CONFIG
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcit", description="Continual instruction tuning of multimodal LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a model on a stream of tasks and report forgetting",
                         description="Run a continual-tuning job. Without CONFIG, runs the built-in default "
                                     "(coin-mini, tiny LLaVA, sequential LoRA).")
    run.add_argument("config", nargs="?", help="YAML config (default: the built-in default.yaml)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 method.name=full")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run after its last completed stage")
    run.set_defaults(func=cmd_run)
    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate every file of the configured stream before training",
                            description="Report every problem (file, record, field) at once; exit 1 if any.")
    check.add_argument("config", nargs="?", help="YAML config (default: the built-in default.yaml)")
    check.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/CoIN")
    check.set_defaults(func=cmd_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `mcit run key=value` (no config file): argparse would take the override as CONFIG.
    head = 2 if argv[:2] == ["data", "check"] else 1
    if len(argv) > head and "=" in argv[head] and not argv[head].endswith((".yaml", ".yml")):
        argv = [*argv[:head], str(DEFAULT_CONFIG), *argv[head:]]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # checkpoints are local folders, never downloads
    # PEFT still calls a transformers property deprecated in v5; the warning says nothing to users.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
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
