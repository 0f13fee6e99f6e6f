"""Saving, loading and showing an accuracy matrix with its metrics.

``save_matrix`` writes four views of one result next to each other in a run directory:
``<name>.json`` (the machine-readable record, read back by ``load_matrix``), ``<name>.csv``,
``<name>.md`` and ``<name>.png`` (a heatmap). Every file is written atomically.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mcit.errors import RunError
from mcit.eval.form_content import decide_record
from mcit.io import atomic_write_bytes, atomic_write_text
from mcit.metrics import (FORM_CONTENT_NAMES, METRIC_NAMES, as_matrix, compute_metrics, form_content_summary,
                          pool_form_content)
from mcit.rundir import BASE_STAGE, load_json, stage_dir

__all__ = ["figure_caption", "figure_title", "form_content_cells", "form_content_markdown", "form_content_pools",
           "format_table", "load_form_content", "load_matrix", "save_form_content", "save_matrix"]

MISSING = "-"


def _cells(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in matrix]


def _zero_shot_list(zero_shot: Any, T: int) -> list[float | None] | None:
    if zero_shot is None:
        return None
    values = list(zero_shot)
    if len(values) != T:
        raise ValueError(f"zero_shot has {len(values)} entries, expected {T}")
    out: list[float | None] = []
    for v in values:
        f = None if v is None else float(v)
        out.append(None if f is None or math.isnan(f) else f)
    return out


def _clean_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, v in metrics.items():
        f = None if v is None else float(v)
        out[key] = None if f is None or not math.isfinite(f) else f
    return out


def _check_tasks(tasks: Sequence[str], T: int) -> list[str]:
    tasks = [str(t) for t in tasks]
    if len(tasks) != T:
        raise ValueError(f"{len(tasks)} task names for a {T} x {T} matrix")
    return tasks


def _fmt(v: float | None, digits: int) -> str:
    return MISSING if v is None else f"{v:.{digits}f}"


def _metric_items(metrics: dict[str, float | None]) -> list[tuple[str, float | None]]:
    """Known metrics first in their usual order, then any extra keys."""
    keys = [k for k in METRIC_NAMES if k in metrics] + [k for k in metrics if k not in METRIC_NAMES]
    return [(k, metrics[k]) for k in keys]


# ---------------------------------------------------------------------------------- views


def _to_csv(tasks: list[str], cells: list[list[float | None]], zero_shot: list[float | None] | None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["stage", *tasks])

    def row(label: str, values: Sequence[float | None]) -> None:
        writer.writerow([label, *("" if v is None else repr(v) for v in values)])

    if zero_shot is not None:
        row("base", zero_shot)
    for task, values in zip(tasks, cells):
        row(task, values)
    return buf.getvalue()


def _md_escape(text: str) -> str:
    # Names come from run folders and configs: a pipe would break the table, a newline the row,
    # and HTML would be rendered by Markdown viewers.
    text = html.escape(" ".join(str(text).split()), quote=False)
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _to_markdown(
    tasks: list[str],
    cells: list[list[float | None]],
    zero_shot: list[float | None] | None,
    metrics: dict[str, float | None],
    title: str,
) -> str:
    lines = [f"# {title}", "", "Rows: after stage (task trained); columns: evaluated on.", ""]
    lines.append("| after stage | " + " | ".join(_md_escape(t) for t in tasks) + " |")
    lines.append("|---|" + "---:|" * len(tasks))
    rows = ([("base", zero_shot)] if zero_shot is not None else []) + list(zip(tasks, cells))
    for label, values in rows:
        lines.append(f"| {_md_escape(label)} | " + " | ".join(_fmt(v, 2) for v in values) + " |")
    lines += ["", "| metric | value |", "|---|---:|"]
    lines += [f"| {_md_escape(k)} | {_fmt(v, 2)} |" for k, v in _metric_items(metrics)]
    return "\n".join(lines) + "\n"


# What each saved matrix shows; a run's figure says it in its title (figure_title).
VIEWS = {
    "matrix": "instruction following",
    "matrix_partial": "instruction following (partial)",
    "matrix_gk": "general knowledge",
    "matrix_gk_official": "general knowledge, CoIN's official score",
}
CAPTION_METRICS = ("MFT", "MFN", "BWT")


def figure_title(run_dir: str | Path, name: str) -> str:
    """"<run> · <method> · <view> · <scoring mode>" read from the run folder's config.yaml, so a
    figure says what it shows on its own; just ``name`` outside a run folder."""
    from .browse import method_label, read_config  # browse reads matrices: imported here, not at the top

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        return name
    try:
        config = read_config(run_dir)
    except Exception:  # noqa: BLE001 - a title is never worth failing a run for
        return name
    if name.startswith("matrix_gk"):
        judge = config.get("judge") or {}
        mode = f"judge {judge.get('backend', '?')}" + (f" ({judge['model']})" if judge.get("model") else "")
    else:
        mode = f"scoring {(config.get('eval') or {}).get('scoring', '?')}"
    return " · ".join([run_dir.name, method_label(config), VIEWS.get(name, name), mode])


def figure_caption(metrics: dict[str, float | None]) -> str:
    """The headline metrics under a heatmap: "MFT 85.00   MFN 80.25   BWT -9.50"."""
    return "   ".join(f"{k} {_fmt(metrics.get(k), 2)}" for k in CAPTION_METRICS if k in metrics)


def _to_png(
    tasks: list[str], cells: list[list[float | None]], zero_shot: list[float | None] | None, title: str,
    caption: str = "",
) -> bytes:
    # The object-oriented API with an explicit Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = (["base (zero-shot)"] if zero_shot is not None else []) + tasks
    rows = ([zero_shot] if zero_shot is not None else []) + cells
    data = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
    n_rows, n_cols = data.shape

    fig = Figure(figsize=(max(5.0, 1.2 + 0.9 * n_cols), 1.4 + 0.6 * n_rows), dpi=100)  # wide enough for the title
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="score")
    for r in range(n_rows):
        for c in range(n_cols):
            v = data[r, c]
            if not math.isnan(v):
                ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=8,
                        color="black" if v > 60 else "white")
    ax.set_xticks(range(n_cols), tasks, rotation=45, ha="right")
    ax.set_yticks(range(n_rows), labels)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("after stage")
    if zero_shot is not None:  # the base row is the model before the stream: set apart from the stages
        ax.axhline(0.5, color="white", linewidth=4)
        ax.get_yticklabels()[0].set_fontstyle("italic")
    ax.set_title(title, fontsize=9, wrap=True)
    if caption:
        fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=9)
    fig.tight_layout(rect=(0, 0.05 if caption else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------------------------- API


def save_matrix(
    run_dir: str | Path,
    name: str,
    tasks: Sequence[str],
    matrix: Any,
    zero_shot: Sequence[float | None] | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<name>.json``, ``.csv``, ``.md`` and ``.png`` into ``run_dir``.

    ``metrics`` defaults to ``compute_metrics(matrix, zero_shot)``. Returns the written paths
    keyed by extension ("json", "csv", "md", "png").
    """
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"invalid result name {name!r}")
    arr = as_matrix(matrix)
    T = arr.shape[0]
    tasks = _check_tasks(tasks, T)
    cells = _cells(arr)
    zs = _zero_shot_list(zero_shot, T)
    if metrics is None:
        metrics = compute_metrics(arr, zero_shot)
    clean = _clean_metrics(metrics)

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"tasks": tasks, "matrix": cells, "zero_shot": zs, "metrics": clean}
    paths = {ext: run_dir / f"{name}.{ext}" for ext in ("json", "csv", "md", "png")}
    atomic_write_text(paths["json"], json.dumps(record, indent=2) + "\n")
    atomic_write_text(paths["csv"], _to_csv(tasks, cells, zs))
    title = figure_title(run_dir, name)
    atomic_write_text(paths["md"], _to_markdown(tasks, cells, zs, clean, title))
    atomic_write_bytes(paths["png"], _to_png(tasks, cells, zs, title, figure_caption(clean)))
    return paths


def load_matrix(
    path: str | Path,
) -> tuple[list[str], list[list[float | None]], list[float | None] | None, dict[str, float | None]]:
    """Read a ``<name>.json`` written by ``save_matrix``: (tasks, matrix, zero_shot, metrics).

    Missing cells come back as ``None``.
    """
    with open(path, encoding="utf-8") as fh:
        record = json.load(fh)
    try:
        tasks = [str(t) for t in record["tasks"]]
        matrix = [[None if v is None else float(v) for v in row] for row in record["matrix"]]
        zs = record.get("zero_shot")
        zero_shot = None if zs is None else [None if v is None else float(v) for v in zs]
        metrics = {k: None if v is None else float(v) for k, v in record.get("metrics", {}).items()}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not an accuracy-matrix record ({exc})") from None
    as_matrix(matrix)  # re-validate shape and lower triangle
    _check_tasks(tasks, len(matrix))
    return tasks, matrix, zero_shot, metrics


def format_table(
    tasks: Sequence[str],
    matrix: Any,
    metrics: dict[str, Any],
    zero_shot: Sequence[float | None] | None = None,
    title: str | None = "accuracy matrix (rows: after stage, columns: evaluated on)",
) -> str:
    """A fixed-width plain-text table (one decimal, "-" for missing) plus a metrics line."""
    arr = as_matrix(matrix)
    T = arr.shape[0]
    tasks = _check_tasks(tasks, T)
    cells = _cells(arr)
    zs = _zero_shot_list(zero_shot, T)

    labels = (["base"] if zs is not None else []) + tasks
    rows = ([zs] if zs is not None else []) + cells
    body = [[_fmt(v, 1) for v in r] for r in rows]
    label_w = max(len("stage"), *(len(s) for s in labels))
    col_w = [max(len(t), *(len(r[c]) for r in body)) for c, t in enumerate(tasks)]

    lines = []
    if title:
        lines.append(title)
    header = "stage".ljust(label_w) + "".join("  " + t.rjust(w) for t, w in zip(tasks, col_w))
    lines.append(header)
    lines.append("-" * len(header))
    for label, r in zip(labels, body):
        lines.append(label.ljust(label_w) + "".join("  " + s.rjust(w) for s, w in zip(r, col_w)))
    items = _metric_items(_clean_metrics(metrics))
    if items:
        lines.append("")
        lines.append("  ".join(f"{k} {_fmt(v, 2)}" for k, v in items))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- format vs content

FORM_CONTENT_NAME = "form_content"
# The tables of form_content.md, in order: (key of form_content_summary, heading).
FORM_CONTENT_TABLES = (
    ("format_valid", "format-valid rate (%): answers in the form the instruction asks for"),
    ("content", "content accuracy (%): right in any form (option text for its letter, 'two' for '2', ...)"),
    ("score", "instruction-following score (%): the task's own scorer, as in matrix.md"),
    ("format_error_share", "share of the IF error that is a format failure (%); the rest: right form, wrong content"),
    ("recovered_share", "share of the IF error whose content is right all the same (%): lost alignment, not knowledge"),
)


def _read_records(path: Path) -> list[dict]:
    from .browse import read_predictions  # browse imports this module: imported on use

    records = read_predictions(path)
    for n, rec in enumerate(records, 1):
        if not (isinstance(rec, dict) and isinstance(rec.get("text"), str) and isinstance(rec.get("answers"), list)):
            raise RunError(f"{path}, record {n}: not a prediction record (fields 'text', 'answers')")
    return records


def _decided(records: list[dict]) -> list[dict]:
    return [{"score": r.get("score", 0.0), **decide_record(r)} for r in records]


def form_content_cells(run_dir: str | Path, tasks: Sequence[str]) -> dict[str, dict[str, dict]]:
    """{stage label: {task: form_content_summary}} from a sequential run's saved predictions:
    "base" (zero-shot, when evaluated) and one label per stage, the task it trained. Records saved
    before they carried format/content fields are decided from their text."""
    run_dir = Path(run_dir)
    folders = [("base", run_dir / "stages" / BASE_STAGE)]
    folders += [(task, stage_dir(run_dir, t, task)) for t, task in enumerate(tasks)]
    cells: dict[str, dict[str, dict]] = {}
    for label, folder in folders:
        row = {}
        for task in tasks:
            path = folder / "predictions" / f"{task}.jsonl"
            if path.is_file():
                row[task] = form_content_summary(_decided(_read_records(path)))
        if row:
            cells[label] = row
    return cells


def _form_content_matrix(tasks: list[str], cells: dict, key: str) -> list[list[float | None]]:
    return [[cells.get(task, {}).get(t, {}).get(key) for t in tasks] for task in tasks]


def _form_content_metrics(tasks: list[str], cells: dict) -> dict[str, dict[str, float | None]]:
    """MFT/MFN/BWT/... of the format-valid and the content matrices, next to the IF ones: the
    forgetting of each, when the lower triangle is complete."""
    out = {}
    base = cells.get("base")
    for key in ("score", "format_valid", "content"):
        try:
            zero_shot = [base.get(t, {}).get(key) for t in tasks] if base else None
            out[key] = _clean_metrics(compute_metrics(_form_content_matrix(tasks, cells, key), zero_shot))
        except ValueError:  # an unfinished run: no metrics over a partial triangle
            continue
    return out


def form_content_pools(tasks: list[str], cells: dict) -> dict[str, dict]:
    """The cells that measure forgetting, pooled: the earlier tasks after the last stage, and every
    task after any later stage (below the diagonal); the trained task itself (the diagonal) apart."""
    last = tasks[-1] if tasks else None
    pools = {
        "final stage, earlier tasks": [cells.get(last, {}).get(t) for t in tasks[:-1]],
        "later stages, earlier tasks": [cells.get(s, {}).get(t) for k, s in enumerate(tasks) for t in tasks[:k]],
        "own stage (diagonal)": [cells.get(t, {}).get(t) for t in tasks],
    }
    return {name: pool_form_content([c for c in found if c]) for name, found in pools.items()}


def form_content_markdown(record: dict, title: str = "Format vs content") -> str:
    """The tables of a form_content.json record: one per quantity, rows after stage, columns tasks."""
    tasks, cells = record["tasks"], record["cells"]
    labels = [label for label in ["base", *tasks] if label in cells]
    lines = [f"# {title}", "",
             "Every answer is decided twice (mcit.eval.form_content): does it have the form its instruction "
             "asks for, and is its content right in any form. Rows: after stage (task trained); columns: "
             "evaluated on.", ""]
    for key, heading in FORM_CONTENT_TABLES:
        lines += [f"## {heading}", "", "| after stage | " + " | ".join(_md_escape(t) for t in tasks) + " |",
                  "|---|" + "---:|" * len(tasks)]
        for label in labels:
            lines.append(f"| {_md_escape(label)} | "
                         + " | ".join(_fmt(cells[label].get(t, {}).get(key), 1) for t in tasks) + " |")
        lines.append("")
    pools = record.get("pooled") or {}
    if pools:
        lines += ["## pooled (%)", "", "| cells | answers | " + " | ".join(FORM_CONTENT_NAMES) + " |",
                  "|---|---:|" + "---:|" * len(FORM_CONTENT_NAMES)]
        lines += [f"| {name} | {pool['n']} | " + " | ".join(_fmt(pool.get(k), 1) for k in FORM_CONTENT_NAMES) + " |"
                  for name, pool in pools.items()]
        lines.append("")
    metrics = record.get("metrics") or {}
    if metrics:
        names = [m for m in METRIC_NAMES if any(m in v for v in metrics.values())]
        lines += ["## metrics of each view", "", "| view | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        for key, values in metrics.items():
            lines.append(f"| {key} | " + " | ".join(_fmt(values.get(m), 2) for m in names) + " |")
        lines.append("")
    return "\n".join(lines)


def load_form_content(path: str | Path) -> tuple[list[str], dict[str, dict[str, dict]]]:
    """(tasks, cells) of a form_content.json; RunError naming the field that is damaged."""
    path = Path(path)
    record = load_json(path)
    if not isinstance(record, dict):
        raise RunError(f"{path} is damaged: expected a JSON object, got {type(record).__name__}")
    tasks, cells = record.get("tasks"), record.get("cells")
    if not (isinstance(tasks, list) and all(isinstance(t, str) for t in tasks)):
        raise RunError(f"{path} is damaged: field 'tasks' must be a list of task names")
    if not (isinstance(cells, dict) and all(isinstance(row, dict) and all(isinstance(c, dict) for c in row.values())
                                            for row in cells.values())):
        raise RunError(f"{path} is damaged: field 'cells' must map each stage to tasks to their numbers")
    for stage, row in cells.items():
        for task, cell in row.items():
            missing = [k for k in ("n", *FORM_CONTENT_NAMES) if k not in cell]
            if missing:
                raise RunError(f"{path} is damaged: field 'cells.{stage}.{task}' has no {missing[0]!r}")
            for key, value in cell.items():
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise RunError(f"{path} is damaged: field 'cells.{stage}.{task}.{key}' must be a number, "
                                   f"got {type(value).__name__}")
    return tasks, cells


def save_form_content(run_dir: str | Path, tasks: Sequence[str]) -> dict[str, Path]:
    """Write ``form_content.json`` and ``form_content.md`` of a sequential run (atomically) and
    return their paths keyed by extension."""
    run_dir, tasks = Path(run_dir), [str(t) for t in tasks]
    cells = form_content_cells(run_dir, tasks)
    record = {"tasks": tasks, "cells": cells, "pooled": form_content_pools(tasks, cells),
              "metrics": _form_content_metrics(tasks, cells)}
    paths = {ext: run_dir / f"{FORM_CONTENT_NAME}.{ext}" for ext in ("json", "md")}
    atomic_write_text(paths["json"], json.dumps(record, indent=2) + "\n")
    atomic_write_text(paths["md"], form_content_markdown(record, f"Format vs content · {run_dir.name}"))
    return paths
