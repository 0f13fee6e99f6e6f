"""Fitting one task: the inner loop every stage (and the base-model stage) runs.

Read it top to bottom: batches -> forward -> method's extra loss -> backward (with
accumulation) -> clip -> optimizer step -> method's after_step -> next. Accelerate supplies
devices and processes; the method hooks are the only variation point.
"""
from __future__ import annotations

import inspect
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType, set_seed
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from . import checkpoint as ckpt
from .data.encode import collate
from .distributed import backward, global_loss_kwargs, mean_over_processes
from .methods.base import Method, TaskContext, needs_all_logits
from .progress import Progress, note
from .threads import ThreadGovernor
from .tracking import TrainLog


def steps_for(tc, n_items: int, task: str | None = None) -> int:
    """Optimizer steps for one task: its own budget (task_steps, task_epochs) if it has one,
    else the run's fixed budget, else epochs over the global batch. The global batch is
    batch_size x grad_accum whatever the number of processes, so a run takes the same steps on
    1 or N processes."""
    if task in tc.task_steps:
        return int(tc.task_steps[task])
    if tc.steps_per_task and task not in tc.task_epochs:
        return int(tc.steps_per_task)
    global_batch = tc.batch_size * tc.grad_accum
    return max(1, math.ceil(tc.task_epochs.get(task, tc.epochs) * n_items / global_batch))


def adamw(groups: list[dict], weight_decay: float) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (one pass over all parameters instead of a chain of
    per-tensor ops: 4.1 -> 1.3 ms a LoRA step, issue 15) where every parameter's device has one; the
    same update up to float rounding."""
    params = [p for g in groups for p in g["params"]]
    fusable = bool(params) and all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=fusable or None)


_FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps")  # torch 2.13's fused AdamW devices (cpu since 2.4)


def answer_forward(forward, batch: dict, num_items_in_batch=None):
    """The model's output and causal-LM loss with logits computed only at the positions whose next
    token is scored (an answer token in some row), not at every position: the loss is the same sum
    over the same tokens as transformers' (float rounding aside), at a fraction of the LM head and
    its softmax (image and prompt tokens are most of a sequence). ``forward`` must take
    ``logits_to_keep`` as a tensor of positions (transformers' causal-LM and image-text models do)."""
    labels = batch["labels"]
    positions = (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)  # position i predicts token i + 1
    out = forward(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=positions)
    logits, targets = out.logits.float(), labels[:, positions + 1]
    if num_items_in_batch is None:  # transformers' reduction: the mean over scored tokens ...
        out.loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    else:  # ... or, across processes, the sum over the global count (mcit.distributed.global_loss_kwargs)
        out.loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
                                   reduction="sum") / num_items_in_batch
    return out


def takes_logits_to_keep(model) -> bool:
    """Whether the (unwrapped, PEFT-stripped) model's forward accepts ``logits_to_keep``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _batches(loader: DataLoader):
    """Endless iterator that reshuffles (deterministically, via the seeded sampler) each epoch."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def train_task(model, method: Method, ctx: TaskContext, items: list[dict], run_cfg, pad_id: int,
               seed: int, desc: str, steps: int | None = None, on_step=None,
               checkpoint: Path | None = None, resume_from: Path | None = None,
               train_log: TrainLog | None = None, whole: torch.nn.Module | None = None) -> dict:
    """Train `model` on encoded `items` for one task (`steps` optimizer steps, default: the
    task's budget); returns loss statistics. `on_step(step)`, if given, runs after each
    optimizer step (1-based; EMT tracking evaluates there). With `checkpoint` (the stage
    folder) an in-task checkpoint is saved every train.checkpoint_every steps; `resume_from`
    (a checkpoint folder) continues from the step it was saved at. ``train_log`` gets one record
    per optimizer step (loss, its task and method parts, learning rate, gradient norm). ``whole``
    (train.engine=fsdp): the unsharded model `model` is a sharded copy of; checkpoints are written
    from it and read into it."""
    tc = run_cfg.train
    acc = ctx.accelerator
    if acc.num_processes > 1 and not getattr(acc, "split_batches", False):
        raise RuntimeError("train.batch_size is the global batch: the Accelerator must split batches "
                           "(DataLoaderConfiguration(split_batches=True)), as mcit.train creates it")
    set_seed(seed)
    # One loader over the global batch; the accelerator gives each process its slice of every
    # batch, so the processes' shards together are the single-process batch, same seeded order.
    loader = DataLoader(
        items,
        batch_size=tc.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=lambda b: collate(b, pad_id),
        drop_last=len(items) >= tc.batch_size,
    )
    total = steps if steps is not None else steps_for(tc, len(items), ctx.task)
    groups = method.param_groups(model, run_cfg)
    params = [p for g in groups for p in g["params"]]
    optimizer = adamw(groups, tc.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(tc.warmup_ratio * total), total)
    if acc.distributed_type == DistributedType.DEEPSPEED:  # train.engine=deepspeed-*: the engine is
        # built from the model and this task's optimizer together (mcit.distributed)
        model, optimizer, loader, scheduler = acc.prepare(model, optimizer, loader, scheduler)
    else:
        optimizer, loader, scheduler = acc.prepare(optimizer, loader, scheduler)

    governor = ThreadGovernor(tc.threads, hint=note if acc.num_processes == 1 and acc.is_main_process else None)
    governor.start()
    forward = _compiled(model) if tc.compile else model
    # Logits only where an answer token is scored, unless a method reads them all (LwF) or the model
    # cannot be asked for some positions.
    answers_only = not needs_all_logits(method) and takes_logits_to_keep(acc.unwrap_model(model))
    model.train()
    batches = _batches(loader)
    losses, extras = [], []  # the task's own loss and the method's extra term, logged apart
    start = 0
    if resume_from is not None:
        live = acc.unwrap_model(model)
        state = ckpt.load(resume_from, acc, model=live, method=method, ctx=ctx, optimizer=optimizer,
                          scheduler=scheduler, whole=whole)
        start, losses, extras = state["step"], list(state["losses"]), list(state["extras"])
        for _ in range(start * tc.grad_accum):  # the sampler's position: replay the seeded order
            next(batches)
        ckpt.restore_rng(resume_from, state, acc.process_index)  # after the replay, as at the save
    every = tc.checkpoint_every if checkpoint is not None else 0
    if train_log is not None:
        train_log.begin(start)
    progress = Progress(desc, total, initial=start, enabled=acc.is_main_process,
                        samples_per_unit=tc.batch_size * tc.grad_accum)
    first_step_s = None
    for step in range(start, total):
        step_started = time.perf_counter()
        step_loss = step_extra = 0.0
        for micro in range(tc.grad_accum):
            batch = next(batches)
            # Only the last micro-batch synchronises gradients across processes.
            sync = nullcontext() if micro == tc.grad_accum - 1 else acc.no_sync(model)
            with sync:
                loss_kwargs = global_loss_kwargs(acc, batch)
                out = (answer_forward(forward, batch, **loss_kwargs) if answers_only
                       else forward(**batch, **loss_kwargs))
                loss = out.loss
                extra = method.extra_loss(ctx, batch, out)
                if extra is not None:
                    step_extra += extra.detach().float().item() / tc.grad_accum
                    loss = loss + extra
                backward(acc, loss, micro == tc.grad_accum - 1, tc.grad_accum)
            step_loss += mean_over_processes(acc, out.loss.detach().float()) / tc.grad_accum
        # The norm before clipping, kept as a tensor: read only when the log is written.
        grad_norm = acc.clip_grad_norm_(params, tc.max_grad_norm) if tc.max_grad_norm else None
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler moves it after)
        optimizer.step()
        scheduler.step()
        ctx.step = step + 1
        # Gradients are still there (LCIA needs them); under DDP they are the all-reduced ones:
        # the last micro-batch's backward averaged them across processes before clipping.
        method.after_step(ctx)
        optimizer.zero_grad(set_to_none=True)
        governor.tick()
        if first_step_s is None:
            first_step_s = time.perf_counter() - step_started
        losses.append(step_loss)
        extras.append(step_extra)
        if train_log is not None:
            train_log.add(ctx.step, step_loss, step_extra, lr, grad_norm)
        if on_step is not None:
            on_step(ctx.step)
        if every and ctx.step % every == 0:
            if train_log is not None:  # the log reaches the checkpoint's step: a resume continues it
                train_log.flush()
            ckpt.save(checkpoint, acc, model=acc.unwrap_model(model), method=method, ctx=ctx, optimizer=optimizer,
                      scheduler=scheduler, step=ctx.step, batches=ctx.step * tc.grad_accum, losses=losses,
                      extras=extras, whole=whole)
        recent = losses[-10:]
        progress.update(loss=sum(recent) / len(recent), lr=lr)
    progress.close(loss=sum(losses[-10:]) / max(1, len(losses[-10:])))
    if train_log is not None:
        train_log.flush()
    _release(acc, optimizer, scheduler, loader, model)
    model.eval()
    k = max(1, len(losses) // 10)
    stats = {"steps": total, "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k}
    if tc.compile and first_step_s is not None:  # torch.compile compiles in the first step
        stats["first_step_seconds_with_compile"] = round(first_step_s, 2)
    if any(extras):
        stats |= {"extra_loss_first": sum(extras[:k]) / k, "extra_loss_last": sum(extras[-k:]) / k}
    return stats


def _compiled(model):
    """torch.compile of the model's forward (inductor); the module itself, its parameters and
    state dict stay the uncompiled ones, so saving and checkpoints are unchanged."""
    return torch.compile(model)


def _release(acc, optimizer, scheduler, loader, model) -> None:
    """Forget this task's optimizer state. Accelerate keeps a reference to everything it
    prepared and has no public call to drop one object (free_memory drops the model too), so
    without this every task's AdamW state would stay alive until the run ends."""
    acc._optimizers = [o for o in acc._optimizers if o is not optimizer]
    acc._schedulers = [s for s in acc._schedulers if s is not scheduler]
    acc._dataloaders = [d for d in acc._dataloaders if d is not loader]
    if getattr(acc, "deepspeed_engine_wrapped", None) is not None:  # this task's DeepSpeed engine
        # Not destroyed here: its fp32 master weights are gathered after the task (mcit.train)
        acc._models = [m for m in acc._models if m is not model]
        acc.deepspeed_engine_wrapped = None  # the next task's prepare wraps its own engine
