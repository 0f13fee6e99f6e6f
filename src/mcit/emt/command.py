"""``mcit emt MODEL_OR_RUN_STAGE --datasets ...``: one model evaluated as an image classifier
against its own vision encoder.

The target is a local checkpoint folder (anything ``load_checkpoint`` opens) or a stage folder
of a run (``<run>/stages/NN-<task>``): the model is then rebuilt as the run built it (the run's
config.yaml, the base checkpoint named in its environment.json, the method's ``setup`` and the
stage's saved weights through :func:`mcit.rundir.restore_stage`). ``00-base`` is the base model.

Writes into the output folder: ``emt.json`` (every number with its protocol), ``emt.md`` (the
table) and ``answers/<dataset>.jsonl`` (every answer with its outcome; with a judge decider
(``--decider openai|local``, :mod:`mcit.emt.judge_decider`) also the judge's reply).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError
from ..io import atomic_write_text
from ..rundir import RunError, load_json, save_json
from .datasets import load_dataset
from .decide import JUDGE_UNPARSABLE
from .evaluate import JUDGE_DECIDERS, PROBE_TRAIN, ask, check_decider, encoder_baseline, parse_specs, prepare, protocol
from ..eval.judge import CACHE_FILE, JudgeCache
from ..eval.judge_backends import check_judge_config
from .judge_decider import JudgeDecider, build_judge_decider

__all__ = ["check_target", "default_out", "format_table", "is_run_stage", "load_target", "run_emt",
           "target_checkpoint"]


def is_run_stage(path: Path) -> bool:
    return path.parent.name == "stages" and (path.parent.parent / "config.yaml").is_file()


def default_out(target: Path) -> Path:
    """A stage's results go beside its model; a checkpoint's into ./emt/<folder name>."""
    return target / "emt" if is_run_stage(target) else Path("emt") / (target.resolve().name or "model")


def target_checkpoint(path: Path) -> tuple[Path, str, Any]:
    """(checkpoint folder, the name its errors go by, the run's config or None) behind a target:
    the folder itself, or a run stage's base checkpoint (environment.json). Loads nothing."""
    path = Path(path)
    if not is_run_stage(path):
        if (path / "config.yaml").is_file() and (path / "stages").is_dir():
            stages = sorted(p.name for p in (path / "stages").iterdir() if p.is_dir())
            raise ConfigError(f"{path} is a run folder; give one of its stages: {', '.join(stages) or '(none yet)'} "
                              f"(e.g. {path / 'stages' / (stages[-1] if stages else '01-<task>')})")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is neither a checkpoint folder (no config.json) nor a run's stage folder "
                              "(<run>/stages/NN-<task>)")
        return path, "emt", None

    from ..config import load_config

    run_dir = path.parent.parent
    cfg = load_config(run_dir / "config.yaml", [])
    try:
        base = Path(load_json(run_dir / "environment.json")["checkpoint"])
    except (OSError, KeyError, TypeError):
        raise RunError(f"{run_dir}/environment.json does not name the run's base checkpoint") from None
    if not (base / "config.json").is_file():
        raise RunError(f"the run's base checkpoint {base} (from environment.json) is not there any more; "
                       "rebuild it (the same config under the same MCIT_CACHE) or evaluate a checkpoint folder")
    return base, "emt: the run's base checkpoint", cfg


def check_target(path: Path) -> None:
    """The checkpoint behind a target checked (every problem at once) without loading anything."""
    from ..models.folder_check import MLLM, check_model_folder

    folder, label, _ = target_checkpoint(path)
    check_model_folder(folder, MLLM, label)


def load_target(path: Path) -> tuple[Any, Any, dict]:
    """(model, processor, description) for a checkpoint folder or a run's stage folder."""
    from ..methods import build_method
    from ..models.load import load_checkpoint
    from ..rundir import restore_stage

    path = Path(path)
    base, label, cfg = target_checkpoint(path)
    if cfg is None:
        model, processor = load_checkpoint(path, label=label)  # the folder is checked before it loads
        return model, processor, {"kind": "checkpoint", "path": str(path)}
    info = {"kind": "run-stage", "path": str(path), "run": str(path.parent.parent), "base_checkpoint": str(base),
            "method": cfg.method.name, "stage": path.name}
    model, processor = load_checkpoint(base, cfg.model.dtype, label=label)
    if (path / "model").is_dir():
        method = build_method(cfg.method)
        model = method.setup(model, cfg)
        restore_stage(method, model, path)
    elif not path.name.startswith("00-"):
        raise RunError(f"{path} has no saved model (model/); was the stage finished?")
    return model, processor, info


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "_"


def run_emt(target: str | Path, specs: list[str], *, limit: int | None = 100, probe_train: int | None = PROBE_TRAIN,
            out: str | Path | None = None, decider: str = "rule", judge_cfg=None, batch_size: int = 32,
            max_new_tokens: int = 24, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Evaluate ``target`` on every set of ``specs``; write the results; return the record.

    A judge decider ("openai", "local") is configured by ``judge_cfg`` (a JudgeConfig)."""
    check_decider(decider)
    parsed = parse_specs(specs)  # every spec checked before the model is loaded
    if not parsed:
        raise ConfigError("give at least one dataset (--datasets digits,coin-shapes,...)")
    if decider in JUDGE_DECIDERS:
        if judge_cfg is None:
            raise ConfigError(f"the {decider} decider needs judge settings (judge.model=...)")
        check_judge_config(dataclasses.replace(judge_cfg, backend=decider))  # settings first, then folders
    check_target(Path(target))  # a damaged checkpoint is refused before any model (a local judge's too) loads
    judge = build_judge_decider(judge_cfg, decider) if decider in JUDGE_DECIDERS else None
    try:
        return _run(Path(target), parsed, judge, limit=limit, probe_train=probe_train, out=out, decider=decider,
                    batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed, log=log)
    finally:
        if judge is not None:
            judge.close()


def _run(target: Path, parsed: list, judge: JudgeDecider | None, *, limit, probe_train, out, decider, batch_size,
         max_new_tokens, seed, log) -> dict:
    import torch

    proto = protocol(decider, max_new_tokens, judge)
    out = Path(out) if out is not None else default_out(target)
    if judge is not None:  # deciding the same answers again (a re-run, another --limit) asks nothing twice
        judge.cache = JudgeCache(out / CACHE_FILE)
    # Every set is read (its images decoded) before the model loads: a damaged image in the second set is
    # refused before the first set's answers are written.
    sets = [(prepare(spec, limit, seed),
             # the probe may learn from more train images than are asked (the test split stays the same)
             load_dataset(spec, limit=probe_train, seed=seed) if probe_train != limit else None) for spec in parsed]
    model, processor, info = load_target(target)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)

    results: dict[str, dict] = {}
    for prepared, train in sets:
        summary, records = ask(model, processor, prepared, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               decider=decider, judge=judge, device=device)
        baseline = encoder_baseline(model, processor, prepared.dataset, train, seed=seed, batch_size=batch_size)
        probe_acc = baseline["probe"]["accuracy"]
        answers_file = Path("answers") / f"{_file_name(prepared.name)}.jsonl"
        atomic_write_text(out / answers_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        results[prepared.name] = {
            "source": prepared.dataset.source, "classes": list(prepared.dataset.classes),
            "noun": prepared.dataset.noun, "question": prepared.prompt, "n_test": len(prepared.samples),
            "mllm": summary, **baseline,
            "gap": None if probe_acc is None else probe_acc - summary["accuracy"],
            "answers": str(answers_file),
        }
        log(f"{prepared.name}: MLLM {summary['accuracy']:.1f} ({decider})  probe "
            + ("-" if probe_acc is None else f"{probe_acc:.1f}"))
        unusable = summary["hallucination_reasons"][JUDGE_UNPARSABLE]
        if unusable:  # counted as hallucinated, never correct: say so
            log(f"{prepared.name}: {unusable} of {summary['n']} answers got no usable judge reply "
                f"(counted hallucinated, reason {JUDGE_UNPARSABLE}; see {out / answers_file})")

    if judge is not None:
        log(f"judge: {judge.hits} replies from {out / CACHE_FILE}, {judge.backend.calls} asked")
    record = {"model": info, "protocol": proto, "seed": seed, "limit": limit, "probe_train": probe_train,
              "datasets": results}
    save_json(out / "emt.json", record)
    atomic_write_text(out / "emt.md", to_markdown(record))
    log(format_table(record))
    log(f"written: {out / 'emt.json'}, {out / 'emt.md'}, {out / 'answers'}/")
    return record


def _f(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


_COLUMNS = ("dataset", "n", "MLLM acc", "correct", "wrong label", "hallucinated", "probe acc", "zero-shot", "gap")


def _rows(record: dict) -> list[list[str]]:
    rows = []
    for name, r in record["datasets"].items():
        s = r["mllm"]["shares"]
        rows.append([name, str(r["n_test"]), _f(r["mllm"]["accuracy"]), _f(s["correct"]), _f(s["wrong_label"]),
                     _f(s["hallucinated"]), _f(r["probe"]["accuracy"]), _f(r["zero_shot"]), _f(r["gap"])])
    return rows


def format_table(record: dict) -> str:
    """Plain-text table: MLLM accuracy and outcome shares vs the encoder's probe (gap = probe - MLLM)."""
    rows = _rows(record)
    widths = [max(len(c), *(len(r[k]) for r in rows)) for k, c in enumerate(_COLUMNS)]
    line = lambda cells: "  ".join(c.ljust(w) if k == 0 else c.rjust(w)  # noqa: E731
                                   for k, (c, w) in enumerate(zip(cells, widths)))
    head = line(_COLUMNS)
    title = (f"EMT: MLLM vs its vision encoder (decider: {record['protocol']['decider']}; shares in %; "
             "gap = probe - MLLM)")
    return "\n".join([title, head, "-" * len(head), *(line(r) for r in rows)])


def to_markdown(record: dict) -> str:
    p = record["protocol"]
    if "judge" in p:  # a judge decider: which model decided (never a key)
        j = p["judge"] or {}
        detail = f"judge {j.get('backend', '?')} `{j.get('model', '?')}`" + (
            f" at {j['base_url']}" if j.get("base_url") else "")
    else:
        extra = "any" if p["max_extra_words"] is None else p["max_extra_words"]
        detail = f"extra words allowed beside the label: {extra}"
    lines = [
        f"# EMT: {record['model']['path']}", "",
        f"Protocol: decider `{p['decider']}` ({p['decider_impl']}; {detail}), "
        f"greedy decoding, at most {p['generation']['max_new_tokens']} new tokens, question "
        f"`{p['question_template']}`. Numbers from another protocol (the paper's LLM judge) are not comparable.",
        "",
        "Encoder baseline: logistic-regression probe on the vision tower's mean-pooled patch features "
        f"(up to {record['probe_train']} train images per set); zero-shot needs a text tower (None for LLaVA).",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|---|" + "---:|" * (len(_COLUMNS) - 1),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(record)]
    return "\n".join(lines) + "\n"
