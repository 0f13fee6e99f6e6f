"""`mcit` command line: `mcit run [CONFIG.yaml] [key=value ...]`, `mcit compare`, `mcit judge RUN_DIR`,
`mcit emt MODEL_OR_RUN_STAGE`, `mcit data check`."""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path

from .errors import USER_ERRORS, UserError  # noqa: F401 - UserError stays importable from mcit.cli
from .preflight import output_folder
from .redact import redact_message

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def cmd_run(args) -> int:
    # Everything a user can get wrong is read and checked before torch, transformers and PEFT are
    # imported (mcit.train imports them): a typo is answered in a fraction of a second.
    cfg = _resume_config(Path(args.resume), args) if args.resume else load_checked_config(args.config, args.overrides)
    from .train import run_stream

    run_stream(cfg, resume=bool(args.resume))
    return 0


def _resume_config(run_dir: Path, args):
    if args.config or args.overrides:
        raise UserError("--resume continues a run with its own saved config; give no config or overrides")
    if not (run_dir / "config.yaml").is_file():
        if run_dir.is_dir():  # also a run stopped during start-up, before its config was written
            raise UserError(f"--resume: {run_dir} has no config.yaml: not a run folder, or a run stopped before "
                            "it started; rerun the original `mcit run` command (same name) to start it anew")
        raise UserError(f"--resume: {run_dir} is not a run folder (no config.yaml)")
    cfg = load_checked_config(run_dir / "config.yaml", [])
    cfg.output_dir, cfg.name = str(run_dir.parent), run_dir.name
    return cfg


def load_checked_config(config: str | Path | None, overrides: list[str]):
    """The run's config, every section checked as `mcit run` will use it (the judge's included), so a
    bad setting stops the command before any heavy import or work. Light imports only."""
    from .config import load_config
    from .preflight import check_run_settings

    cfg = load_config(_config_path(config), overrides)
    check_run_settings(cfg)
    return cfg


def cmd_data_check(args) -> int:
    """Validate every file of a stream; print counts and every problem; exit 1 on problems."""
    from .config import load_config
    from .data.check import check_release, check_stream_config
    from .data.benchmark import load_benchmark
    from .data.release import resolve_instruction_set
    from .data.stream import coin_mini_root, stream_order

    cfg = load_config(_config_path(args.config), args.overrides)
    dc = cfg.data
    if load_benchmark(dc.benchmark).generator:  # check what mcit generated, in the same layout
        root = coin_mini_root(dc, cfg.data_seed)
        if not (root / "meta.json").is_file():
            raise UserError(f"{dc.benchmark} has not been generated yet at {root}; `mcit run` generates it")
        report = check_release(resolve_instruction_set(root, dc.instruction_set), root / "images", stream_order(dc, seed=0))
    else:
        report = check_stream_config(dc)
    print(report.format())
    print("ok" if report.ok else f"{len(report.problems)} problem(s)")
    return 0 if report.ok else 1


def cmd_judge(args) -> int:
    """Re-score a run's saved predictions with the General Knowledge judge (no model needed)."""
    from .config import load_config
    from .eval.judge import judge_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"judge: {run_dir} is not a folder" if run_dir.exists() else f"judge: run folder not found: {run_dir}")
    overrides = [_judge_override(o) for o in args.overrides]
    if args.backend:
        overrides.append(f"judge.backend={args.backend}")
    saved = run_dir / "config.yaml"  # the run's own judge settings, if it has any
    cfg = load_config(saved if saved.is_file() else None, overrides)
    if cfg.judge.backend == "none":
        raise UserError("judge: judge.backend is 'none'; choose embedding, openai or local (--backend)")
    judge_run(run_dir, cfg.judge)
    return 0


def _judge_override(text: str) -> str:
    """`model=x` and `judge.model=x` both mean judge.model; other sections are refused."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"judge: malformed override {text!r}: expected key=value, e.g. judge.model=NAME")
    leaf = key[len("judge."):] if key.startswith("judge.") else key
    if "." in leaf:
        raise UserError(f"judge: only judge.* settings can be changed here, not {key!r}")
    if leaf == "api_key":  # never echo what follows: it would be the secret itself
        raise UserError("judge.api_key: the API key is not taken from the command line or a file; "
                        "put it in the environment variable named by judge.api_key_env (default MCIT_JUDGE_API_KEY)")
    return f"judge.{leaf}={value}"


def cmd_emt(args) -> int:
    """EMT: the MLLM as an image classifier vs its own vision encoder (mcit.emt.command)."""
    from .emt.command import run_emt

    target = Path(args.target)
    if not target.is_dir():
        raise UserError(f"emt: {target} is not a folder" if target.exists() else f"emt: folder not found: {target}")
    for name, value in (("--limit", args.limit), ("--probe-train", args.probe_train),
                        ("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise UserError(f"emt: {name} must be at least 1, got {value}")
    specs = [s.strip() for s in args.datasets.split(",") if s.strip()]
    if not specs:
        raise UserError("emt: --datasets: give a comma-separated list, e.g. digits,coin-shapes")
    if args.out:
        output_folder(args.out, "emt: --out")
    run_emt(target, specs, limit=args.limit, probe_train=args.probe_train, out=args.out, decider=args.decider,
            judge_cfg=_emt_judge_config(args.decider, args.overrides), batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, seed=args.seed)
    return 0


def _emt_judge_config(decider: str, overrides: list[str]):
    """The judge settings of a judge decider (judge.* overrides on the defaults); None for a rule."""
    from .config import load_config
    from .emt.evaluate import JUDGE_DECIDERS

    parsed = [_judge_override(o) for o in overrides]
    if decider not in JUDGE_DECIDERS:
        if parsed:
            raise UserError(f"emt: judge.* settings only apply to a judge decider (--decider "
                            f"{' or '.join(JUDGE_DECIDERS)}), not --decider {decider}")
        return None
    return load_config(None, [*parsed, f"judge.backend={decider}"]).judge


def cmd_compare(args) -> int:
    from .compare import compare, parse_list

    methods = parse_list(args.methods, "methods")
    seeds = parse_list(args.seeds, "seeds", int)
    out = output_folder(args.out, "--out")
    for method in methods:  # every run's config checked before the first (long) run and before torch
        load_checked_config(args.config, [*args.overrides, f"method.name={method}"])
    compare(_config_path(args.config), args.overrides, methods, seeds, out)
    return 0


def cmd_tune(args) -> int:
    from .compare import parse_list, tune

    seeds = parse_list(args.seeds, "seeds", int)
    out = output_folder(args.out, "--out")
    load_checked_config(args.config, [*args.overrides, f"method.name={args.method}"])  # the grid: by tune()
    tune(_config_path(args.config), args.overrides, args.method, args.grid, seeds, out, args.select)
    return 0


def _config_path(config: str | Path | None) -> Path:
    path = Path(config) if config else DEFAULT_CONFIG
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    return path


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors never echo a secret (`mcit run --api-key sk-...` is unrecognized);
    the sub-parsers are of this class too (add_subparsers' default parser_class)."""

    def error(self, message: str):
        super().error(redact_message(message, _current_argv))


_current_argv: list[str] = []  # the argv main() parses: what a usage error may have to mask


def _add_sweep_args(parser: argparse.ArgumentParser, out: str) -> None:
    """CONFIG, overrides, --seeds and --out: compare and tune both sweep runs of one config over seeds into a folder."""
    parser.add_argument("config", nargs="?", help="YAML config (default: the built-in default.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--out", default=out, help=f"output folder (default: ./{out})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mcit", description="Continual instruction tuning of multimodal LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a model on a stream of tasks and report forgetting",
                         description="Run a continual-tuning job. Without CONFIG, runs the built-in default "
                                     "(coin-mini, tiny LLaVA, sequential LoRA).")
    run.add_argument("config", nargs="?", help="YAML config (default: the built-in default.yaml)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 method.name=full")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run after its last completed stage")
    run.set_defaults(func=cmd_run)
    judge = sub.add_parser("judge", help="score a run's saved predictions with the General Knowledge judge",
                           description="Re-score RUN_DIR's saved predictions with a judge (no model is loaded) "
                                       "and write matrix_gk.* and metrics_gk.json. Settings: the run's own "
                                       "judge section, then --backend, then judge.* overrides.")
    judge.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `mcit run`")
    judge.add_argument("overrides", nargs="*", help="judge settings, e.g. judge.model=NAME base_url=http://host:8000/v1")
    judge.add_argument("--backend", choices=["embedding", "openai", "local"], help="the judge backend")
    judge.set_defaults(func=cmd_judge)
    comp = sub.add_parser("compare", help="run several methods over several seeds on the same stream; one table",
                          description="Every method on the same stream, data and budgets; mean ± std over seeds "
                                      "of MFT, MFN, MAA, BWT and Forgetting in both views. Finished runs are "
                                      "reused, interrupted ones resumed.")
    comp.add_argument("--methods", required=True, help="comma-separated method names, e.g. lora,ema,lcia")
    _add_sweep_args(comp, out="compare")
    comp.set_defaults(func=cmd_compare)
    tun = sub.add_parser("tune", help="a method's hyper-parameters over a grid; picks the best mean metric",
                         description="Run one method at every point of the grid (the product of the --grid "
                                     "lists) over seeds, on the same stream and base model; tune.md lists every "
                                     "point and the best by mean --select. Tune on a stream the comparison does "
                                     "not use (configs/tune_small.yaml).")
    tun.add_argument("--method", required=True, help="the method to tune, e.g. ema")
    tun.add_argument("--grid", action="append", required=True,
                     help="key=v1,v2,... (repeat for a product), e.g. --grid method.ema_weight=0.005,0.01,0.05")
    tun.add_argument("--select", default="MFN", help="metric to maximise, IF view (default: MFN, final accuracy)")
    _add_sweep_args(tun, out="tune")
    tun.set_defaults(func=cmd_tune)
    emt = sub.add_parser("emt", help="evaluate a model as an image classifier against its own vision encoder (EMT)",
                         description="Ask the MLLM for one label of each test image (the question lists the label "
                                     "set), decide every answer (correct / wrong label / hallucinated) and compare "
                                     "with a linear probe on its vision tower. Writes emt.json, emt.md and every "
                                     "answer (answers/<dataset>.jsonl).")
    emt.add_argument("target", metavar="MODEL_OR_RUN_STAGE",
                     help="a local checkpoint folder, or a run's stage folder <run>/stages/NN-<task>")
    emt.add_argument("--datasets", required=True,
                     help="comma-separated sets: digits, coin-shapes, coin-colors, coin-objects, or KIND:ROOT "
                          "for imagefolder, mnist, cifar10, cifar100 (e.g. mnist:/data/mnist)")
    emt.add_argument("--limit", type=int, default=100, help="test images per dataset (default: 100)")
    emt.add_argument("--probe-train", type=int, default=1000,
                     help="train images per dataset for the encoder's linear probe (default: 1000)")
    emt.add_argument("--out", help="output folder (default: <stage>/emt for a run stage, "
                                   "./emt/<name> for a checkpoint)")
    emt.add_argument("overrides", nargs="*",
                     help="judge settings of a judge decider, e.g. judge.model=NAME judge.base_url=http://host/v1")
    emt.add_argument("--decider", default="rule",
                     help="how answers are decided: 'rule' (default, strict: the label alone, in frame words), "
                          "'rule-lenient' (any answer naming exactly one label), both mcit.emt.decide; or an LLM "
                          "judge asked which label the answer gives (mcit.emt.judge_decider): 'openai' (an "
                          "OpenAI-compatible endpoint: judge.model, judge.base_url, key in $MCIT_JUDGE_API_KEY; "
                          "temperature 0) or 'local' (judge.model=a local causal-LM folder)")
    emt.add_argument("--batch-size", type=int, default=32, help="images per generation / feature batch (default: 32)")
    emt.add_argument("--max-new-tokens", type=int, default=24, help="answer length limit in tokens (default: 24)")
    emt.add_argument("--seed", type=int, default=0, help="seed of the dataset splits and the probe (default: 0)")
    emt.set_defaults(func=cmd_emt)
    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_command", required=True,
                                                                      metavar="{check}")
    check = data.add_parser("check", help="validate every file of the configured stream before training",
                            description="Report every problem (file, record, field) at once; exit 1 if any.")
    check.add_argument("config", nargs="?", help="YAML config (default: the built-in default.yaml)")
    check.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/CoIN")
    check.set_defaults(func=cmd_data_check)
    return parser


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # `key.sub=value`, not a path (data.benchmark=my.yaml is one)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _current_argv[:] = argv
    # `mcit run key=value` (no config file): argparse would take the override as CONFIG.
    head = 2 if argv[:2] == ["data", "check"] else 1
    if argv[:1] not in (["judge"], ["emt"]) and len(argv) > head and _OVERRIDE.match(argv[head]):
        argv = [*argv[:head], str(DEFAULT_CONFIG), *argv[head:]]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # checkpoints are local folders, never downloads
    # PEFT still calls a transformers property deprecated in v5; the warning says nothing to users.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `mcit judge RUN --backend openai model=x`, `mcit compare --methods a,b k=v`, `mcit emt M --decider
    # openai judge.model=x`: overrides after an option land in `extra`.
    if extra and args.command in ("judge", "compare", "tune", "emt") and not any(e.startswith("-") for e in extra):
        args.overrides, extra = [*args.overrides, *extra], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except USER_ERRORS as exc:  # the message never echoes a key given anywhere on the command line
        print(f"mcit: error: {redact_message(str(exc), argv)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a bug or the machine, keep the traceback
            raise
        print(f"mcit: error: {redact_message(_describe_os_error(exc), argv)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mcit: interrupted", file=sys.stderr)
        return 130


def _describe_os_error(exc: OSError) -> str:
    """"<path>: <reason>" of a file-system error (a folder that is a file, no permission, disk full)."""
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
    return f"{where}: {exc.strerror or type(exc).__name__}"


if __name__ == "__main__":
    sys.exit(main())
