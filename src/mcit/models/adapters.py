"""Which modules get adapters and which parts train, for any LLaVA-like checkpoint."""
from __future__ import annotations

import re

import torch

# Sub-module names under which HF image-text-to-text models keep their language model:
# LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL `language_model`; Idefics3, SmolVLM `text_model`.
_LM_MARKERS = ("language_model", "text_model")

# The one family table: where each family keeps its vision-language projector (dotted paths,
# matched on whole name parts). LLaVA / LLaVA-NeXT `multi_modal_projector` (NeXT also learns
# `image_newline`, a bare parameter); Qwen2-VL / Qwen2.5-VL the patch merger at the end of the
# vision tower; Idefics3 / SmolVLM `connector`. Anything else outside the LM is vision tower.
PROJECTORS = ("multi_modal_projector", "image_newline", "visual.merger", "connector")


def _has_path(name: str, path: str) -> bool:
    """True if the dotted `path` occurs in `name` as consecutive whole parts."""
    return re.search(rf"(^|\.){re.escape(path)}(\.|$)", name) is not None


def is_projector(name: str) -> bool:
    """Whether a parameter or module name belongs to the vision-language projector."""
    return any(_has_path(name, p) for p in PROJECTORS)


def is_language_model(name: str) -> bool:
    return any(m in name.split(".") for m in _LM_MARKERS)


def projector_modules(model: torch.nn.Module) -> list[str]:
    """Full names of the projector's top modules (for PEFT `modules_to_save`)."""
    return [name for name, _ in model.named_modules()
            if any(name == p or name.endswith("." + p) for p in PROJECTORS)]


def language_model_linear_names(model: torch.nn.Module) -> list[str]:
    """Full names of every nn.Linear inside the language model, lm_head excluded.

    Found by walking the module tree instead of a hard-coded list, so the same rule
    covers LLaVA, LLaVA-NeXT, Qwen2-VL, Idefics3... (the LM sits under `language_model`
    or `text_model`; vision tower and projector never do).
    """
    names = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and is_language_model(name) and not is_projector(name):
            if not name.endswith("lm_head"):
                names.append(name)
    if not names:
        raise ValueError(f"found no linear layer under a module named one of {_LM_MARKERS}; "
                         "set method.target_modules")
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
        if is_projector(name):
            p.requires_grad_(projector)
        elif is_language_model(name) or "lm_head" in name.split("."):
            p.requires_grad_(language_model)
        else:
            p.requires_grad_(False)
