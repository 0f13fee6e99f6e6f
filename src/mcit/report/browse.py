"""Browsing finished (and unfinished) run folders: `mcit ls`, `mcit show`, `mcit diff`.

Everything here reads what `mcit run` wrote (config.yaml, environment.json, metrics*.json,
matrix*.json, baselines.json, stages/*/done.json and predictions/*.jsonl); nothing is written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..compare import VIEW_METRICS
from ..rundir import (_LOCATION_KEYS, CONFIG_FILE, ENVIRONMENT_FILE, RunError, _differences, completed_stages,
                      is_stage_done, load_json)
from .matrix import format_table, load_matrix
from ..runstate import live_state

VIEWS = (("if", "instruction following", ""), ("gk", "general knowledge", "_gk"))  # key, title, file suffix
LS_METRICS = ("MFT", "MFN", "BWT")


@dataclass
class RunSummary:
    """What `mcit ls` shows of one run folder."""

    path: Path
    method: str
    tasks: list[str]
    status: str  # done, or running / stopped / failed / interrupted with k/n stages (mcit.runstate)
    stages_done: int
    stages_total: int
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # view -> metric -> value
    seconds: float | None = None
    error: str | None = None  # what an unfinished run stopped on, as it recorded it (state.json)


# --------------------------------------------------------------------------------- reading


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / ENVIRONMENT_FILE).is_file()


def find_runs(root: str | Path) -> list[Path]:
    """Every run folder at or under ``root`` (compare and tune folders hold theirs under runs/)."""
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"no such folder: {root}")
    if is_run_dir(root):
        return [root]
    found = {p.parent for p in root.rglob(CONFIG_FILE) if is_run_dir(p.parent)}
    # a run's own sub-folders (stages/...) never hold another run
    return sorted(p for p in found if not any(q in p.parents for q in found))


def require_run(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run folder not found: {path}")
    if not is_run_dir(path):
        raise RunError(f"{path} is not a run folder (no {CONFIG_FILE} and {ENVIRONMENT_FILE}; "
                       "`mcit ls` lists the run folders under a folder)")
    return path


def _read_json(path: Path) -> Any:
    """A JSON file's content, None if it is missing (RunError naming the file if malformed)."""
    return load_json(path) if path.is_file() else None


def read_config(run: Path) -> dict[str, Any]:
    """The run's resolved config as saved (a plain mapping; no newer default is filled in)."""
    path = run / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RunError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a mapping of settings")
    return data


def method_label(config: dict[str, Any]) -> str:
    """"lora", or "lora+replay+ewc" for a base with additions."""
    section = config.get("method") or {}
    return "+".join([str(section.get("name", "?")), *map(str, section.get("with") or [])])


def _view_metrics(metrics: dict | None) -> dict[str, float | None]:
    if not metrics:
        return {}
    if "multitask_mean" in metrics:  # the joint upper bound: its one row is its final accuracy
        return {"MFN": metrics["multitask_mean"]}
    return {k: metrics.get(k) for k in VIEW_METRICS}


def summarise(run: Path) -> RunSummary:
    config, env = read_config(run), load_json(run / ENVIRONMENT_FILE)
    stages = list(env.get("stages") or [])
    done = completed_stages(run, stages)
    metrics = _read_json(run / "metrics.json")
    state = None if metrics else live_state(run)
    status = "done" if metrics else _status(state, len(done), len(stages))
    seconds = (metrics or {}).get("seconds") or (done[-1].get("elapsed_seconds") if done else None)
    return RunSummary(path=run, method=method_label(config), tasks=list(env.get("tasks") or []), status=status,
                      stages_done=len(done), stages_total=len(stages), seconds=seconds,
                      error=(state or {}).get("error"),
                      metrics={"if": _view_metrics(metrics), "gk": _view_metrics(_read_json(run / "metrics_gk.json"))})


def _status(state: dict | None, done: int, total: int) -> str:
    """An unfinished run's status from its recorded state (mcit.runstate): running, stopped (its
    process died unannounced), failed, interrupted; or, for a folder written before runs recorded
    their state, partial (k of n stages) / failed."""
    if state is None or state.get("state") == "done":  # "done" without metrics.json: files were removed
        return f"partial {done}/{total}" if done else "failed"
    return f"{state['state']} {done}/{total}"


# --------------------------------------------------------------------------------- mcit ls


def format_number(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def _short_tasks(tasks: list[str], width: int = 32) -> str:
    text = ",".join(tasks)
    if len(text) <= width:
        return text or "-"
    shown = text[: width - 8].rsplit(",", 1)[0]
    return f"{shown},…(+{len(tasks) - shown.count(',') - 1})"


def format_ls(root: Path, summaries: list[RunSummary]) -> str:
    head = ["run", "method", "tasks", "status"] + [f"{m} {v.upper()}" for v, _, _ in VIEWS for m in LS_METRICS]
    rows = [head + ["time"]]
    for s in summaries:
        name = str(s.path.relative_to(root)) if s.path != root else s.path.name
        rows.append([name, s.method, _short_tasks(s.tasks), s.status]
                    + [format_number(s.metrics[v].get(m)) for v, _, _ in VIEWS for m in LS_METRICS]
                    + [format_duration(s.seconds)])
    widths = [max(len(r[c]) for r in rows) for c in range(len(head) + 1)]
    numeric = range(4, len(head) + 1)
    return "\n".join("  ".join(cell.rjust(w) if c in numeric else cell.ljust(w)
                               for c, (cell, w) in enumerate(zip(r, widths))).rstrip() for r in rows)


def ls(root: str | Path = "runs") -> str:
    root = Path(root)
    runs = find_runs(root)
    if not runs:
        return f"no run folders under {root}"
    return format_ls(root, [summarise(r) for r in runs])


# --------------------------------------------------------------------------------- mcit show


def default_config() -> dict[str, Any]:
    from ..config import config_to_dict, load_config

    return config_to_dict(load_config(None, []))


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """"key: a -> b" for every setting that differs, where the run is kept aside."""
    a, b = dict(a), dict(b)
    for key in _LOCATION_KEYS:
        a.pop(key, None)
        b.pop(key, None)
    return _differences(a, b)


def load_view(run: Path, suffix: str):
    """(tasks, matrix, zero_shot, metrics) of one view, the partial matrix of an unfinished run, or None."""
    for name in [f"matrix{suffix}.json"] + ([] if suffix else ["matrix_partial.json"]):
        if (run / name).is_file():
            try:
                return load_matrix(run / name)
            except (ValueError, json.JSONDecodeError) as exc:
                raise RunError(f"{run / name}: {exc}") from None
    return None


def most_forgotten(tasks: list[str], matrix: list[list[float | None]],
                   n: int = 3) -> list[tuple[str, float, float, float]]:
    """(task, best score before the last stage, final score, drop) of the tasks that lost most, largest
    drop first: the per-task terms of the Forgetting metric (mcit.metrics), drops > 0 only."""
    last = len(matrix) - 1
    drops = []
    for i, task in enumerate(tasks[:last]):
        earlier = [row[i] for row in matrix[i:last] if row[i] is not None]
        final = matrix[last][i]
        if earlier and final is not None and max(earlier) > final:
            drops.append((task, max(earlier), final, max(earlier) - final))
    return sorted(drops, key=lambda d: -d[3])[:n]


def baseline_table(run: Path, tasks: list[str], matrix, zero_shot) -> str:
    """Per task: the constant-answer baseline (the most frequent training answer), the base model,
    the score just after training the task and at the end."""
    baselines = _read_json(run / "baselines.json") or {}
    lines = ["| task | constant answer | its score | base model | after its stage | final |",
             "|---|---|---:|---:|---:|---:|"]
    for i, task in enumerate(tasks):
        b = baselines.get(task) or {}
        own = matrix[i][i] if i < len(matrix) else None
        final = matrix[-1][i] if matrix else None
        lines.append(f"| {task} | {b.get('constant_answer', '-')!s} | {format_number(b.get('score'))} | "
                     f"{format_number(zero_shot[i] if zero_shot else None)} | {format_number(own)} | "
                     f"{format_number(final)} |")
    return "\n".join(lines)


def _one_line(text: Any, width: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def last_stage_with_predictions(run: Path) -> Path | None:
    """The last completed stage (done.json written: its predictions are all there), or None."""
    stages = sorted(p for p in (run / "stages").glob("*") if (p / "predictions").is_dir() and is_stage_done(p))
    return stages[-1] if stages else None


def read_predictions(path: Path) -> list[dict]:
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RunError(f"{path}, line {n}: not valid JSON ({exc.msg})") from None
    return records


def sample_answers(run: Path, per_task: int = 2) -> dict[str, dict[str, list[dict]]]:
    """{task: {"right": [...], "wrong": [...]}}: the first answers of the last evaluated stage."""
    stage = last_stage_with_predictions(run)
    out: dict[str, dict[str, list[dict]]] = {}
    for path in sorted((stage / "predictions").glob("*.jsonl")) if stage else []:
        records = read_predictions(path)
        out[path.stem] = {"right": [r for r in records if (r.get("score") or 0) >= 0.5][:per_task],
                          "wrong": [r for r in records if (r.get("score") or 0) < 0.5][:per_task]}
    return out


def _format_answers(run: Path, per_task: int) -> list[str]:
    stage = last_stage_with_predictions(run)
    if stage is None:
        return []
    lines = ["", f"## answers after {stage.name} (right ✓ / wrong ✗)"]
    for task, groups in sample_answers(run, per_task).items():
        lines.append(f"{task}:")
        for mark, key in (("✓", "right"), ("✗", "wrong")):
            for r in groups[key]:
                lines.append(f"  {mark} {_one_line(r.get('text', ''), 60)} -> {_one_line(r.get('prediction', ''), 30)}"
                             f"   (expected {_one_line(' | '.join(map(str, r.get('answers') or [])), 30)})")
    return lines


def show(run: str | Path, per_task: int = 2) -> str:
    run = require_run(run)
    summary, config = summarise(run), read_config(run)
    env = load_json(run / ENVIRONMENT_FILE)
    lines = [f"run {run}",
             f"method {summary.method}   status {summary.status}   time {format_duration(summary.seconds)}",
             *([f"error {summary.error}"] if summary.error else []),
             f"tasks {', '.join(summary.tasks)}", f"base model {base_model_line(env)}", "",
             "## config (differences from the defaults)"]
    diffs = config_differences(default_config(), config)
    lines += [f"  {d}" for d in diffs] or ["  (none)"]
    main_view = None
    for key, title, suffix in VIEWS:
        view = load_view(run, suffix)
        if view is None:
            continue
        tasks, matrix, zero_shot, metrics = view
        main_view = main_view or view
        lines += ["", f"## {title}", format_table(tasks, matrix, metrics, zero_shot, title=None)]
    multitask = _read_json(run / "multitask.json")
    if multitask:
        lines += ["", "## multitask (upper bound)",
                  "  ".join(f"{t} {format_number(v)}" for t, v in multitask.get("scores", {}).items())]
    if main_view is not None:
        tasks, matrix, zero_shot, _ = main_view
        lines += ["", "## per-task baselines", baseline_table(run, tasks, matrix, zero_shot)]
        forgotten = most_forgotten(tasks, matrix)
        lines += ["", "## forgotten most (best before the last stage -> final)"]
        lines += [f"  {t}: {format_number(best)} -> {format_number(final)} (-{drop:.1f})"
                  for t, best, final, drop in forgotten] or ["  (none)"]
    lines += _format_answers(run, per_task)
    return "\n".join(lines)


def base_model_line(env: dict) -> str:
    base = env.get("base_model") or {}
    path = base.get("path") or env.get("checkpoint") or "?"
    return f"{path}" + (f" (sha256 {base['sha256'][:12]})" if base.get("sha256") else "")


# --------------------------------------------------------------------------------- mcit diff


def metric_deltas(a: dict[str, float | None], b: dict[str, float | None]) -> list[tuple]:
    """(metric, A, B, B - A) of every metric either run has; the delta None where one is missing."""
    keys = [k for k in VIEW_METRICS if k in a or k in b]
    return [(k, a.get(k), b.get(k), None if a.get(k) is None or b.get(k) is None else b[k] - a[k]) for k in keys]


def matrix_delta(a, b) -> list[list[float | None]]:
    return [[None if x is None or y is None else y - x for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]


def diff(run_a: str | Path, run_b: str | Path) -> str:
    a, b = require_run(run_a), require_run(run_b)
    sa, sb = summarise(a), summarise(b)
    lines = [f"A {a}  ({sa.method}, {sa.status})", f"B {b}  ({sb.method}, {sb.status})", "", "## config (A -> B)"]
    lines += [f"  {d}" for d in config_differences(read_config(a), read_config(b))] or ["  (same)"]
    for key, title, suffix in VIEWS:
        deltas = metric_deltas(sa.metrics[key], sb.metrics[key])
        if not any(x is not None or y is not None for _, x, y, _ in deltas):
            continue
        lines += ["", f"## {title}: metrics", "| metric | A | B | B - A |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {format_number(x, 2)} | {format_number(y, 2)} | {'-' if d is None else f'{d:+.2f}'} |"
                  for k, x, y, d in deltas]
        va, vb = load_view(a, suffix), load_view(b, suffix)
        if va is None or vb is None:
            continue
        if va[0] != vb[0]:
            lines.append(f"(matrices over different tasks: {', '.join(va[0])} vs {', '.join(vb[0])})")
            continue
        lines += ["", format_table(va[0], matrix_delta(va[1], vb[1]), {},
                                   None if va[2] is None or vb[2] is None else matrix_delta([va[2]], [vb[2]])[0],
                                   title=f"{title}: matrix B - A")]
    return "\n".join(lines)
