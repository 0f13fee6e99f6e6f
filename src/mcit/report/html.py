"""`mcit report RUN|COMPARE_DIR [-o FILE]`: one self-contained HTML page of a run or a comparison.

Self-contained means readable offline and sendable as one file: the styles are inline, every image
is a PNG data URI, and there is no script and no external link. Every text that comes from a run
(model outputs, questions, task names, config values) is HTML-escaped: a model may answer anything.
"""
from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Any

from ..compare import VIEW_METRICS, form_content_rows
from ..io import atomic_write_text
from ..rundir import RunError, load_json
from ..metrics import FORM_CONTENT_NAMES
from .matrix import FORM_CONTENT_NAME, FORM_CONTENT_TABLES, form_content_pools, load_form_content
from .browse import (VIEWS, default_config, format_duration, format_number, config_differences, is_run_dir, load_view,
                     most_forgotten, read_config, require_run, sample_answers, summarise)

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.right{color:#176a2c}.wrong{color:#a61b1b}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}img{max-width:100%;margin:.5em 1em .5em 0}
.meta{color:#555}
"""


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str) -> str:
    return f'<img class="chart" src="{_png_uri(data)}" alt="{escape(alt)}">'


def _table(head: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    """An HTML table; every cell escaped, cells from column ``numeric_from`` on right-aligned."""
    out = ["<table><tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td{" class=n" if c >= numeric_from else ""}>{escape(str(v))}</td>'
                                    for c, v in enumerate(row)) + "</tr>")
    return "".join(out) + "</table>"


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


# ---------------------------------------------------------------------------------- one run


def _metrics_section(summary) -> list[str]:
    rows = [[m] + [format_number(summary.metrics[v].get(m), 2) for v, _, _ in VIEWS] for m in VIEW_METRICS]
    return ["<h2>Metrics</h2>", _table(["metric"] + [title for _, title, _ in VIEWS], rows)]


def _figures_section(run: Path) -> list[str]:
    """Every figure the run wrote at its top level (heatmaps of both views, curves), inline."""
    pngs = sorted(run.glob("*.png"))
    return ["<h2>Figures</h2>"] + [_img(p.read_bytes(), p.stem) for p in pngs] if pngs else []


def _matrix_sections(run: Path) -> list[str]:
    out = []
    for _, title, suffix in VIEWS:
        view = load_view(run, suffix)
        if view is None:
            continue
        tasks, matrix, zero_shot, _ = view
        rows = ([["base (zero-shot)"] + [format_number(v) for v in zero_shot]] if zero_shot else [])
        rows += [[task] + [format_number(v) for v in row] for task, row in zip(tasks, matrix)]
        out += [f"<h2>Accuracy matrix: {escape(title)}</h2>", _table(["after stage"] + tasks, rows)]
        if suffix == "":
            forgotten = most_forgotten(tasks, matrix)
            if forgotten:
                drops = ", ".join(f"{t} {format_number(b)} → {format_number(f)}" for t, b, f, _ in forgotten)
                out.append(f"<p>Forgotten most: {escape(drops)}</p>")
    return out


def _form_content_sections(run: Path) -> list[str]:
    """The format vs content tables of form_content.json (written at the end of a sequential run)."""
    path = run / f"{FORM_CONTENT_NAME}.json"
    if not path.is_file():
        return []
    tasks, cells = load_form_content(path)
    labels = [label for label in ["base", *tasks] if label in cells]
    out = ["<h2>Format vs content</h2>",
           "<p>Every answer decided twice: does it have the form its instruction asks for, and is its "
           "content right in any form.</p>"]
    for key, heading in FORM_CONTENT_TABLES:
        rows = [[label] + [format_number(cells[label].get(t, {}).get(key)) for t in tasks] for label in labels]
        out += [f"<h3>{escape(heading)}</h3>", _table(["after stage"] + tasks, rows)]
    pooled = form_content_pools(tasks, cells)
    rows = [[name, pool["n"]] + [format_number(pool[k]) for k in FORM_CONTENT_NAMES] for name, pool in pooled.items()]
    return out + ["<h3>pooled (%)</h3>", _table(["cells", "answers", *FORM_CONTENT_NAMES], rows)]


def _answers_section(run: Path, per_task: int) -> list[str]:
    samples = sample_answers(run, per_task)
    if not samples:
        return []
    out = ["<h2>Sample answers of the last stage</h2>"]
    for task, groups in samples.items():
        rows = [[("right" if key == "right" else "wrong"), r.get("text", ""), r.get("prediction", ""),
                 " | ".join(map(str, r.get("answers") or [])), r.get("score")]
                for key in ("right", "wrong") for r in groups[key]]
        out += [f"<h3>{escape(task)}</h3>",
                _table(["", "question", "answer", "expected", "score"], rows, numeric_from=4)]
    return out


def _config_sections(run: Path) -> list[str]:
    diffs = config_differences(default_config(), read_config(run))
    env = load_json(run / "environment.json")
    return ["<h2>Config</h2>", "<p>Differences from the defaults:</p>",
            "<pre>" + escape("\n".join(diffs) or "(none)") + "</pre>",
            "<details><summary>resolved config.yaml</summary><pre>"
            + escape((run / "config.yaml").read_text(encoding="utf-8")) + "</pre></details>",
            "<h2>Environment</h2><details><summary>environment.json</summary><pre>"
            + escape(json.dumps(env, indent=2, ensure_ascii=False)) + "</pre></details>"]


def run_report(run: str | Path, per_task: int = 3) -> str:
    run = require_run(run)
    s = summarise(run)
    body = [f"<h1>{escape(run.name)}</h1>",
            f"<p class=meta>method {escape(s.method)} · tasks {escape(', '.join(s.tasks))} · status "
            f"{escape(s.status)} · time {escape(format_duration(s.seconds))}</p>"]
    body += _metrics_section(s) + _figures_section(run) + _matrix_sections(run) + _form_content_sections(run)
    body += _answers_section(run, per_task) + _config_sections(run)
    return _page(f"mcit run {run.name}", body)


# ---------------------------------------------------------------------------------- a comparison


def _error_bar_chart(table: dict, view: str, metrics=("MFT", "MFN", "BWT")) -> bytes:
    """Grouped bars, one group per metric, one bar per method: mean with the std over seeds as error bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(table)
    fig = Figure(figsize=(max(5.0, 1.5 + 1.2 * len(metrics) * max(1, len(methods)) / 2), 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        cells = [table[method][view].get(m) for m in metrics]
        means = [c[0] if c else 0.0 for c in cells]
        stds = [c[1] if c else 0.0 for c in cells]
        ax.bar([i + k * width for i in range(len(metrics))], means, width, yerr=stds, capsize=3, label=method)
    ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(metrics))], metrics)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title(f"{'instruction following' if view == 'if' else 'general knowledge'}: mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _mean_std(cell) -> str:
    return "-" if cell is None else f"{cell[0]:.2f} ± {cell[1]:.2f}"


def compare_report(folder: str | Path) -> str:
    folder = Path(folder)
    record = load_json(folder / "compare.json")
    table = record.get("table") or {}
    head = ["method"] + [f"{m} ({v.upper()})" for v, _, _ in VIEWS for m in VIEW_METRICS] + ["seeds"]
    rows = [[m] + [_mean_std(row[v].get(m)) for v, _, _ in VIEWS for m in VIEW_METRICS] + [row.get("seeds")]
            for m, row in table.items()]
    body = [f"<h1>Comparison {escape(folder.name)}</h1>",
            f"<p class=meta>methods {escape(', '.join(map(str, record.get('methods', []))))} · seeds "
            f"{escape(', '.join(map(str, record.get('seeds', []))))}</p>",
            "<h2>Mean ± std over seeds</h2>", _table(head, rows)]
    split_head, split = form_content_rows(table)
    if split:  # the score's forgetting split into lost format and lost content (mcit.compare)
        body += ["<h2>Instruction following: format vs content</h2>",
                 _table(split_head, [[m] + [_mean_std(ms) for ms in cells] for m, cells in split])]
    for view, title, _ in VIEWS:
        if any(row[view].get(m) for row in table.values() for m in VIEW_METRICS):
            body += [f"<h2>{escape(title)}</h2>", _img(_error_bar_chart(table, view), f"{title} by method")]
    if (folder / "emt_curves.png").is_file():  # EMT tracked: curves over seeds (mcit.emt.bands)
        body += ["<h2>EMT accuracy over seeds</h2>", _img((folder / "emt_curves.png").read_bytes(), "EMT curves")]
    runs = sorted(p for p in (folder / "runs").glob("*") if is_run_dir(p))
    if runs:
        body += ["<h2>Runs</h2>", _table(["run", "method", "status", "MFN (IF)", "time"],
                                         [[r.name, s.method, s.status, format_number(s.metrics["if"].get("MFN")),
                                           format_duration(s.seconds)] for r, s in ((r, summarise(r)) for r in runs)])]
    return _page(f"mcit comparison {folder.name}", body)


def write_report(target: str | Path, out: str | Path | None = None) -> Path:
    """The report of a run folder or a compare folder, written to ``out`` (default <target>/report.html)."""
    target = Path(target)
    if (target / "compare.json").is_file():
        text = compare_report(target)
    elif target.is_dir() and is_run_dir(target):
        text = run_report(target)
    else:
        raise RunError(f"report: {target} is neither a run folder (config.yaml, environment.json) nor a "
                       "comparison folder (compare.json)")
    return atomic_write_text(Path(out) if out else target / "report.html", text)
