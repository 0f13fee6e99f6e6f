"""The loss curve of a run: every stage's train_log.jsonl end to end, stage boundaries marked.

``loss_curve.png`` in the run folder: the training loss per optimizer step (counted over the
whole run), the task's own loss beside it where the method adds a term (EWC, LwF, O-LoRA), a
dashed line where each stage starts, labelled with the stage's task, and the learning rate on
a second axis below.
"""
from __future__ import annotations

import io
from pathlib import Path

from mcit.io import atomic_write_bytes
from mcit.tracking import TRAIN_LOG, read_train_log

LOSS_CURVE = "loss_curve.png"


def stage_logs(stage_folders: list[tuple[str, Path]]) -> list[tuple[str, list[dict]]]:
    """(stage name, its records) for the stages that have a train log, in order."""
    return [(name, read_train_log(folder / TRAIN_LOG)) for name, folder in stage_folders
            if (folder / TRAIN_LOG).is_file()]


def loss_curve_png(logs: list[tuple[str, list[dict]]], title: str) -> bytes:
    # The object-oriented API with an explicit Agg canvas, as report.matrix: no global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5), dpi=100)
    FigureCanvasAgg(fig)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    offset = 0
    with_method_loss = any(r.get("method_loss") for _, records in logs for r in records)
    for n, (name, records) in enumerate(logs):
        steps = [offset + r["step"] for r in records]
        first = n == 0
        loss_ax.plot(steps, [r["loss"] for r in records], color="C0", lw=1, label="loss" if first else None)
        if with_method_loss:
            loss_ax.plot(steps, [r["task_loss"] for r in records], color="C1", lw=1,
                         label="task loss" if first else None)
        lr_ax.plot(steps, [r["lr"] for r in records], color="C2", lw=1)
        for ax in (loss_ax, lr_ax):  # between the last step before the stage and its first
            ax.axvline(offset + 0.5, color="grey", ls="--", lw=0.8)
        loss_ax.text(offset + 0.5, 1.0, f" {name}", transform=loss_ax.get_xaxis_transform(), rotation=90,
                     va="top", ha="left", fontsize=8, color="grey")
        offset += records[-1]["step"] if records else 0
    loss_ax.set_ylabel("loss")
    loss_ax.set_title(title)
    if logs:
        loss_ax.legend(loc="upper right", fontsize=8)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step (whole run)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_loss_curve(run_dir: Path, stage_folders: list[tuple[str, Path]], title: str) -> Path | None:
    """Writes <run_dir>/loss_curve.png; None where no stage has a train log."""
    logs = stage_logs(stage_folders)
    if not logs:
        return None
    return atomic_write_bytes(run_dir / LOSS_CURVE, loss_curve_png(logs, title))
