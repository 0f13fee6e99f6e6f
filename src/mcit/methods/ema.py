"""EMA, an addition: an exponential moving average of the trainable weights (on sequential LoRA
when named alone, `method.name=ema`).

A shadow copy theta* of the trainable parameters (LoRA adapter and, when it trains, the
projector) is taken after the first optimizer step of each task; after every later step

    theta* = (1 - a) theta* + a theta,      a = method.ema_weight

(default 0.03, tuned on coin-mini; the usual 0.01 is a decay of 0.99)

and at the end of the task the shadow replaces the live weights. The EMA state lives for one
task only: a stage is saved after the shadow was written back, and an in-task checkpoint
carries the shadow (task_state_dict), so a cut stage continues where it was.

`ParameterShadow` is the shared machinery (LCIA's balanced EMA uses it with one coefficient
per tensor): a list of live tensors, their shadows, and updates done with torch._foreach ops,
so a step costs a handful of fused kernels, not a Python loop over elements.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..distributed import is_sharded, local_shard
from .base import Addition, TaskContext

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class ParameterShadow:
    """Shadow copies of a fixed list of parameters.

    Shadows of half-precision parameters are kept in float32: an update of a = 0.01 times a
    small drift is below bf16's resolution and would be lost. The live tensors are detached
    views taken once; the optimizer updates the parameters in place, so they stay current.
    """

    def __init__(self, named_params: Sequence[tuple[str, torch.nn.Parameter]]):
        self.names = [n for n, _ in named_params]
        # train.engine=fsdp: each process averages its own shard of every parameter
        self.live = [local_shard(p.detach()) for _, p in named_params]
        self.params = [p for _, p in named_params]
        self.sharded = any(is_sharded(p) for p in self.params)
        with torch.no_grad():
            self.shadow = [x.to(torch.float32 if x.dtype in _LOW_PRECISION else x.dtype, copy=True)
                           for x in self.live]
        # lerp needs matching dtypes; with mixed ones the update goes through a difference.
        self._same_dtype = all(s.dtype == x.dtype for s, x in zip(self.shadow, self.live))

    def __len__(self) -> int:
        return len(self.live)

    @torch.no_grad()
    def drift(self) -> list[torch.Tensor]:
        """theta - theta*, one new tensor per parameter (in the shadow's precision)."""
        return torch._foreach_sub(self.live, self.shadow)

    @torch.no_grad()
    def update(self, weight: float) -> None:
        """theta* <- (1 - weight) theta* + weight theta, the same weight for every tensor."""
        if not self.live:
            return
        if self._same_dtype:
            torch._foreach_lerp_(self.shadow, self.live, weight)
        else:
            torch._foreach_add_(self.shadow, self.drift(), alpha=weight)

    @torch.no_grad()
    def update_with(self, drift: list[torch.Tensor], weights: list[float]) -> None:
        """theta* <- theta* + w_i (theta - theta*) per tensor, given drift = theta - theta*
        (already computed by the caller; it is scaled in place)."""
        if not self.live:
            return
        torch._foreach_mul_(drift, weights)
        torch._foreach_add_(self.shadow, drift)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadows for an in-task checkpoint, as ``shadow/<parameter name>``."""
        return {f"shadow/{n}": s for n, s in zip(self.names, self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Shadows from :meth:`state_dict` (other keys in ``state`` are ignored); the parameter
        names must be the same set."""
        saved = {k.removeprefix("shadow/"): v for k, v in state.items() if k.startswith("shadow/")}
        if set(saved) != set(self.names):
            diff = sorted(set(saved) ^ set(self.names))
            raise RuntimeError(f"in-task checkpoint: the saved EMA shadows name other parameters ({diff[:3]})")
        for name, shadow in zip(self.names, self.shadow):
            shadow.copy_(saved[name])

    @torch.no_grad()
    def copy_to_live(self) -> None:
        if self.live:
            torch._foreach_copy_(self.live, self.shadow)  # copy_ casts back to the parameter dtype


def trainable_named_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters the optimizer updates (named_parameters already lists a shared one once)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def unwrap(ctx: TaskContext) -> torch.nn.Module:
    acc = ctx.accelerator
    return acc.unwrap_model(ctx.model) if acc is not None else ctx.model


class EMA(Addition):
    name = "ema"
    rewrites_weights = True  # runs right after the base, so other additions see the averaged weights

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)  # settings checked at config load (methods/registry.py)
        self.shadow: ParameterShadow | None = None
        self.updates = 0

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        self.shadow, self.updates = None, 0

    def after_step(self, ctx: TaskContext) -> None:
        super().after_step(ctx)
        if self.shadow is None:
            # Taken after the first step (the spec): theta*_1 = theta_1. Collected here, not in
            # before_task, so the list is exactly what this task's optimizer trains.
            self.shadow = ParameterShadow(trainable_named_parameters(unwrap(ctx)))
            return
        self.shadow.update(self.cfg.ema_weight)
        self.updates += 1

    def own_task_state_dict(self) -> dict[str, torch.Tensor]:
        if self.shadow is None:  # before the task's first step
            return {}
        return {**self.shadow.state_dict(), "updates": torch.tensor(self.updates)}

    def load_own_task_state_dict(self, ctx: TaskContext, state: dict[str, torch.Tensor]) -> None:
        if not state:
            return
        self.shadow = ParameterShadow(trainable_named_parameters(unwrap(ctx)))  # the restored weights
        self.shadow.load_state_dict(state)
        self.updates = int(state["updates"])

    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)
        if self.shadow is None:
            return
        self.shadow.copy_to_live()
        ctx.log["ema"] = {"weight": self.cfg.ema_weight, "updates": self.updates, "tensors": len(self.shadow),
                          "elements": sum(p.numel() for p in self.shadow.params)}
        self.shadow = None  # the shadow is per task; free it before the stage is evaluated
