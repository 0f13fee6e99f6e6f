"""`mcit` command line: `mcit run [CONFIG.yaml] [key=value ...]`, `mcit compare`, `mcit judge RUN_DIR`,
`mcit emt MODEL_OR_RUN_STAGE`, `mcit data check`, `mcit base-model`,
`mcit ls`, `mcit show`, `mcit diff`, `mcit report`, `mcit config show`, `mcit export`."""
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
    if args.resume:
        from .resume import check_resumable, finished_message

        run_dir = Path(args.resume)
        if args.config or args.overrides:
            raise UserError("--resume continues a run with its own saved config; give no config or overrides")
        state = check_resumable(run_dir)  # the whole folder, before anything is written
        if state.finished:  # exit 0: what was asked for is there; its results are never rewritten
            print(f"mcit: {finished_message(run_dir, state)}")
            return 0
        cfg = state.cfg
        cfg.output_dir, cfg.name = str(run_dir.parent), run_dir.name
    else:
        cfg = load_checked_config(args.config, args.overrides)
    if args.processes != 1:
        return _run_as_processes(args, cfg)
    from .train import run_stream  # torch, transformers, PEFT: only once everything above passed

    run_stream(cfg, resume=bool(args.resume))
    return 0


def _run_as_processes(args, cfg) -> int:
    """`--processes N`: the checked run started as N data-parallel processes (mcit.launch)."""
    from .launch import check_processes, run_processes
    from .threads import usable_cores

    check_processes(args.processes, cfg.train.batch_size)
    run_args = ["--resume", args.resume] if args.resume else [*([args.config] if args.config else []), *args.overrides]
    return run_processes(args.processes, run_args, len(usable_cores()))


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
    from .data.check import check_data

    cfg = load_checked_config(args.config, args.overrides)
    report = check_data(cfg.data, cfg.data_seed)  # a generated benchmark: what mcit generated, same checks
    print(report.format())
    print("ok" if report.ok else f"{len(report.problems)} problem(s)")
    if not report.ok:  # the report is on stdout; say on stderr too that the check failed
        print(f"mcit: error: the data check found {len(report.problems)} problem(s), listed above", file=sys.stderr)
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
    if cfg.judge.cache and not any(o.startswith("judge.cache=") for o in overrides) \
            and not Path(cfg.judge.cache).resolve().is_relative_to(run_dir.resolve()):
        # a run folder is untrusted input: a cache file outside it is used only when given here
        raise UserError(f"judge: {saved} sets judge.cache={cfg.judge.cache}, outside the run folder; give "
                        "judge.cache=PATH on this command line to use it, or judge.cache=null for the run's own")
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
    from .compare import compare, grid_points, parse_list

    methods = parse_list(args.methods, "methods")
    seeds = parse_list(args.seeds, "seeds", int)
    points = grid_points(args.vary, "vary")
    out = output_folder(args.out, "--out")
    for method in methods:  # every run's config checked before the first (long) run and before torch
        for point in points:
            load_checked_config(args.config, [*args.overrides, f"method.name={method}", *point])
    compare(_config_path(args.config), args.overrides, methods, seeds, out, vary=args.vary)
    return 0


def cmd_tune(args) -> int:
    from .compare import parse_list, tune

    seeds = parse_list(args.seeds, "seeds", int)
    out = output_folder(args.out, "--out")
    load_checked_config(args.config, [*args.overrides, f"method.name={args.method}"])  # the grid: by tune()
    tune(_config_path(args.config), args.overrides, args.method, args.grid, seeds, out, args.select)
    return 0


def cmd_base_model(args) -> int:
    """Build the built-in model's base stage from nothing into --out; with --check, compare it bit for
    bit with the shipped one (or --against's); exit 1 if any file differs."""
    from .recipes.shipped_base import ASSET, differences, read_manifest

    cfg = load_checked_config(args.config, args.overrides)
    if cfg.model.name != "tiny-llava":
        raise UserError(f"model.name={cfg.model.name}: `mcit base-model` builds the built-in tiny-llava's base model")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder (nothing is overwritten)")
    reference = Path(args.against) if args.against else ASSET
    manifest = read_manifest(reference) if args.check else None
    if args.check and manifest is None:
        raise UserError(f"--check: {reference / 'manifest.json'} is missing or not JSON")
    from .recipes.base_model import base_stage_key, build_base_model

    key = base_stage_key(cfg.model, cfg.data, cfg.data_seed)
    if manifest is not None and manifest.get("key") != key:
        raise UserError(f"--check: {reference} was built for base-stage key {manifest.get('key')}, these settings "
                        f"give {key}: compare the settings it was built with (the defaults for the shipped one)")
    from .threads import thread_cap, usable_cores

    # as a run's auto threads: the usable cores, or fewer if OMP_NUM_THREADS says so
    threads = args.threads or (manifest or {}).get("built_with", {}).get("threads") or thread_cap(len(usable_cores()))
    build_base_model(cfg, out, threads)
    print(f"mcit: base model (key {key}) written to {out}, manifest {out / 'manifest.json'}")
    if manifest is None:
        return 0
    differ = differences(out, manifest)
    if differ:
        print(f"mcit: {len(differ)} file(s) differ from {reference}: {', '.join(differ)} (built on "
              f"{manifest.get('built_with', {}).get('cpu', '?')}; other CPUs round some matmuls differently)")
        return 1
    print(f"mcit: bit for bit the same as {reference} ({len(manifest['files'])} files)")
    return 0


def cmd_ls(args) -> int:
    from .report.browse import ls

    print(ls(args.dir))
    return 0


def cmd_show(args) -> int:
    from .report.browse import show

    if args.answers < 0:
        raise UserError(f"show: --answers must be >= 0, got {args.answers}")
    print(show(args.run, per_task=args.answers))
    return 0


def cmd_diff(args) -> int:
    from .report.browse import diff

    print(diff(args.run_a, args.run_b))
    return 0


def cmd_report(args) -> int:
    from .report.html import write_report

    print(f"wrote {write_report(args.target, args.out)}")
    return 0


def cmd_config_show(args) -> int:
    """The resolved config with every key's help text, as a run would save it."""
    from .config import config_hash, config_to_yaml, load_config

    cfg = load_config(_config_path(args.config), list(args.overrides))  # main() moved a leading key=value here
    print(config_to_yaml(cfg, header=f"resolved mcit configuration (config hash {config_hash(cfg)})"), end="")
    return 0


def cmd_export(args) -> int:
    from .export import export_stage

    export_stage(args.run, args.merge, stage=args.stage, base_model=args.base_model)
    return 0


def _config_path(config: str | Path | None) -> Path:
    path = Path(config) if config else DEFAULT_CONFIG
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    return path


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors never echo a secret (`mcit run --api-key sk-...` is unrecognized)
    and suggest the closest verb for a mistyped one (Python 3.11's argparse has no such hint); the
    sub-parsers are of this class too (add_subparsers' default parser_class)."""

    def error(self, message: str):
        import difflib

        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            choices = re.findall(r"'([^']*)'", bad.group(2))
            close = difflib.get_close_matches(bad.group(1), choices, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(redact_message(message, _current_argv))


_current_argv: list[str] = []  # the argv main() parses: what a usage error may have to mask


def _add_sweep_args(parser: argparse.ArgumentParser, out: str) -> None:
    """CONFIG, overrides, --seeds and --out: compare and tune both sweep runs of one config over seeds into a folder."""
    parser.add_argument("config", nargs="?", help="YAML config (default: the built-in default.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--out", default=out, help=f"output folder (default: ./{out})")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="mcit", description="Continual instruction tuning of multimodal LLMs.")
    parser.add_argument("--version", action="version", version=f"mcit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a model on a stream of tasks and report forgetting",
                         description="Run a continual-tuning job. Without CONFIG, runs the built-in default "
                                     "(coin-mini, tiny LLaVA, sequential LoRA).")
    run.add_argument("config", nargs="?", help="YAML config (default: the built-in default.yaml)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 method.name=full")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run after its last completed stage")
    run.add_argument("--processes", type=int, default=1, metavar="N",
                     help="train and evaluate as N data-parallel processes on this machine (torch's launcher; gloo on "
                          "CPU): on a CPU shared with a busy process, 2 lose far less than 1 (float rounding differs "
                          "from one process: compare methods within one layout). Default: 1")
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
    comp.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                      help="a study of one setting: each method at each value (repeat for a product), e.g. "
                           "--vary data.instruction_set=Original,Diverse,10Type; a row per method and value")
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
    emt.add_argument("--probe-train", type=int, default=1000,  # mcit.emt.evaluate.PROBE_TRAIN (parser stays light)
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
    base = sub.add_parser("base-model", help="build the built-in model's base stage from nothing; check it against "
                                             "the shipped one",
                          description="Train the tiny LLaVA's base stage (vision encoder, alignment) for CONFIG's "
                                      "model and data settings into --out, with a manifest of SHA-256 digests. "
                                      "With --check, compare bit for bit with the base model shipped with mcit "
                                      "(or --against FOLDER); exit 1 if a file differs.")
    base.add_argument("config", nargs="?", help="YAML config (default: the built-in default.yaml)")
    base.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.base_steps=500")
    base.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new or empty)")
    base.add_argument("--check", action="store_true", help="compare with the shipped base model, file by file")
    base.add_argument("--against", metavar="FOLDER", help="with --check: a base-model folder with a manifest.json "
                                                         "(default: the one shipped with mcit)")
    base.add_argument("--threads", type=int, help="torch threads, fixed for the whole build (default: with --check "
                                                  "the reference's, else every usable core); some kernels round "
                                                  "differently at another count")
    base.set_defaults(func=cmd_base_model)
    _add_browse_parsers(sub)
    return parser


def _add_browse_parsers(sub) -> None:
    """ls, show, diff, config show, export: looking at runs and taking a model out of one."""
    ls = sub.add_parser("ls", help="one line per run folder: method, tasks, status, MFT/MFN/BWT in both views, time",
                        description="List the run folders under DIR (also those inside compare and tune folders).")
    ls.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="folder to search (default: ./runs)")
    ls.set_defaults(func=cmd_ls)
    show = sub.add_parser("show", help="one run: config changes, matrices, metrics, baselines, sample answers",
                          description="The config's differences from the defaults, both matrices with their "
                                      "metrics, per-task baselines, the tasks forgotten most and a few right and "
                                      "wrong answers per task of the last stage.")
    show.add_argument("run", metavar="RUN", help="a run folder")
    show.add_argument("--answers", type=int, default=2, help="right and wrong answers shown per task (default: 2)")
    show.set_defaults(func=cmd_show)
    diff = sub.add_parser("diff", help="two runs: config differences, metric and matrix deltas",
                          description="Config differences (A -> B) and B - A of every metric and matrix cell.")
    diff.add_argument("run_a", metavar="RUN_A", help="a run folder")
    diff.add_argument("run_b", metavar="RUN_B", help="another run folder")
    diff.set_defaults(func=cmd_diff)
    report = sub.add_parser("report", help="one self-contained HTML page of a run or a comparison",
                            description="Metrics, heatmaps, matrices, sample answers, config and environment of "
                                        "a run (or the mean ± std table and charts of a compare folder) in one "
                                        "HTML file that needs no network: styles inline, images as data URIs.")
    report.add_argument("target", metavar="RUN|COMPARE_DIR", help="a run folder or a `mcit compare` folder")
    report.add_argument("-o", "--out", metavar="FILE", help="where to write (default: <folder>/report.html)")
    report.set_defaults(func=cmd_report)
    config = sub.add_parser("config", help="configuration utilities").add_subparsers(dest="config_command", required=True)
    cshow = config.add_parser("show", help="print the resolved config, every key with its help text",
                              description="The config a run would use (CONFIG, default the built-in one, with the "
                                          "overrides applied), every key commented.")
    cshow.add_argument("config", nargs="?", help="YAML config (default: the built-in default.yaml)")
    cshow.add_argument("overrides", nargs="*", help="dotted overrides, e.g. method.name=moelora")
    cshow.set_defaults(func=cmd_config_show)
    export = sub.add_parser("export", help="write a stage as a standalone Hugging Face model (adapters merged)",
                            description="Rebuild a completed stage (base model + the stage's weights), merge its "
                                        "adapters and projector into the weights and save model and processor "
                                        "with save_pretrained: it loads with transformers alone. Merges lora, "
                                        "multitask, olora, single-expert moelora, projector and full stages.")
    export.add_argument("run", metavar="RUN", help="a run folder")
    export.add_argument("--merge", required=True, metavar="OUT", help="the folder to write (must not exist)")
    export.add_argument("--stage", type=int, help="1-based stage to export (default: the last completed one)")
    export.add_argument("--base-model", help="the base model's folder, if it is no longer where the run found it")
    export.set_defaults(func=cmd_export)


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # `key.sub=value`, not a path (data.benchmark=my.yaml is one)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _current_argv[:] = argv
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
    # `mcit run [--option ...] key=value` with no config file, and the same for every command taking
    # CONFIG (compare, tune, data check, base-model, config show): argparse took the override as CONFIG.
    if getattr(args, "config", None) and _OVERRIDE.match(args.config):
        args.config, args.overrides = None, [args.config, *args.overrides]
    try:
        code = args.func(args)
        if "torch.distributed" in sys.modules:  # never imported: no process group, and no torch import to ask
            from .distributed import end_process_group

            end_process_group()  # only after the command returned: a rank that raised may leave others in a collective
        return code
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
