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
    plan(tasks)                  the stages: (name, tasks trained), one per task or one joint stage.
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

A method is a *base* (what trains: the model set-up, trainable parameters, saving, routing) or
an `Addition` (what it adds to training: samples, a loss, weight averaging), which wraps the
method it is added to (`inner`) and runs the inner hook first in every hook.
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
    rewrites_weights = False  # replaces the live weights at the end of a task (an EMA); at most one part may
    # A method from outside mcit may declare its settings: a dataclass of mcit.methods.setting
    # fields, set under method.options and read as self.options.<field>; the methods it cannot
    # be combined with, `refuses = {name: reason}`; and `check_config(cfg)`, a static method
    # returning why the method section does not suit it, or None (see methods/registry.py).
    settings: type | None = None
    # Whether extra_loss reads outputs.logits at every position. False lets the training loop compute
    # the logits only where an answer token is scored (mcit.fit.answer_forward). None: decided from the
    # code: a method that overrides extra_loss without saying gets every position's logits.
    reads_all_logits: bool | None = None

    def __init__(self, cfg):
        self.cfg = cfg  # the MethodConfig
        if self.settings is not None:
            from .registry import options_of

            self.options = options_of(type(self), cfg)

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

    def plan(self, tasks: list[str]) -> list[tuple[str, list[str]]]:
        """The stages of a run over ``tasks``: (stage name, tasks it trains). One stage per task,
        in order; a joint method (multitask) trains them all in one stage."""
        return [("multitask", list(tasks))] if self.joint else [(t, [t]) for t in tasks]


def needs_all_logits(method: Method) -> bool:
    """True if any part of ``method`` (an addition and the methods inside it) reads every logit."""
    part = method
    while part is not None:
        reads = part.reads_all_logits
        if reads is None:
            reads = type(part).extra_loss not in (Method.extra_loss, Addition.extra_loss)
        if reads:
            return True
        part = getattr(part, "inner", None)
    return False


def add_losses(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a + b


class Addition(Method):
    """What a method adds to the training of another (`inner`: a base, or additions around one).

    Every hook runs the inner method's first, then the addition's own part: subclasses call
    super() first (extra_loss: `add_losses(super().extra_loss(...), own)`). Setting up the model,
    the trainable parameters, saving, loading and routing at evaluation are the inner method's.

    State: the inner method's keys as they are, the addition's under its namespace
    ("ewc/fisher/..."; none for a method named alone, `method.name=ewc`, which keeps the layout
    of the runs written before methods composed). Subclasses implement own_state_dict,
    own_json_state, own_task_state_dict and their load_ counterparts.
    """

    def __init__(self, cfg, inner: Method, namespace: str = ""):
        super().__init__(cfg)
        self.inner, self.namespace = inner, namespace
        self._resumable = True

    @property
    def joint(self) -> bool:
        return self.inner.joint

    # An in-task checkpoint resumes exactly only if every part's does.
    @property
    def resumable_mid_task(self) -> bool:
        return self._resumable and self.inner.resumable_mid_task

    @resumable_mid_task.setter
    def resumable_mid_task(self, value: bool) -> None:
        self._resumable = value

    def setup(self, model, run_cfg):
        return self.inner.setup(model, run_cfg)

    def param_groups(self, model, run_cfg):
        return self.inner.param_groups(model, run_cfg)

    def before_task(self, ctx):
        self.inner.before_task(ctx)

    def train_samples(self, ctx, samples):
        return self.inner.train_samples(ctx, samples)

    def extra_loss(self, ctx, batch, outputs):
        return self.inner.extra_loss(ctx, batch, outputs)

    def after_step(self, ctx):
        self.inner.after_step(ctx)

    def after_task(self, ctx):
        self.inner.after_task(ctx)

    def eval_routes(self, model, task, samples):
        return self.inner.eval_routes(model, task, samples)

    def save_model(self, model, directory):
        self.inner.save_model(model, directory)

    def load_model(self, model, directory):
        self.inner.load_model(model, directory)

    # -- state: the inner method's and this addition's, apart --------------------------------
    def _join(self, inner: dict, own: dict) -> dict:
        own = {self.namespace + k: v for k, v in own.items()}
        clash = sorted(set(inner) & set(own))
        if clash:
            raise RuntimeError(f"{self.name}: state keys {clash[:3]} clash with the method it is added to")
        return {**inner, **own}

    def _split(self, state: dict) -> tuple[dict, dict]:
        """(inner's part, own part without the namespace)."""
        if not self.namespace:  # named alone: on lora, which keeps no state, so all of it is ours
            return {}, dict(state)
        n = len(self.namespace)
        return ({k: v for k, v in state.items() if not k.startswith(self.namespace)},
                {k[n:]: v for k, v in state.items() if k.startswith(self.namespace)})

    def state_dict(self):
        return self._join(self.inner.state_dict(), self.own_state_dict())

    def load_state_dict(self, state):
        inner, own = self._split(state)
        self.inner.load_state_dict(inner)
        self.load_own_state_dict(own)

    def json_state(self):
        return self._join(self.inner.json_state(), self.own_json_state())

    def load_json_state(self, state):
        inner, own = self._split(state)
        self.inner.load_json_state(inner)
        self.load_own_json_state(own)

    def task_state_dict(self):
        return self._join(self.inner.task_state_dict(), self.own_task_state_dict())

    def load_task_state_dict(self, ctx, state):
        inner, own = self._split(state)
        self.inner.load_task_state_dict(ctx, inner)
        self.load_own_task_state_dict(ctx, own)

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_own_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def own_json_state(self) -> dict:
        return {}

    def load_own_json_state(self, state: dict) -> None:
        pass

    def own_task_state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_own_task_state_dict(self, ctx: TaskContext, state: dict[str, torch.Tensor]) -> None:
        pass
