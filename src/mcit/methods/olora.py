"""O-LoRA (Wang et al., 2023): a new LoRA per task, earlier ones frozen, and a loss that keeps
the new task's LoRA subspace orthogonal to the earlier ones':

    L = L_task + lambda * sum_{j<t} sum_{adapted layers} sum_{k,l} |(A_t A_j^T)_{kl}|

(A: the r x d_in down-projection; lambda = method.olora_lambda). All task LoRAs are active at
once and summed, in training (earlier ones frozen) and at inference, so no task id is needed.

Built on PEFT's multiple active adapters (the LoRA layer adds B_i A_i x * scale for every
active adapter); the adapter bookkeeping, seeding and checkpoints are shared with the
task-id LoRA (methods/taskid_lora.py, `PerTaskLoRA`).

The projector: one, shared by all tasks and trained in full from task to task as in
sequential LoRA (method.train_projector), since at inference there is no task id to pick a
per-task copy. It is the base model's own projector trained in place (PEFT's modules_to_save
cannot be active for several adapters at once) and saved next to the adapters as
`projector.safetensors`. So the projector, unlike the LoRAs, can still drift and forget.
"""
from __future__ import annotations

from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save

from ..io import atomic_write_bytes
from ..models.adapters import is_projector
from .taskid_lora import PerTaskLoRA, unwrap

PROJECTOR_FILE = "projector.safetensors"


def orthogonality_loss(model: torch.nn.Module, current: str, previous: list[str]) -> torch.Tensor:
    """sum over adapted layers and over `previous` adapters j of sum |A_current A_j^T|.

    Zero (a 0-dim tensor) when there is no earlier adapter. Earlier A's are concatenated so each
    layer costs one (r x d_in) @ (d_in x r * len(previous)) product."""
    total = None
    for layer in model.modules():
        if not isinstance(layer, LoraLayer) or current not in layer.lora_A:
            continue
        olds = [layer.lora_A[j].weight for j in previous if j in layer.lora_A]
        if not olds:
            continue
        a = layer.lora_A[current].weight
        term = (a @ torch.cat(olds).to(a.dtype).T).abs().sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros((), device=next(model.parameters()).device)
    return total


class OLoRA(PerTaskLoRA):
    name = "olora"
    reads_all_logits = False  # its loss reads the adapters
    _orth_last = None  # the last orthogonality term (detached), logged at the end of a task

    def lora_config(self, model):
        config = super().lora_config(model)
        config.modules_to_save = None  # the projector is shared and trained in place (see above)
        return config

    def train_active(self, current: str) -> list[str]:
        return list(self.adapters)  # earlier tasks' LoRAs stay in the forward pass, frozen

    def inference_active(self) -> list[str]:
        return list(self.adapters)

    def shared_projector_trains(self) -> bool:
        return bool(self.cfg.train_projector)

    def before_task(self, ctx) -> None:
        super().before_task(ctx)
        self._orth_last = None

    def extra_loss(self, ctx, batch, outputs):
        lam = float(self.cfg.olora_lambda)
        names = list(self.adapters)
        if ctx.index == 0 or lam == 0.0 or len(names) < 2:
            return None
        orth = orthogonality_loss(unwrap(ctx), names[-1], names[:-1])
        self._orth_last = orth.detach()
        if "orth_loss_first" not in ctx.log:  # .item() once, not every step (a GPU sync)
            ctx.log["orth_loss_first"] = float(self._orth_last)
        return lam * orth

    def after_task(self, ctx) -> None:
        if self._orth_last is not None:
            ctx.log["orth_loss_last"] = float(self._orth_last)  # sum |A_t A_j^T|, before lambda

    def save_extra(self, model, directory: Path) -> None:
        weights = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if is_projector(n)}
        atomic_write_bytes(Path(directory) / PROJECTOR_FILE, save(weights))

    def load_extra(self, model, directory: Path) -> None:
        saved = load_file(str(Path(directory) / PROJECTOR_FILE))
        params = {n: p for n, p in model.named_parameters() if is_projector(n)}
        if set(saved) != set(params):
            raise RuntimeError(f"{directory}: projector keys differ from the model's "
                               f"(saved {sorted(saved)[:3]}, model {sorted(params)[:3]})")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
