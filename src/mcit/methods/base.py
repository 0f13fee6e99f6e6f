"""The one interface every continual-tuning method implements.

The training loop (mcit.train) calls these hooks and nothing else; it never asks which
method it runs. A method may:

    setup(model, cfg)            once, before the stream: wrap the model (adapters), freeze parts;
                                 returns the model to train.
    param_groups(model, cfg)     the trainable parameters, as AdamW parameter groups.
    before_task(ctx)             at the start of each task (new adapter, snapshot old weights, ...).
    extra_loss(ctx, batch, out)  an added loss term (EWC, LwF, O-LoRA), or None.
    after_step(ctx)              after each optimizer step, gradients still present (EMA, LCIA).
    after_task(ctx)              at the end of each task, before the stage is saved.
    train_samples(ctx, samples)  the samples to train on for this task (replay mixes old ones in).
    eval_routes(model, task, samples)
                                 at evaluation: which subset of the test samples is answered
                                 under which adapter setting (task id, per-sample routing).
    state_dict() / load_state_dict(sd), json_state() / load_json_state(d)
                                 extra tensors (safetensors) and JSON state saved with every
                                 stage, so a stage can be evaluated or a run resumed.
    task_state_dict() / load_task_state_dict(ctx, sd), resumable_mid_task
                                 state that changes within a task, for in-task checkpoints
                                 (train.checkpoint_every); see below.
    save_model(model, dir) / load_model(model, dir)
                                 how a stage's weights are written (full weights or adapters).

Hooks default to doing nothing, so a method only writes what it changes.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models.adapters import is_projector


@dataclass
class TaskContext:
    """What a hook may look at: the task, its position in the stream, the live model."""

    task: str
    index: int  # 0-based position in the stream
    tasks: list[str]  # the whole stream, in order
    model: torch.nn.Module
    accelerator: Any
    step: int = 0  # optimizer steps done in this task
    log: dict[str, Any] = field(default_factory=dict)  # per-task scalars a method wants saved
    series: dict[str, list] = field(default_factory=dict)  # per-step records, saved as <stage>/<name>.jsonl


class Method:
    name = "base"
    joint = False  # True: one stage on the union of all tasks (multitask), not a sequence

    def __init__(self, cfg):
        self.cfg = cfg  # the MethodConfig

    def setup(self, model: torch.nn.Module, run_cfg) -> torch.nn.Module:
        return model

    def param_groups(self, model: torch.nn.Module, run_cfg) -> list[dict]:
        """Trainable parameters; the projector may get its own learning rate (LLaVA recipe)."""
        tc = run_cfg.train
        proj, rest = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (proj if is_projector(name) else rest).append(p)
        groups = [{"params": rest, "lr": tc.lr}]
        if proj:
            groups.append({"params": proj, "lr": tc.projector_lr or tc.lr})
        return [g for g in groups if g["params"]]

    def before_task(self, ctx: TaskContext) -> None:
        pass

    def train_samples(self, ctx: TaskContext, samples: list) -> list:
        return samples

    def extra_loss(self, ctx: TaskContext, batch: dict, outputs) -> torch.Tensor | None:
        return None

    def after_step(self, ctx: TaskContext) -> None:
        pass

    def after_task(self, ctx: TaskContext) -> None:
        pass

    def eval_routes(self, model: torch.nn.Module, task: str, samples: list) -> list[tuple[list, Any]]:
        """How to evaluate `samples` of `task`: (subset, context manager under which the model
        answers that subset) pairs covering every sample once. Default: all, model as it is.
        Methods that pick an adapter per task or per sample (task-id LoRA, LCIA groups) route here."""
        return [(samples, nullcontext())]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensor state saved with each stage (safetensors) and restored on resume."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def json_state(self) -> dict:
        """JSON-able state saved with each stage (e.g. replay buffer ids, instruction groups)."""
        return {}

    def load_json_state(self, state: dict) -> None:
        pass

    # In-task checkpoints (train.checkpoint_every) save the weights, the optimizer and the state
    # above. A method whose state also changes *within* a task (an EMA shadow, captured batches)
    # saves that here, or sets resumable_mid_task = False: a stage it was cut off in is then
    # redone from its start, as without checkpoints.
    resumable_mid_task = True

    def task_state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_task_state_dict(self, ctx: TaskContext, state: dict[str, torch.Tensor]) -> None:
        pass

    def save_model(self, model: torch.nn.Module, directory: Path) -> None:
        model.save_pretrained(directory, safe_serialization=True)

    def load_model(self, model: torch.nn.Module, directory: Path) -> None:
        raise NotImplementedError
