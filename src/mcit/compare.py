"""`mcit compare`: every method on the same stream, data and budgets, over several seeds, in one table.

Each (method, seed) is an ordinary run folder under ``<out>/runs/<method>-seed<seed>``; a
finished one (its metrics.json exists) is read back instead of re-run, and an interrupted one is
resumed, so a long comparison can be stopped and started again. The table gives mean ± sample
std over seeds of each metric in both views (instruction following; general knowledge when a
judge ran), the trainable parameters and the wall time per method. Runs that tracked EMT
(``emt.every_steps``) also give their curves merged over seeds, with 95% bands and the encoder
probe as reference (``emt_curves.json``, ``emt_curves.png``; :mod:`mcit.emt.bands`).
"""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Callable

from .config import ConfigError, load_config
from .io import atomic_write_bytes, atomic_write_text
from .resume import check_resumable
from .rundir import check_same_run, load_json, save_json

VIEW_METRICS = ("MFT", "MFN", "MAA", "BWT", "Forgetting")
# (measure, metric) pairs of form_content.json compared across methods: how much of the score's
# forgetting is lost format and how much lost content
FORM_CONTENT_COLUMNS = (("score", "BWT"), ("format_valid", "BWT"), ("content", "BWT"), ("format_valid", "MFN"),
                        ("content", "MFN"))


def parse_list(text: str, what: str, cast=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--{what}: give a comma-separated list")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise ConfigError(f"--{what}: '{text}' is not a comma-separated list of {cast.__name__}") from None


def grid_points(grid: list[str], what: str = "grid") -> list[list[str]]:
    """Every combination of ``key=v1,v2,...`` lists, as lists of overrides ([[]] for no lists)."""
    axes = []
    for text in grid:
        key, sep, values = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--{what} '{text}': write key=v1,v2,... (e.g. method.ema_weight=0.005,0.01)")
        axes.append([f"{key.strip()}={v}" for v in parse_list(values, what)])
    return [list(p) for p in itertools.product(*axes)]


def point_label(point: list[str]) -> str:
    """"data.order=reverse train.lr=0.003" -> "order=reverse lr=0.003"."""
    return " ".join(_short(o) for o in point)


def point_slug(point: list[str]) -> str:
    """A run-folder-safe name part for a grid point."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "_".join(_short(o) for o in point))


def compare(config: Path, overrides: list[str], methods: list[str], seeds: list[int], out: Path,
            log: Callable[[str], None] = print, vary: list[str] = ()) -> dict:
    """Every method (and, with ``vary``, every point of its ``key=v1,v2,...`` lists: a study of one
    setting, e.g. the instruction set) over ``seeds``; one row per method and point."""
    from .methods import method_class

    if len(set(methods)) != len(methods) or len(set(seeds)) != len(seeds):
        raise ConfigError("--methods and --seeds must not repeat an entry")
    points = grid_points(list(vary), "vary")
    for m in methods:
        method_class(m)  # an unknown method fails before the first (long) run
    runs = {}
    for m in methods:
        for p in points:  # no --vary: one point, no overrides, the row and run names of before
            row, stem = (f"{m} {point_label(p)}", f"{m}-{point_slug(p)}") if p else (m, m)
            runs[row] = [_run_or_read(config, [*overrides, f"method.name={m}", *p], f"{stem}-seed{seed}", seed, out,
                                      log) for seed in seeds]
    table = {row: _summarise(rs) for row, rs in runs.items()}
    record = {"config": str(config), "overrides": overrides, "methods": methods, "vary": list(vary),
              "seeds": seeds, "table": table}
    save_json(out / "compare.json", record)
    text = format_compare(table)
    split = format_form_content(table)
    if split:
        text += ("\n\nInstruction following split into format and content (mean ± std; format-valid: the answer "
                 "has the form its instruction asks for; content: right in any form):\n\n" + split)
    emt = _emt_bands({row: [r["run_dir"] for r in rs] for row, rs in runs.items()}, out)
    if emt:
        from .emt.bands import BANDS_PLOT, format_bands

        text += f"\n\nEMT accuracy over seeds (mean ± std; curves with 95% bands: {out / BANDS_PLOT}):\n\n"
        text += format_bands(emt)
    atomic_write_text(out / "compare.md", text + "\n")
    from .report.html import write_report

    write_report(out)  # report.html: the table, charts with error bars, the runs (`mcit report` writes it again)
    log(text)
    return record


def _emt_bands(folders: dict[str, list[Path]], out: Path) -> dict:
    """Rows whose runs tracked EMT: their curves merged over seeds (emt_curves.json, emt_curves.png)."""
    from .emt.bands import BANDS_FILE, BANDS_PLOT, bands_png, row_bands

    emt = {row: bands for row, dirs in folders.items() if (bands := row_bands(dirs)) is not None}
    if emt:
        save_json(out / BANDS_FILE, emt)
        atomic_write_bytes(out / BANDS_PLOT, bands_png(emt))
    return emt


def _run_or_read(config: Path, overrides: list[str], name: str, seed: int, out: Path, log) -> dict:
    """Run ``name`` under ``out/runs`` unless it finished (then read it back); resume it if it was cut."""
    from .train import run_stream

    run_dir = out / "runs" / name
    cfg = load_config(config, [*overrides, f"seed={seed}", f"output_dir={out / 'runs'}", f"name={name}"])
    if cfg.data.seed is None:  # same data, order and base model for every seed
        cfg.data.seed = load_config(config, overrides).seed
    resume = (run_dir / "config.yaml").is_file()
    if resume:
        # reused or continued only if it is this run, whole: changed defaults or overrides must not
        # silently bring back numbers made with other settings, nor damaged files be built on
        check_same_run(run_dir, cfg)
        if check_resumable(run_dir).finished:
            return _read_run(run_dir)
    log(f"== {name}")
    run_stream(cfg, log=log, resume=resume)
    return _read_run(run_dir)


def tune(config: Path, overrides: list[str], method: str, grid: list[str], seeds: list[int], out: Path,
         select: str = "MFN", log: Callable[[str], None] = print) -> dict:
    """Every point of the grid (the product of ``key=v1,v2,...`` lists) for one method, over seeds;
    the choice is the point with the best mean ``select`` metric in the instruction-following view
    (the highest; the lowest for Forgetting).

    Meant to run on a stream that the comparison does not use (configs/tune_small.yaml: the other
    four CoIN tasks), so that chosen defaults are not fitted to the compared test sets.
    """
    from .methods import method_class

    if select not in VIEW_METRICS:
        raise ConfigError(f"--select: one of {', '.join(VIEW_METRICS)}, got '{select}'")
    points = grid_points(grid)
    for p in points:  # a misspelt key or a bad value fails before the first (long) run
        load_config(config, [*overrides, *p])
    method_class(method)  # after the light checks: a method's module may import torch
    rows = []
    for p in points:
        label = " ".join(p)
        runs = [_run_or_read(config, [*overrides, f"method.name={method}", *p], f"{method}-{point_slug(p)}-seed{seed}",
                             seed, out, log) for seed in seeds]
        rows.append({"point": label, **_summarise(runs)})
    scored = [r for r in rows if r["if"][select] is not None]
    sign = -1 if select == "Forgetting" else 1  # every other metric is better higher
    best = max(scored, key=lambda r: sign * r["if"][select][0])["point"] if scored else None
    record = {"config": str(config), "overrides": overrides, "method": method, "grid": grid, "seeds": seeds,
              "select": select, "best": best, "rows": rows}
    save_json(out / "tune.json", record)
    text = format_compare({r["point"]: r for r in rows}) + f"\n\nbest by mean {select} (IF): {best}"
    atomic_write_text(out / "tune.md", text + "\n")
    log(text)
    return record


def _short(override: str) -> str:
    """"method.ema_weight=0.01" -> "ema_weight=0.01": the key's last part, the value whole."""
    key, _, value = override.partition("=")
    return f"{key.rsplit('.', 1)[-1]}={value}"


def _read_run(run_dir: Path) -> dict:
    metrics = load_json(run_dir / "metrics.json")
    gk = load_json(run_dir / "metrics_gk.json") if (run_dir / "metrics_gk.json").is_file() else {}
    env = load_json(run_dir / "environment.json")
    fc = load_json(run_dir / "form_content.json").get("metrics", {}) if (run_dir / "form_content.json").is_file() else {}
    return {
        "run_dir": run_dir,
        # the instruction-following score split into its form and its content (mcit.eval.form_content)
        "form_content": {(measure, k): fc.get(measure, {}).get(k) for measure, k in FORM_CONTENT_COLUMNS},
        "if": {k: metrics.get(k) for k in VIEW_METRICS} if "multitask_mean" not in metrics
        else {"MFN": metrics["multitask_mean"]},  # the joint upper bound: its one row is its final accuracy
        "gk": {k: gk.get(k) for k in VIEW_METRICS},
        "trainable": env.get("parameters", {}).get("trainable"),
        "seconds": metrics.get("seconds"),
    }


def mean_std(values: list[float | None]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value); None when any value is missing."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _summarise(runs: list[dict]) -> dict:
    return {
        "if": {k: mean_std([r["if"].get(k) for r in runs]) for k in VIEW_METRICS},
        "gk": {k: mean_std([r["gk"].get(k) for r in runs]) for k in VIEW_METRICS},
        "form_content": [[measure, k, mean_std([r["form_content"].get((measure, k)) for r in runs])]
                         for measure, k in FORM_CONTENT_COLUMNS],
        "trainable": runs[0]["trainable"],
        "seconds": mean_std([r["seconds"] for r in runs]),
        "seeds": len(runs),
    }


def _cell(ms) -> str:
    return "-" if ms is None else f"{ms[0]:.2f} ± {ms[1]:.2f}"


def form_content_rows(table: dict) -> tuple[list[str], list[tuple[str, list]]]:
    """(header, [(row name, its (mean, std) cells)]): the score's BWT beside the BWT (and MFN) of
    format validity and of content, for the rows that have the decomposition (not joint runs, nor
    runs from before it existed); no rows when none has it."""
    head = ["method"] + [f"{k} {measure.replace('_', '-')}" for measure, k in FORM_CONTENT_COLUMNS]
    rows = [(m, [ms for *_, ms in row.get("form_content") or []]) for m, row in table.items()]
    return head, [(m, cells) for m, cells in rows if any(cells)]


def format_form_content(table: dict) -> str:
    """Markdown of :func:`form_content_rows`; empty when no row has the decomposition."""
    head, rows = form_content_rows(table)
    if not rows:
        return ""
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join([m] + [_cell(ms) for ms in cells]) + " |" for m, cells in rows]
    return "\n".join(lines)


def format_compare(table: dict) -> str:
    head = ["method"] + [f"{k} (IF)" for k in VIEW_METRICS] + [f"{k} (GK)" for k in VIEW_METRICS]
    head += ["trainable params", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for m, row in table.items():
        cells = [m] + [_cell(row["if"][k]) for k in VIEW_METRICS] + [_cell(row["gk"][k]) for k in VIEW_METRICS]
        cells += [f"{row['trainable']:,}" if row["trainable"] is not None else "-",
                  "-" if row["seconds"] is None else f"{row['seconds'][0]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
