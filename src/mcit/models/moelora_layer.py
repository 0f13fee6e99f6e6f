"""MoELoRA layer: a frozen nn.Linear plus E LoRA experts mixed by a per-token softmax router.

    y = W0 x + sum_e g_e(x) * (alpha / r) * B_e A_e dropout(x),   g(x) = softmax(W_g x)

Each expert has rank r_e = r / E, so the total rank r equals a plain LoRA's (CoIN's MoELoRA,
shared/reference/methods.md). Written by hand because PEFT has no mixture-of-LoRA-experts layer.

Parameter layout (one layout for both implementations, so their state dicts are interchangeable):

    lora_A         (E * r_e, in)   expert e's A is rows    [e * r_e, (e + 1) * r_e)
    lora_B         (out, E * r_e)  expert e's B is columns [e * r_e, (e + 1) * r_e)
    router.weight  (E, in)         bias-free

This is a rank-r LoRA's layout with the rank split into E slices, so E = 1 is exactly LoRA.

Two implementations compute the same function:
  * `moelora_reference`: a Python loop over experts (CoIN's way), easy to check by eye;
  * `moelora_fused`: one matmul for all A, the gates broadcast onto the rank slices, one matmul
    for all B: a rank-r LoRA's FLOPs plus the router.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .fused_lora import add_low_rank, frozen_float32_training

IMPLS = ("fused", "reference")


def route(logits: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(gates, probs) from router logits (..., E).

    probs = softmax(logits) over all experts (what the load-balancing loss reads); gates = probs
    (dense) or probs kept on the top k experts and renormalised to sum to 1 there, zero elsewhere.
    """
    probs = torch.softmax(logits.float(), dim=-1)  # float32: stable softmax under bf16/fp16
    if top_k is None or top_k >= probs.shape[-1]:
        return probs, probs
    top, idx = probs.topk(top_k, dim=-1)
    gates = torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))
    return gates, probs


def moelora_reference(x: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, gates: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """sum_e gates_e * scale * B_e A_e x, one expert at a time. x (..., in) -> (..., out)."""
    experts = gates.shape[-1]
    r_e = lora_A.shape[0] // experts
    out = x.new_zeros(*x.shape[:-1], lora_B.shape[0])
    for e in range(experts):
        rows = slice(e * r_e, (e + 1) * r_e)
        expert = F.linear(F.linear(x, lora_A[rows]), lora_B[:, rows])
        out = out + gates[..., e:e + 1] * scale * expert
    return out


def moelora_fused(x: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, gates: torch.Tensor,
                  scale: float, into: torch.Tensor | None = None) -> torch.Tensor:
    """The same sum in two matmuls: (x A^T) has E slices of r_e; each slice is scaled by its
    gate, then one matmul with B adds the experts up. Same FLOPs as one rank-r LoRA. With
    `into` (the base output) the second matmul accumulates into it: no full-size add."""
    experts = gates.shape[-1]
    h = F.linear(x, lora_A)  # (..., E * r_e)
    # The scale rides on the gates (E numbers per token) instead of on the output (out numbers).
    h = h.unflatten(-1, (experts, -1)) * (gates * scale).unsqueeze(-1)
    if into is not None:
        return add_low_rank(into, h.flatten(-2), lora_B, 1.0)
    return F.linear(h.flatten(-2), lora_B)


_KERNELS = {"reference": moelora_reference, "fused": moelora_fused}


class DenseMoELoRA(torch.autograd.Function):
    """The fused layer with dense routing, forward and backward written out:

        y = x W^T + bias + scale * ((x A^T) * g per rank slice) B^T,   g = softmax(x R^T)

    with gradients for x, A, B and the router R (W and bias frozen). Written by hand because
    autograd through `moelora_fused(into=...)` records the in-place accumulate into the base
    output as a copy-on-write of it (a full-size copy of the gradient per wrapped layer) and sums
    the input gradient from three full-size products; here it is one matmul and two
    matmul-accumulates: dx = dy W + (dy B * g) A + dlogits R. Saved: x and the rank-r and
    E-wide products, nothing full-size. Gate gradient: d g_e = scale * sum over expert e's slice
    of (dy B) * (x A^T); through the softmax, dlogits = g * (d g - sum_e g_e d g_e)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, router, scale: float):
        flat_x = x.reshape(-1, x.shape[-1])
        experts = router.shape[0]
        gates = torch.softmax(flat_x @ router.t(), dim=-1)
        h = (flat_x @ lora_A.t()).view(flat_x.shape[0], experts, -1)  # (N, E, r_e)
        out = torch.nn.functional.linear(x, weight, bias)
        out.view(-1, out.shape[-1]).addmm_((h * gates.unsqueeze(-1)).flatten(1), lora_B.t(), alpha=scale)
        ctx.save_for_backward(x, weight, lora_A, lora_B, router, gates, h)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dy):
        x, weight, lora_A, lora_B, router, gates, h = ctx.saved_tensors
        s = ctx.scale
        flat_x, flat_dy = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        d_hg = (flat_dy @ lora_B).view_as(h)  # gradient of the gated rank-r activations, / scale
        d_h = (d_hg * gates.unsqueeze(-1)).flatten(1)
        d_gates = (d_hg * h).sum(-1)
        d_logits = gates * (d_gates - (gates * d_gates).sum(-1, keepdim=True))
        dx = None
        if ctx.needs_input_grad[0]:
            dx = (flat_dy @ weight).addmm_(d_h, lora_A, alpha=s).addmm_(d_logits, router, alpha=s).view(x.shape)
        dA = d_h.t() @ flat_x * s
        dB = flat_dy.t() @ (h * gates.unsqueeze(-1)).flatten(1) * s
        d_router = d_logits.t() @ flat_x * s
        return dx, None, None, dA, dB, d_router, None


class MoELoRALinear(nn.Module):
    """A frozen base nn.Linear plus MoELoRA; starts identical to the base (B = 0)."""

    def __init__(self, base_layer: nn.Linear, experts: int, rank: int, alpha: float, *, dropout: float = 0.0,
                 top_k: int | None = None, impl: str = "fused"):
        super().__init__()
        if experts < 1 or rank % experts:
            raise ValueError(f"MoELoRA rank {rank} must be a positive multiple of the expert count {experts}")
        if top_k is not None and not 1 <= top_k <= experts:
            raise ValueError(f"MoELoRA top_k={top_k} must be between 1 and the expert count {experts}")
        if impl not in IMPLS:
            raise ValueError(f"MoELoRA impl '{impl}' is not one of {IMPLS}")
        self.base_layer = base_layer
        base_layer.requires_grad_(False)
        self.experts, self.rank, self.alpha = experts, rank, alpha
        self.scale = alpha / rank  # alpha / (total rank), as LoRA and CoIN
        self.top_k = top_k
        self.impl = impl
        # Adapters stay float32 under a half-precision base (as PEFT does): AdamW on bf16 weights loses updates.
        dev = base_layer.weight.device
        dtype = base_layer.weight.dtype
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        fin, fout = base_layer.in_features, base_layer.out_features
        self.lora_A = nn.Parameter(torch.empty(rank, fin, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(fout, rank, device=dev, dtype=dtype))
        self.router = nn.Linear(fin, experts, bias=False, device=dev, dtype=dtype)
        # PEFT LoRA's A init (bound 1/sqrt(in) per row), so one expert starts like `lora`.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Set by the method when the load-balancing loss is on; read and cleared by it per forward.
        self.record_router = False
        self.last_probs: torch.Tensor | None = None

    # Code that reads a Linear's attributes (dtype checks, sizes) keeps working on the wrapper.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gates, probs) for input x (..., in), in float32."""
        return route(self.router(x.to(self.router.weight.dtype)), self.top_k)

    def delta(self, x: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        """The adapter's contribution (..., out), in the adapter's dtype; with `into` (fused
        kernel only) that contribution added into it."""
        x = x.to(self.lora_A.dtype)
        gates, probs = self.gates(x)
        if self.record_router and self.training and torch.is_grad_enabled():
            self.last_probs = probs
        args = (self.dropout(x), self.lora_A, self.lora_B, gates.to(x.dtype), self.scale)
        return moelora_fused(*args, into=into) if into is not None else _KERNELS[self.impl](*args)

    def _dense_fused(self, x: torch.Tensor) -> bool:
        """Whether the training forward can run as DenseMoELoRA: dense routing without the balance
        loss's record, float32 throughout, a frozen Linear base, no dropout between x and A. That
        function routes inside it (softmax of the router's logits), not through :meth:`gates`."""
        return (self.impl == "fused" and self.top_k is None and not self.record_router
                and isinstance(self.dropout, nn.Identity) and frozen_float32_training(self.base_layer, x)
                and self.lora_A.dtype == self.router.weight.dtype == torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense_fused(x):
            base = self.base_layer
            return DenseMoELoRA.apply(x, base.weight, base.bias, self.lora_A, self.lora_B, self.router.weight, self.scale)
        out = self.base_layer(x)
        if self.impl == "fused" and out.dtype == self.lora_A.dtype:
            return self.delta(x, into=out)  # one matmul-accumulate, as fused_lora does for LoRA
        return out + self.delta(x).to(out.dtype)

    def merged_weight(self, gates: torch.Tensor | None = None) -> torch.Tensor:
        """W0 + scale * sum_e g_e B_e A_e, exact only when the gates do not depend on the input:
        one expert (its gate is always 1) or a fixed gate vector (E,) given by the caller."""
        if gates is None:
            if self.experts != 1:
                raise ValueError(
                    f"cannot merge a MoELoRA layer with {self.experts} experts and a learned router: the "
                    "per-token gates softmax(W_g x) depend on the input, so no single weight matrix "
                    "reproduces the layer. Merge with a fixed gate vector (gates=...) or use one expert.")
            gates = torch.ones(1)
        gates = torch.as_tensor(gates, dtype=self.lora_A.dtype, device=self.lora_A.device).flatten()
        if gates.numel() != self.experts:
            raise ValueError(f"gate vector has {gates.numel()} entries; this layer has {self.experts} experts")
        col = gates.repeat_interleave(self.rank // self.experts)  # one gate per rank column of B
        delta = (self.lora_B * (col * self.scale)) @ self.lora_A
        return (self.base_layer.weight.float() + delta.float()).to(self.base_layer.weight.dtype)

    def extra_repr(self) -> str:
        return (f"experts={self.experts}, rank={self.rank} ({self.rank // self.experts} per expert), "
                f"scale={self.scale:g}, top_k={self.top_k}, impl={self.impl}")


def load_balancing_loss(probs: torch.Tensor, top_k: int | None = None,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-Transformer load-balancing loss of one layer: E * sum_e f_e * P_e.

    P_e: the mean router probability of expert e over tokens (differentiable);
    f_e: the fraction of routing slots sent to expert e: each token's top-k experts (top-1 when
         routing is dense, as in Switch) count 1/k each (not differentiable).
    Equals 1 when routing is perfectly uniform, E when every token goes to one expert.
    probs (..., E); mask (...) bool/0-1 selects the tokens that count (padding excluded).
    """
    experts = probs.shape[-1]
    probs = probs.reshape(-1, experts)
    if mask is not None:
        probs = probs[mask.reshape(-1).bool()]
    if probs.shape[0] == 0:
        return probs.sum() * 0.0  # no real token: no signal (and no NaN from an empty mean)
    k = top_k if top_k is not None and top_k < experts else 1
    chosen = probs.topk(k, dim=-1).indices
    slots = torch.zeros_like(probs).scatter(-1, chosen, 1.0 / k)
    f = slots.mean(0)
    p = probs.mean(0)
    return experts * (f.detach() * p).sum()
