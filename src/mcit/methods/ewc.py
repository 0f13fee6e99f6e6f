"""EWC, an addition: the elastic weight consolidation penalty

    L = L_task + (lambda / 2) * sum_k F_k (theta_k - theta*_k)^2

over the trainable parameters of the method it is added to (on sequential LoRA, named alone:
LoRA A/B and, when it trains, the projector; on `full`, every language-model weight).

Fisher. Diagonal empirical Fisher, estimated at the end of each task at the task's final
weights: the mean over `ewc_fisher_samples` training samples of the squared gradient of each
sample's own answer-token loss (mean token NLL over its answer, the same loss fit.py trains on),
one gradient per sample, not per batch (the square of a batch-mean gradient underestimates
the Fisher by roughly the batch size).

Where the samples come from. The hooks never see the processor or the image root, so the
method cannot encode Samples itself; instead `extra_loss`, which fit.py calls with every
encoded micro-batch, keeps the most recent micro-batches of the task (just enough rows). At
the end of the task these rows (a random subset of the task's data, through the seeded
shuffle) are run again at the final weights, one row at a time, for the per-sample
gradients. When a task trains on fewer rows than ewc_fisher_samples, every row it trained on
is used (a sample seen in two epochs then counts twice).

Across tasks. The Fisher is summed over tasks (each task's importance counts in full, as in
EWC's sum of per-task penalties) and the anchor theta* is the weights at the end of the most
recent task (the single-anchor form of online EWC with gamma = 1). Zero penalty on the first
task. Fisher and anchor are the method's `state_dict`, saved with every stage, so a resumed
run continues with the same penalty. A parameter an earlier task trained that is frozen now
(O-LoRA's earlier adapters) is left out of the penalty: it cannot move.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.encode import IGNORE_INDEX
from .base import Addition, TaskContext, add_losses


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean NLL over answer tokens (position i predicts token i + 1), and which rows
    have any answer token."""
    lg, lb = logits[:, :-1].float(), labels[:, 1:]
    mask = lb != IGNORE_INDEX
    nll = F.cross_entropy(lg.transpose(1, 2), lb.clamp(min=0), reduction="none")
    return (nll * mask).sum(1) / mask.sum(1).clamp(min=1), mask.any(1)


def split_rows(batch: dict) -> list[dict] | None:
    """The batch as single-row batches with the right padding cut off, when every tensor is
    per row (LLaVA: pixel_values is (B, 3, H, W)); None when a field is not (Qwen2-VL's
    flattened patches), in which case the caller backpropagates per row through one forward."""
    n = batch["input_ids"].shape[0]
    if any(not torch.is_tensor(v) or v.dim() == 0 or v.shape[0] != n for v in batch.values()):
        return None
    width = batch["input_ids"].shape[1]
    rows = []
    for i in range(n):
        keep = width
        mask = batch.get("attention_mask")
        if mask is not None:
            length = int(mask[i].sum())
            if bool(mask[i, :length].all()):  # right padding: safe to cut
                keep = length
        rows.append({k: (v[i:i + 1, :keep] if v.dim() == 2 and v.shape[1] == width else v[i:i + 1])
                     for k, v in batch.items()})
    return rows


def empirical_fisher(model: torch.nn.Module, batches: list[dict], limit: int) -> tuple[dict[str, torch.Tensor], int]:
    """Mean squared per-sample gradient of the answer loss for every trainable parameter,
    over at most `limit` rows taken from the newest batch backwards."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    count = 0

    def add(loss: torch.Tensor, retain: bool) -> None:
        nonlocal count
        grads = torch.autograd.grad(loss, list(params.values()), retain_graph=retain, allow_unused=True)
        for name, g in zip(params, grads):
            if g is not None:
                sums[name] += g.detach().float() ** 2
        count += 1

    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it will be evaluated
    try:
        for batch in reversed(batches):
            rows = split_rows(batch)
            if rows is not None:  # one forward and one backward per row
                for row in reversed(rows):
                    if count >= limit:
                        break
                    inputs = {k: v for k, v in row.items() if k != "labels"}
                    nll, has = answer_nll(model(**inputs).logits, row["labels"])
                    if bool(has[0]):
                        add(nll[0], retain=False)
            elif count < limit:  # one forward, one backward per row through the shared graph
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                nll, has = answer_nll(model(**inputs).logits, batch["labels"])
                idx = [i for i in reversed(range(len(nll))) if bool(has[i])][: limit - count]
                for k, i in enumerate(idx):
                    add(nll[i], retain=k < len(idx) - 1)
            if count >= limit:
                break
    finally:
        model.train(was_training)
    return {n: s / max(1, count) for n, s in sums.items()}, count


def ewc_penalty(params: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], lam: float) -> torch.Tensor:
    """(lambda / 2) sum F (theta - theta*)^2 over (theta, F, theta*) triples."""
    total = sum((f * (p.float() - a.float()) ** 2).sum() for p, f, a in params)
    return 0.5 * lam * total


class EWC(Addition):
    """The Fisher batches captured in-task go into an in-task checkpoint (task_state_dict), but only
    the main process writes it and each process captured its own rows: with several processes a
    cut stage is redone instead (resumable_mid_task, set per task in before_task)."""

    name = "ewc"
    reads_all_logits = False  # its penalty reads the weights

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)  # settings checked at config load (methods/registry.py)
        self.fisher: dict[str, torch.Tensor] = {}  # summed over finished tasks
        self.anchor: dict[str, torch.Tensor] = {}  # theta* at the end of the last finished task
        self._terms: list | None = None  # (param, F, anchor) for the live model, built per task
        self._batches: list[dict] = []
        self._rows = 0
        self._last = None

    @staticmethod
    def _live(ctx: TaskContext) -> torch.nn.Module:
        return ctx.accelerator.unwrap_model(ctx.model) if ctx.accelerator is not None else ctx.model

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)  # a per-task base (O-LoRA) adds this task's adapter first
        self._batches, self._rows, self._last = [], 0, None
        self.resumable_mid_task = ctx.accelerator is None or ctx.accelerator.num_processes == 1
        self._terms = None
        if self.fisher:
            params = dict(self._live(ctx).named_parameters())
            missing = sorted(set(self.fisher) - set(params))
            if missing:
                raise RuntimeError(f"EWC state names parameters the model does not have: {missing[:5]}")
            # In the model's parameter order, not the dict's (a state read back from safetensors is
            # sorted by name): the penalty's float sum must not depend on how the state was loaded.
            self._terms = [(p, self.fisher[n].to(p.device), self.anchor[n].to(p.device))
                           for n, p in params.items() if n in self.fisher and p.requires_grad]

    def _capture(self, batch: dict) -> None:
        """Keep the newest micro-batches, just enough rows for the Fisher."""
        self._batches.append({k: v.detach() if torch.is_tensor(v) else v for k, v in batch.items()})
        self._rows += len(batch["input_ids"])
        while len(self._batches) > 1 and self._rows - len(self._batches[0]["input_ids"]) >= self.cfg.ewc_fisher_samples:
            self._rows -= len(self._batches.pop(0)["input_ids"])

    def extra_loss(self, ctx: TaskContext, batch: dict, outputs) -> torch.Tensor | None:
        return add_losses(super().extra_loss(ctx, batch, outputs), self._penalty(batch))

    def _penalty(self, batch: dict) -> torch.Tensor | None:
        if torch.is_grad_enabled():  # only batches that are trained on
            self._capture(batch)
        if not self._terms or self.cfg.ewc_lambda == 0:
            return None  # first task: nothing to consolidate yet
        penalty = ewc_penalty(self._terms, self.cfg.ewc_lambda)
        self._last = penalty.detach()
        return penalty

    def own_task_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"batch/{i}/{k}": v for i, b in enumerate(self._batches) for k, v in b.items()}

    def load_own_task_state_dict(self, ctx: TaskContext, state: dict[str, torch.Tensor]) -> None:
        batches: dict[int, dict] = {}
        for key, value in state.items():
            _, i, field = key.split("/", 2)
            batches.setdefault(int(i), {})[field] = value
        self._batches = [batches[i] for i in sorted(batches)]
        self._rows = sum(len(b["input_ids"]) for b in self._batches)

    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)  # an averaging part (ema) first: the Fisher is taken at the stage's weights
        model = self._live(ctx)
        fisher, count = empirical_fisher(model, self._batches, self.cfg.ewc_fisher_samples)
        acc = ctx.accelerator
        if acc is not None and acc.num_processes > 1:  # each process saw its own rows
            fisher = {n: acc.reduce(f, "mean") for n, f in fisher.items()}
        for n, f in fisher.items():
            self.fisher[n] = self.fisher[n] + f.cpu() if n in self.fisher else f.cpu()
        # Updated, not replaced: a parameter frozen now keeps the anchor of the task that trained it.
        self.anchor.update({n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad})
        self._batches, self._rows, self._terms = [], 0, None
        ctx.log["ewc_fisher_rows"] = count
        ctx.log["ewc_fisher_mean"] = float(torch.cat([f.flatten() for f in self.fisher.values()]).mean())
        if self._last is not None:
            ctx.log["ewc_penalty_last"] = float(self._last)

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"fisher/{n}": f for n, f in self.fisher.items()}
        state.update({f"anchor/{n}": a for n, a in self.anchor.items()})
        return state

    def load_own_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.fisher = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("fisher/")}
        self.anchor = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("anchor/")}
        if set(self.fisher) != set(self.anchor):
            raise RuntimeError("EWC state: Fisher and anchor name different parameters")
