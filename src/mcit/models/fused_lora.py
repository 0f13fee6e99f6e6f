"""LoRA added into the base layer's output by one matmul-accumulate, instead of PEFT's
`result + lora_B(lora_A(x)) * scaling` (a full-size product, then a full-size multiply and a
full-size add per wrapped layer: at this project's model sizes those element-wise passes cost
more than the rank-r matmuls themselves, issue 15).

    result = base(x);  result = addmm(result, A x, B^T, alpha=scaling)

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
    """result + scale * h @ lora_B^T as one addmm: h (..., r), lora_B (out, r), result (..., out).
    The scale is addmm's alpha, applied inside the matmul instead of a pass over the output."""
    flat = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), lora_B.t(), alpha=scale)
    return flat.view(result.shape)


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
        result = self.base_layer(x)
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
