"""EMT tracking during fine-tuning: every ``emt.every_steps`` optimizer steps (and before the
first step of the run) the live model answers the EMT sets; one line per (point, dataset) is
appended to ``<run>/emt_curve.jsonl``; ``emt_curve.png`` plots the curves at the end.

With ``emt.decider`` openai or local the answers are decided by an LLM judge configured by the
run's ``judge`` section (:mod:`mcit.emt.judge_decider`).

The global step counts optimizer steps over the whole run (stage after stage). A resumed run
first drops the points of the stage it redoes, so the curve matches an uninterrupted run.

Before the first step the vision tower of the untouched model is also probed (a linear probe
per set, as ``mcit emt`` does: up to ``PROBE_TRAIN`` train images): ``emt_probe.json``, the
reference line of the plots. The sets are drawn with the run's seed.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable

from ..io import atomic_write_bytes, atomic_write_text
from ..rundir import load_json, save_json
from .decide import JUDGE_UNPARSABLE
from .evaluate import JUDGE_DECIDERS, PROBE_TRAIN, ask, check_decider, encoder_baseline, parse_specs, prepare, protocol
from ..eval.evaluate import COIN_MINI_MAX_NEW_TOKENS
from ..eval.judge import JudgeCache
from .judge_decider import build_judge_decider

JUDGE_CACHE_FILE = "emt_judge_cache.jsonl"

__all__ = ["CURVE_FILE", "JUDGE_CACHE_FILE", "PLOT_FILE", "PROBE_FILE", "EmtTracker", "curve_png", "read_curve",
           "read_probe"]

CURVE_FILE = "emt_curve.jsonl"
PLOT_FILE = "emt_curve.png"
PROBE_FILE = "emt_probe.json"


def read_curve(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_probe(run_dir: Path) -> dict[str, float | None]:
    """Dataset -> the probe accuracy of the run's untouched vision tower ({} when not written)."""
    path = Path(run_dir) / PROBE_FILE
    if not path.is_file():
        return {}
    return {name: r["accuracy"] for name, r in load_json(path)["datasets"].items()}


class EmtTracker:
    """Holds the prepared sets; ``stage(...)`` gives train_task its ``on_step`` callback."""

    def __init__(self, cfg, log: Callable[[str], None] = print):
        ec = cfg.emt
        if ec.every_steps < 0 or ec.limit < 1 or ec.batch_size < 1:
            from ..config import ConfigError
            raise ConfigError("emt: every_steps must be >= 0, limit and batch_size >= 1")
        if not ec.datasets:
            from ..config import ConfigError
            raise ConfigError("emt.every_steps > 0 but emt.datasets is empty; e.g. emt.datasets=[digits,coin-shapes]")
        self.every = ec.every_steps
        self.batch_size = ec.batch_size
        # a class name is short: the run's own limit, else coin-mini's (never a release's 1024)
        self.max_new_tokens = cfg.eval.max_new_tokens or COIN_MINI_MAX_NEW_TOKENS
        check_decider(ec.decider)
        self.specs = parse_specs(ec.datasets)
        self.seed = cfg.seed
        self.sets = [prepare(spec, ec.limit, cfg.seed) for spec in self.specs]
        # a judge decider: the run's judge section configures it (built once, closed by close())
        self.judge = build_judge_decider(cfg.judge, ec.decider) if ec.decider in JUDGE_DECIDERS else None
        self.protocol = protocol(ec.decider, self.max_new_tokens, self.judge)
        self.log = log
        self.path: Path | None = None
        self.offset = 0  # global steps done before the current stage

    def begin(self, run_dir: Path | None, done_steps: list[int]) -> None:
        """Start (or continue after ``len(done_steps)`` completed stages); ``run_dir`` None off the main process."""
        self.offset = sum(done_steps)
        if run_dir is None:
            return
        self.path = Path(run_dir) / CURVE_FILE
        if self.judge is not None:  # a resumed run's points ask the judge nothing twice
            self.judge.cache = JudgeCache(Path(run_dir) / JUDGE_CACHE_FILE)
        kept = [r for r in read_curve(self.path) if r["stage"] <= len(done_steps)]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def stage(self, model, processor, index: int, task: str, steps: int, device=None) -> Callable[[int], None]:
        """The on_step callback for stage ``index`` (0-based) of ``steps`` optimizer steps; the first
        stage records the untouched model (global step 0) first."""
        offset = self.offset
        self.offset += steps

        def point(step: int) -> None:
            self.point(model, processor, offset + step, index + 1, task, offset, device)

        if index == 0:
            self.probe(model, processor)
            point(0)

        def on_step(step: int) -> None:
            if (offset + step) % self.every == 0:
                point(step)

        return on_step

    def point(self, model, processor, global_step: int, stage: int, task: str, stage_start: int = 0,
              device=None) -> list[dict]:
        if self.judge is not None and self.path is None:
            return []  # off the main process the point is not kept: do not ask the judge for nothing
        rows = []
        for prepared in self.sets:
            summary, _ = ask(model, processor, prepared, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                             decider=self.protocol["decider"], judge=self.judge, device=device, show_progress=False)
            rows.append({"step": global_step, "stage": stage, "task": task, "stage_start": stage_start,
                         "dataset": prepared.name,
                         "accuracy": summary["accuracy"], "shares": summary["shares"], "n": summary["n"],
                         "decider": self.protocol["decider"]})
            if self.judge is not None:  # a reply the judge could not give counts hallucinated: keep the count
                rows[-1]["judge_unparsable"] = summary["hallucination_reasons"][JUDGE_UNPARSABLE]
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:  # appended: a crash keeps every earlier point
                fh.write("".join(json.dumps(r) + "\n" for r in rows))
            self.log(f"emt step {global_step}: " + "  ".join(f"{r['dataset']} {r['accuracy']:.1f}" for r in rows))
        return rows

    def probe(self, model, processor) -> dict | None:
        """The reference: a linear probe on the untouched vision tower per set (main process only)."""
        if self.path is None:
            return None
        from .datasets import load_dataset

        datasets = {}
        for spec, prepared in zip(self.specs, self.sets):
            train = load_dataset(spec, limit=PROBE_TRAIN, seed=self.seed)
            baseline = encoder_baseline(model, processor, prepared.dataset, train, seed=self.seed,
                                        batch_size=self.batch_size)
            datasets[prepared.name] = {k: baseline["probe"].get(k) for k in ("accuracy", "n_train", "n_test")}
        record = {"step": 0, "probe_train": PROBE_TRAIN, "seed": self.seed, "datasets": datasets,
                  "classifier": "logistic regression on the vision tower's mean-pooled patch features"}
        save_json(self.path.with_name(PROBE_FILE), record)
        self.log("emt probe: " + "  ".join(f"{k} {v['accuracy']:.1f}" for k, v in datasets.items()
                                           if v["accuracy"] is not None))
        return record

    def close(self) -> None:
        """Release the judge decider's backend (the endpoint's HTTP client)."""
        if self.judge is not None:
            self.judge.close()

    def save_plot(self) -> Path | None:
        if self.path is None:
            return None
        return atomic_write_bytes(self.path.with_name(PLOT_FILE),
                                  curve_png(read_curve(self.path), probe=read_probe(self.path.parent)))


def curve_png(records: list[dict], title: str = "EMT accuracy during fine-tuning",
              probe: dict[str, float | None] | None = None) -> bytes:
    """Accuracy (top) and hallucinated share (bottom) per dataset over the global step; dashed lines
    mark where each stage starts, labelled with its task; a dotted line per dataset is its probe."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    starts = {r["stage"]: (r.get("stage_start", r["step"]), r["task"]) for r in records}  # stage -> (step, task)

    fig = Figure(figsize=(8, 6), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for name in datasets:
        rows = sorted((r for r in records if r["dataset"] == name), key=lambda r: r["step"])
        steps = [r["step"] for r in rows]
        line, = top.plot(steps, [r["accuracy"] for r in rows], marker="o", markersize=3, label=name)
        bottom.plot(steps, [r["shares"]["hallucinated"] for r in rows], marker="o", markersize=3,
                    color=line.get_color())
        if (probe or {}).get(name) is not None:
            top.axhline(probe[name], color=line.get_color(), linestyle=":", linewidth=1.2)
    for stage, (step, task) in sorted(starts.items()):
        if stage > 1:
            for ax in (top, bottom):
                ax.axvline(step, color="grey", linestyle="--", linewidth=0.8)
        top.annotate(task, (step, 1.0), xycoords=("data", "axes fraction"), fontsize=7, ha="left", va="bottom")
    top.set_ylabel("accuracy (%)" + (" (dotted: encoder probe)" if probe else ""))
    bottom.set_ylabel("hallucinated (%)")
    bottom.set_xlabel("global optimizer step")
    for ax in (top, bottom):
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    if datasets:
        top.legend(fontsize=8, loc="best")
    decider = records[0].get("decider", "?") if records else "?"
    fig.suptitle(f"{title} (decider: {decider})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
