"""MoELoRA (CoIN): every adapted linear layer of the language model holds E LoRA experts of
rank r/E and a per-token softmax router, continued from task to task like sequential LoRA.

Dense routing by default (CoIN); options: top-k routing (gates renormalised over the top k)
and a Switch-style load-balancing loss (moelora_layer.load_balancing_loss), averaged over the
adapted layers and weighted by method.moe_balance_weight. The layer itself is in
models/moelora_layer.py; here are the injection, the Method, saving/loading and the merge.

A stage checkpoint is `adapter_model.safetensors` (experts, routers and, when the projector
trains, the projector) plus `moelora_config.json` (experts, rank, alpha, targets, impl).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from ..io import atomic_write_bytes, atomic_write_text
from ..models.adapters import is_projector, set_trainable, target_regex
from ..models.moelora_layer import IMPLS, MoELoRALinear, load_balancing_loss
from .base import Method, TaskContext

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "moelora_config.json"
_ADAPTER_PARAMS = ("lora_A", "lora_B", "router.weight")


def inject_moelora(model: nn.Module, names: list[str], *, experts: int, rank: int, alpha: float,
                   dropout: float = 0.0, top_k: int | None = None, impl: str = "fused") -> dict[str, MoELoRALinear]:
    """Replace each named nn.Linear of `model` (in place) by a MoELoRALinear around it."""
    layers = {}
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, leaf)
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{name} is a {type(base).__name__}, not an nn.Linear")
        layer = MoELoRALinear(base, experts, rank, alpha, dropout=dropout, top_k=top_k, impl=impl)
        setattr(parent, leaf, layer)
        layers[name] = layer
    return layers


def moelora_layers(model: nn.Module) -> dict[str, MoELoRALinear]:
    """Every MoELoRA layer of `model`, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MoELoRALinear)}


def set_impl(model: nn.Module, impl: str) -> None:
    """Switch every MoELoRA layer between the fused and the reference kernel (same weights)."""
    if impl not in IMPLS:
        raise ValueError(f"MoELoRA impl '{impl}' is not one of {IMPLS}")
    for layer in moelora_layers(model).values():
        layer.impl = impl


def merge_moelora(model: nn.Module, gates=None) -> nn.Module:
    """Replace every MoELoRA layer by a plain nn.Linear holding W0 + scale * sum_e g_e B_e A_e.

    Exact only where no router is involved: with one expert (gates=None), or with fixed gates
    given by the caller, one vector (E,) for all layers or a dict {module name: (E,)}; the
    gates are used as given (not renormalised, top_k not applied). With E > 1 and no gates this
    raises ValueError: a learned per-token router is input-dependent, so no merged matrix exists.
    Nothing is replaced unless every layer merges.
    """
    layers = moelora_layers(model)
    merged = {}
    for name, layer in layers.items():
        g = gates.get(name) if isinstance(gates, dict) else gates
        if isinstance(gates, dict) and g is None:
            raise ValueError(f"no gate vector for MoELoRA layer {name}")
        merged[name] = layer.merged_weight(g)
    for name, layer in layers.items():
        base = layer.base_layer
        with torch.no_grad():
            base.weight.copy_(merged[name])
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, base)
    return model


class MoELoRA(Method):
    name = "moelora"
    reads_all_logits = False  # its balance loss reads the gates

    def __init__(self, cfg):
        super().__init__(cfg)  # settings checked at config load (methods/registry.py)
        self.layers: dict[str, MoELoRALinear] = {}

    def setup(self, model, run_cfg):
        c = self.cfg
        set_trainable(model, language_model=False, projector=c.train_projector)
        regex = target_regex(model, c.target_modules)
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(regex, n)]
        self.layers = inject_moelora(model, names, experts=c.moe_experts, rank=c.lora_r, alpha=c.lora_alpha,
                                     dropout=c.lora_dropout, top_k=c.moe_top_k, impl=c.moe_impl)
        for layer in self.layers.values():
            layer.record_router = c.moe_balance_weight > 0
        return model

    def extra_loss(self, ctx: TaskContext, batch: dict, outputs) -> torch.Tensor | None:
        """moe_balance_weight * mean over layers of the Switch load-balancing loss, padding excluded."""
        if self.cfg.moe_balance_weight <= 0:
            return None
        mask = batch.get("attention_mask")
        losses = []
        for layer in self.layers.values():
            probs, layer.last_probs = layer.last_probs, None
            if probs is None:
                continue
            token_mask = mask if mask is not None and mask.shape == probs.shape[:-1] else None
            losses.append(load_balancing_loss(probs, self.cfg.moe_top_k, token_mask))
        if not losses:
            return None
        loss = torch.stack(losses).mean()
        ctx.log["moe_balance_loss_last"] = float(loss.detach())
        return self.cfg.moe_balance_weight * loss

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self, model) -> dict[str, torch.Tensor]:
        """The weights a stage owns: experts and routers, plus the projector if it trains."""
        state = {}
        for name, layer in moelora_layers(model).items():
            for p in _ADAPTER_PARAMS:
                state[f"{name}.{p}"] = layer.get_parameter(p)
        if self.cfg.train_projector:
            state.update({n: p for n, p in model.named_parameters() if is_projector(n)})
        return state

    def _config(self, model) -> dict:
        c = self.cfg
        return {"format": "mcit-moelora", "version": 1, "experts": c.moe_experts, "rank": c.lora_r,
                "expert_rank": c.lora_r // c.moe_experts, "alpha": c.lora_alpha, "top_k": c.moe_top_k,
                "dropout": c.lora_dropout, "impl": c.moe_impl, "projector": c.train_projector,
                "targets": sorted(moelora_layers(model))}

    def save_model(self, model, directory: Path) -> None:
        directory = Path(directory)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self._state(model).items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
        atomic_write_text(directory / CONFIG_FILE, json.dumps(self._config(model), indent=2) + "\n")

    def load_model(self, model, directory: Path) -> None:
        """A saved stage's experts, routers (and projector) back into the live model, which
        must have the same layout (experts, rank, targets); impl may differ (same weights)."""
        directory = Path(directory)
        saved = json.loads((directory / CONFIG_FILE).read_text())
        live = self._config(model)
        for key in ("experts", "rank", "targets", "projector"):
            if saved.get(key) != live[key]:
                raise RuntimeError(f"{directory}: saved MoELoRA {key}={saved.get(key)!r} does not match the live "
                                   f"model's {live[key]!r}")
        tensors = load_file(str(directory / WEIGHTS_FILE))
        state = self._state(model)
        missing, unexpected = sorted(set(state) - set(tensors)), sorted(set(tensors) - set(state))
        if missing or unexpected:
            raise RuntimeError(f"{directory}: MoELoRA weights do not match the model "
                               f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        with torch.no_grad():
            for key, param in state.items():
                if tensors[key].shape != param.shape:
                    raise RuntimeError(f"{directory}: {key} has shape {tuple(tensors[key].shape)}, "
                                       f"the model {tuple(param.shape)}")
                param.copy_(tensors[key])

    def merge(self, model, gates=None) -> nn.Module:
        """Plain weights where exact (see merge_moelora)."""
        return merge_moelora(model, gates)
