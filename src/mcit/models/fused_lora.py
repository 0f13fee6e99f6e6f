"""LoRA added into the base layer's output by one matmul-accumulate, instead of PEFT's
`result + lora_B(lora_A(x)) * scaling` (a full-size product, then a full-size multiply and a
full-size add per wrapped layer: at this project's model sizes those element-wise passes cost
more than the rank-r matmuls themselves, issue 15).

    result = base(x);  result = addmm(result, A x, B^T, alpha=scaling)

In float32 training (gradients on: evaluation keeps the addmm, cheaper for a few decoded tokens
than forming the merged weight), with one adapter and a frozen base layer, it goes one step further: the
forward is one matmul with the merged weight W + scaling * B A (formed per call, r x in x out
multiply-adds, small beside the tokens' matmul) and the backward computes the input gradient
with that weight and the LoRA gradients from their low-rank factors (MergedLowRank below): no
full-size accumulate at all, 0.89-0.93x the step time of the addmm path here (bench/lora_step.py).
The same maths in another rounding order: losses agree to 1e-6 and gradients to about 2e-5 of
each one's largest element (tests/test_fused_lora.py). Not in half precision: there
W + scaling * B A would round the small LoRA update away, so bf16/fp16 layers keep the addmm path.

Same parameters, same names, same PEFT module class underneath: the layer is a subclass of
`peft.tuners.lora.Linear` registered through `LoraConfig._register_custom_module` (PEFT's
extension point for custom LoRA layers), so saved adapters are PEFT's own and load with
`PeftModel` unchanged. Every case the fused sum does not cover (dropout > 0, merged or disabled
adapters, mixed-adapter batches, LoRA variants such as DoRA, a dtype cast) runs PEFT's forward.
"""
from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora import Linear as PeftLoraLinear


def add_low_rank(result: torch.Tensor, h: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """result + scale * h @ lora_B^T as one matmul-accumulate: h (..., r), lora_B (out, r), result
    (..., out). The scale is the matmul's alpha, not a pass over the output; and the sum is
    accumulated in place into ``result``, which callers pass fresh from the base layer (a linear
    layer's backward never reads its output), so no full-size copy of it is made either."""
    if not result.is_contiguous():
        flat = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), lora_B.t(), alpha=scale)
        return flat.view(result.shape)
    result.view(-1, result.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), lora_B.t(), alpha=scale)
    return result


def frozen_float32_training(base: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether a hand-written training function may stand in for autograd around ``base``: gradients
    on, a float32 input into a frozen float32 nn.Linear (no gradient for its weight or bias)."""
    return (torch.is_grad_enabled() and isinstance(base, torch.nn.Linear)
            and x.dtype == base.weight.dtype == torch.float32 and not base.weight.requires_grad
            and (base.bias is None or not base.bias.requires_grad))


class MergedLowRank(torch.autograd.Function):
    """y = x (W + s B A)^T + bias, with gradients for x, A and B only (W and bias frozen).

    Written by hand: autograd through the merged weight would form the full-size gradient of W + s B A
    and reduce it to A's and B's; this computes them from the rank-r products directly:
    dA = s (dy B)^T x, dB = s dy^T (x A^T), dx = dy (W + s B A). The merged weight is formed again in
    the backward rather than saved (it is as large as W: saving it would hold a copy of every wrapped
    weight for the whole step on a large model)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scale: float):
        ctx.save_for_backward(x, weight, lora_A, lora_B)
        ctx.scale = scale
        return torch.nn.functional.linear(x, torch.addmm(weight, lora_B, lora_A, alpha=scale), bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight, lora_A, lora_B = ctx.saved_tensors
        s = ctx.scale
        flat_x, flat_dy = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        dx = dA = dB = None
        if ctx.needs_input_grad[0]:
            dx = (flat_dy @ torch.addmm(weight, lora_B, lora_A, alpha=s)).view(x.shape)
        if ctx.needs_input_grad[3]:
            dA = (flat_dy @ lora_B).t() @ flat_x * s
        if ctx.needs_input_grad[4]:
            dB = flat_dy.t() @ (flat_x @ lora_A.t()) * s
        return dx, None, None, dA, dB, None


class FusedLoraLinear(PeftLoraLinear):
    """PEFT's LoRA Linear with the plain-LoRA sum fused into the base output (see the module doc)."""

    def _fusable(self, x: torch.Tensor, args: tuple, kwargs: dict) -> bool:
        if args or kwargs or self.disable_adapters or self.merged:
            return False
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            if (name in self.lora_variant or not isinstance(self.lora_dropout[name], torch.nn.Identity)
                    or self.lora_A[name].weight.dtype != x.dtype or self.lora_A[name].bias is not None
                    or self.lora_B[name].bias is not None):
                return False
        return True

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self._fusable(x, args, kwargs):
            return super().forward(x, *args, **kwargs)
        names = [name for name in self.active_adapters if name in self.lora_A]
        base = self.base_layer
        if len(names) == 1 and frozen_float32_training(base, x):
            (name,) = names
            return MergedLowRank.apply(x, base.weight, base.bias, self.lora_A[name].weight,
                                       self.lora_B[name].weight, self.scaling[name])
        result = base(x)
        if result.dtype != x.dtype:  # e.g. a quantised base: keep PEFT's casting rules
            return super().forward(x, *args, **kwargs)
        for name in self.active_adapters:
            if name in self.lora_A:
                h = self.lora_A[name](x)
                result = add_low_rank(result, h, self.lora_B[name].weight, self.scaling[name])
        return result


def use_fused(config: LoraConfig) -> LoraConfig:
    """Make `config` build FusedLoraLinear for nn.Linear targets. The mapping is an attribute,
    not a saved field: adapter_config.json stays PEFT's plain LoRA config."""
    config._register_custom_module({torch.nn.Linear: FusedLoraLinear})
    return config
