"""EMT curves over seeds: the runs of one comparison row (same settings, other seeds) merged into
a mean curve per dataset with a 95% confidence band, the encoder probe as the reference line.

A band is the t-interval of the mean over seeds at each step: mean ± t(0.975, n-1) · std / √n
(sample std). Only the steps every seed recorded are kept, so each point averages the same runs.
Each seed draws its own EMT sets (the run seed), so the band holds the sampling of the sets as
well as the training noise. ``mcit compare`` writes ``emt_curves.json`` and ``emt_curves.png``
when its runs tracked EMT.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from ..compare import mean_std
from .curve import CURVE_FILE, read_curve, read_probe

__all__ = ["BANDS_FILE", "BANDS_PLOT", "bands_png", "confidence_band", "format_bands", "merge_seeds", "row_bands"]

BANDS_FILE = "emt_curves.json"
BANDS_PLOT = "emt_curves.png"


def confidence_band(values: list[float], level: float = 0.95) -> dict:
    """Mean, sample std and the t-interval of the mean; one value gives a zero-width band."""
    from scipy.stats import t

    n = len(values)
    mean, std = mean_std(values)  # the sample std, as every ± of mcit compare
    half = float(t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}


def merge_seeds(curves: list[list[dict]]) -> dict[str, list[dict]]:
    """Dataset -> one point per step recorded by every curve: {step, stage, task} and the band of
    its accuracy. Datasets keep the order of the first curve (the run's ``emt.datasets``)."""
    if not curves or any(not c for c in curves):
        return {}
    merged = {}
    for name in dict.fromkeys(r["dataset"] for r in curves[0]):
        by_step = [{r["step"]: r for r in c if r["dataset"] == name} for c in curves]
        common = sorted(set.intersection(*(set(s) for s in by_step)))
        merged[name] = [{"step": step, "stage": by_step[0][step]["stage"], "task": by_step[0][step]["task"],
                         **confidence_band([s[step]["accuracy"] for s in by_step])} for step in common]
    return merged


def row_bands(run_dirs: list[Path]) -> dict | None:
    """The merged curves and the probe band of one row's runs; None when they tracked no EMT."""
    curves = [read_curve(Path(r) / CURVE_FILE) for r in run_dirs]
    if not curves or any(not c for c in curves):
        return None
    probes = [read_probe(r) for r in run_dirs]
    curve = merge_seeds(curves)
    probe = {}
    for name in curve:
        values = [p.get(name) for p in probes]
        probe[name] = confidence_band(values) if values and all(v is not None for v in values) else None
    return {"runs": [Path(r).name for r in run_dirs], "curve": curve, "probe": probe}


def _peak(points: list[dict]) -> dict:
    return max(points[1:] or points, key=lambda p: p["mean"])  # after the start: the early improvement, if any


def format_bands(rows: dict[str, dict]) -> str:
    """Markdown: per row and dataset, the mean accuracy at the start, at its highest point after the
    start (and that step), at the end, and the probe, each ± its std over seeds."""
    head = "| row | dataset | seeds | start | highest (step) | end | probe |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for row, bands in rows.items():
        for name, points in bands["curve"].items():
            if not points:
                continue
            start, peak, end, probe = points[0], _peak(points), points[-1], bands["probe"].get(name)
            cell = lambda p: f"{p['mean']:.1f} ± {p['std']:.1f}"  # noqa: E731
            lines.append(f"| {row} | {name} | {start['n']} | {cell(start)} | {cell(peak)} ({peak['step']}) | "
                         f"{cell(end)} | {'-' if probe is None else cell(probe)} |")
    return "\n".join(lines)


def bands_png(rows: dict[str, dict], title: str = "EMT accuracy over seeds (mean, 95% band)") -> bytes:
    """One panel per dataset (in the runs' order): a line and band per row, the probe dotted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(name for bands in rows.values() for name in bands["curve"]))
    cols = min(2, max(1, len(datasets)))
    nrows = max(1, math.ceil(len(datasets) / cols))
    fig = Figure(figsize=(5 * cols, 3.2 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, datasets):
        for row, bands in rows.items():
            points = bands["curve"].get(name) or []
            if not points:
                continue
            steps = [p["step"] for p in points]
            line, = ax.plot(steps, [p["mean"] for p in points], marker="o", markersize=2.5, label=row)
            ax.fill_between(steps, [p["lo"] for p in points], [p["hi"] for p in points], color=line.get_color(),
                            alpha=0.2, linewidth=0)
            probe = bands["probe"].get(name)
            if probe is not None:
                ax.axhline(probe["mean"], color=line.get_color(), linestyle=":", linewidth=1.2)
        ax.set_title(f"{name} (dotted: encoder probe)", fontsize=9)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_xlabel("global optimizer step", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    seeds = sorted({p["n"] for bands in rows.values() for pts in bands["curve"].values() for p in pts})
    fig.suptitle(f"{title}, {'/'.join(map(str, seeds))} seeds", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
