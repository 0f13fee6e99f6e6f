"""What a run records as it trains: ``stages/NN-<task>/train_log.jsonl`` (one record per optimizer
step) and, with ``log.report_to``, experiment trackers through Accelerate's tracker API
(TensorBoard, MLflow, W&B, ...): the per-step scalars, each stage's row of the accuracy matrix
in both views, the final metrics and the resolved config as hyper-parameters.

Trackers log under the project "mcit", in ``<run>/trackers/`` where the tracker writes files
(TensorBoard's ``trackers/mcit/``, W&B's offline folder); MLflow follows its own
``MLFLOW_TRACKING_URI``. Steps: per-step scalars at the run's optimizer step (counted over all
stages); matrix rows and metrics at the stage number (0 = the base model).

This module imports neither torch nor accelerate at the top: mcit.config reads its names.
"""
from __future__ import annotations

import difflib
import json
import time
from pathlib import Path
from typing import Any

# Accelerate's tracker names -> the module each needs and how to install it.
TRACKERS = {
    "tensorboard": ("tensorboard", "pip install 'mcit[tensorboard]'"),
    "mlflow": ("mlflow", "pip install 'mcit[mlflow]'"),
    "wandb": ("wandb", "pip install 'mcit[wandb]'"),
    "aim": ("aim", "pip install aim"),
    "comet_ml": ("comet_ml", "pip install comet_ml"),
    "clearml": ("clearml", "pip install clearml"),
    "dvclive": ("dvclive", "pip install dvclive"),
    "swanlab": ("swanlab", "pip install swanlab"),
    "trackio": ("trackio", "pip install trackio"),
}
PROJECT = "mcit"
TRAIN_LOG = "train_log.jsonl"


def unknown_trackers(names: list[str]) -> str | None:
    """The config check of log.report_to: why a name is not a tracker, or None."""
    for name in names:
        if name not in TRACKERS:
            close = difflib.get_close_matches(str(name).lower(), list(TRACKERS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return f"'{name}' is not a tracker{hint}; choose from {', '.join(TRACKERS)}"
    return None


def check_installed(names: list[str]) -> None:
    """ConfigError at the start of a run for a tracker whose package is missing."""
    from accelerate.tracking import get_available_trackers

    from .config import ConfigError

    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in available:
            module, install = TRACKERS[name]
            raise ConfigError(f"log.report_to: tracker '{name}' needs the '{module}' package, which is not "
                              f"installed: {install}")


def hyperparameters(cfg) -> dict[str, Any]:
    """The resolved config, flat (``train.lr``), as trackers take hyper-parameters: scalars as
    they are, null/lists/maps as their JSON text."""
    from functools import reduce

    from .config import config_keys, config_to_dict

    data = config_to_dict(cfg)
    flat: dict[str, Any] = {}
    for key in config_keys(type(cfg)):
        value = reduce(lambda d, k: d[k], key.split("."), data)
        flat[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return flat


class RunTrackers:
    """The run's trackers, started on the Accelerator once the run folder exists."""

    def __init__(self, acc, cfg, run_dir: Path):
        from accelerate.tracking import filter_trackers

        self.acc = acc
        acc.project_configuration.set_directories(str(run_dir))
        acc.project_configuration.logging_dir = str(run_dir / "trackers")
        acc.log_with = filter_trackers(list(cfg.log.report_to), acc.logging_dir)
        try:
            acc.init_trackers(PROJECT, config=hyperparameters(cfg), init_kwargs={
                "mlflow": {"run_name": run_dir.name},
                "wandb": {"name": run_dir.name, "dir": str(run_dir / "trackers")},
            })
        except Exception as exc:  # the tracker's own settings (an MLflow URI, a W&B login): say so in one line
            from .config import ConfigError

            first = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(f"log.report_to: a tracker of {list(cfg.log.report_to)} could not start: "
                              f"{type(exc).__name__}: {first}") from None
        for tracker in acc.trackers:
            if tracker.name == "wandb":  # W&B steps must only grow: each series gets its own x axis
                tracker.tracker.define_metric("train/*", step_metric="train/step")
                tracker.tracker.define_metric("matrix/*", step_metric="stage")
                tracker.tracker.define_metric("metrics/*", step_metric="stage")

    def _log(self, values: dict[str, float], axis: str, step: int) -> None:
        for tracker in self.acc.trackers:
            if tracker.name == "wandb":
                tracker.log({**values, axis: step})
            else:
                tracker.log(values, step=step)

    def log_steps(self, records: list[dict], offset: int) -> None:
        """Per-step training records (train_log.jsonl's), at the run's optimizer step."""
        for r in records:
            values = {f"train/{k}": r[k] for k in ("loss", "task_loss", "method_loss", "lr", "grad_norm")
                      if r.get(k) is not None}
            self._log(values, "train/step", offset + r["step"])

    def log_row(self, view: str, stage: int, row: dict[str, float | None]) -> None:
        """One row of the accuracy matrix (stage 0: the base model), ``view`` "if" or "gk"."""
        values = {f"matrix/{view}/{task}": v for task, v in row.items() if v is not None}
        if values:
            self._log(values, "stage", stage)

    def log_metrics(self, view: str, stage: int, metrics: dict[str, Any]) -> None:
        values = {f"metrics/{view}/{k}": v for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
        if values:
            self._log(values, "stage", stage)

    def finish(self) -> None:
        for tracker in self.acc.trackers:
            tracker.finish()
        self.acc.trackers = []


class TrainLog:
    """``train_log.jsonl`` of one stage and the trackers' per-step scalars.

    Records are buffered and written every ``flush_every`` steps, before an in-task checkpoint
    and at the end; the grad norms stay tensors until then, so the hot loop gains no device sync
    (the loss is already a float there). The file is rewritten whole each time (atomically):
    resuming from an in-task checkpoint keeps the records up to its step and continues."""

    def __init__(self, path: Path | None, trackers: RunTrackers | None = None, step_offset: int = 0,
                 flush_every: int = 100):
        self.path, self.trackers, self.step_offset = path, trackers, step_offset
        self.flush_every = max(1, flush_every)
        self.records: list[dict] = []
        self.pending: list[dict] = []
        self.seconds_before = 0.0
        self.clock = time.monotonic()

    def begin(self, start: int) -> None:
        """Keep the records of the steps before ``start`` (0: a stage started afresh)."""
        kept = []
        if self.path is not None and start > 0 and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill mid-write
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= start:
                    kept.append(record)
        self.records = kept
        self.seconds_before = kept[-1]["seconds"] if kept else 0.0
        self.clock = time.monotonic()
        if self.path is not None:
            self._write()

    def add(self, step: int, task_loss: float, method_loss: float, lr: float, grad_norm) -> None:
        self.pending.append({"step": step, "loss": task_loss + method_loss, "task_loss": task_loss,
                             "method_loss": method_loss, "lr": lr, "grad_norm": grad_norm,
                             "seconds": self.seconds_before + time.monotonic() - self.clock})
        if step % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        norms = [r["grad_norm"] for r in self.pending]
        tensors = [n for n in norms if n is not None and not isinstance(n, (int, float))]
        if tensors:  # one transfer for the whole buffer
            import torch

            values = iter(torch.stack([t.detach().float().reshape(()) for t in tensors]).cpu().tolist())
            norms = [None if n is None else n if isinstance(n, (int, float)) else next(values) for n in norms]
        for r, n in zip(self.pending, norms):
            r["grad_norm"] = n
            r["seconds"] = round(r["seconds"], 4)
        self.records += self.pending
        if self.trackers is not None:
            self.trackers.log_steps(self.pending, self.step_offset)
        self.pending = []
        if self.path is not None:
            self._write()

    def _write(self) -> None:
        from .io import atomic_write_text

        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))


def read_train_log(path: Path) -> list[dict]:
    """A stage's train_log.jsonl (complete lines)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
