"""Which modules get adapters and which parts train, for any LLaVA-like checkpoint."""
from __future__ import annotations

import re

import torch

# Sub-module names under which HF image-text-to-text models keep their language model.
_LM_MARKERS = ("language_model", "text_model")


def language_model_linear_names(model: torch.nn.Module) -> list[str]:
    """Full names of every nn.Linear inside the language model, lm_head excluded.

    Found by walking the module tree instead of a hard-coded list, so the same rule
    covers LLaVA, Qwen2-VL, Idefics3... (they all keep the LM under `language_model`).
    """
    names = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(m in name.split(".") for m in _LM_MARKERS):
            if not name.endswith("lm_head"):
                names.append(name)
    if not names:
        raise ValueError("found no linear layer under a 'language_model' module; set method.target_modules")
    return names


def target_regex(model: torch.nn.Module, target_modules: list[str] | None) -> str:
    """A PEFT `target_modules` regex: the LM's linears, optionally narrowed to leaf names."""
    names = language_model_linear_names(model)
    if target_modules:
        wanted = set(target_modules)
        names = [n for n in names if n.rsplit(".", 1)[-1] in wanted]
        if not names:
            raise ValueError(f"method.target_modules={target_modules} matches no language-model linear layer")
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def set_trainable(model: torch.nn.Module, *, language_model: bool, projector: bool) -> None:
    """Vision tower always frozen (LLaVA recipe); LM and projector by flag."""
    for name, p in model.named_parameters():
        parts = name.split(".")
        if "multi_modal_projector" in parts:
            p.requires_grad_(projector)
        elif any(m in parts for m in _LM_MARKERS) or "lm_head" in parts:
            p.requires_grad_(language_model)
        else:
            p.requires_grad_(False)
