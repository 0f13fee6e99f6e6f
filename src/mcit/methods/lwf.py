"""LwF, an addition: distillation from the previous stage's model on the current task's inputs
(on sequential LoRA when named alone, `method.name=lwf`):

    L = L_task + lwf_lambda * T^2 * KL(softmax(z_old / T) || softmax(z_new / T))

averaged over the answer-token positions of the batch (labels != -100, shifted like the LM
loss: the logits at position i predict token i + 1); prompt, image and padding positions do
not count. The T^2 factor keeps the gradient scale independent of T (Hinton et al.). Zero on
the first task.

The teacher. Only the trainable weights (LoRA A/B, the projector copy) differ between the
previous stage and the live model; the frozen base is shared. So `before_task` (after the inner
method's, which may add this task's adapter: O-LoRA's new one starts at B = 0) keeps a
detached copy of just those tensors, and the teacher pass is the live model run through
`torch.func.functional_call` with the copies substituted for the trainable parameters, under
no_grad and in eval mode (no dropout). No second model, no second PEFT adapter (which would
also be saved with every stage), and no in-place weight swap (which would break autograd for
the student graph already built). Cost: one copy of the trainable weights and one extra
forward per micro-batch. Nothing to save: on resume the previous stage's weights are loaded
before `before_task`, which snapshots them again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..data.encode import IGNORE_INDEX
from .base import Addition, TaskContext, add_losses


def distillation_kl(new_logits: torch.Tensor, old_logits: torch.Tensor, labels: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """T^2 * mean over answer positions of KL(p_old,T || p_new,T); 0 (with a graph) when the
    batch has no answer token."""
    mask = labels[:, 1:] != IGNORE_INDEX
    if not bool(mask.any()):
        return new_logits.sum() * 0.0
    new = new_logits[:, :-1][mask].float() / temperature
    old = old_logits[:, :-1][mask].float() / temperature
    kl = F.kl_div(F.log_softmax(new, -1), F.log_softmax(old, -1), log_target=True, reduction="batchmean")
    return temperature ** 2 * kl


class LwF(Addition):
    name = "lwf"
    reads_all_logits = True  # distils the previous stage's logits at every answer position

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)  # settings checked at config load (methods/registry.py)
        self.teacher: dict[str, torch.Tensor] | None = None
        self._last = None

    @staticmethod
    def _live(ctx: TaskContext) -> torch.nn.Module:
        return ctx.accelerator.unwrap_model(ctx.model) if ctx.accelerator is not None else ctx.model

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        self._last = None
        if ctx.index == 0:
            self.teacher = None
            return
        self.teacher = {n: p.detach().clone() for n, p in self._live(ctx).named_parameters() if p.requires_grad}

    def teacher_logits(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}  # no loss for the teacher
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return functional_call(model, self.teacher, args=(), kwargs=inputs).logits
        finally:
            model.train(was_training)

    def extra_loss(self, ctx: TaskContext, batch: dict, outputs) -> torch.Tensor | None:
        return add_losses(super().extra_loss(ctx, batch, outputs), self._distillation(ctx, batch, outputs))

    def _distillation(self, ctx: TaskContext, batch: dict, outputs) -> torch.Tensor | None:
        if self.teacher is None or self.cfg.lwf_lambda == 0:
            return None
        old = self.teacher_logits(self._live(ctx), batch)
        kl = distillation_kl(outputs.logits, old, batch["labels"], self.cfg.lwf_temperature)
        self._last = kl.detach()
        return self.cfg.lwf_lambda * kl

    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)
        if self._last is not None:
            ctx.log["lwf_kl_last"] = float(self._last)
        self.teacher = None  # free the copy between tasks
