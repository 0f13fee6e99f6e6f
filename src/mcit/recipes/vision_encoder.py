"""The built-in model's first stage: supervised pretraining of its vision encoder.

A real LLaVA starts from a vision encoder (CLIP) pretrained on its own and keeps it frozen
while the projector and language model learn to use it. A from-scratch ViT that learns only
through the language model's next-token loss picks up colours and shapes but not fine detail:
measured on coin-mini, reading rendered words stayed at chance after 3000 alignment steps,
while the same ViT with a linear head learns them. So the tiny model gets the same two-step
start as LLaVA: this stage (one linear head per attribute -- word, title, author, object,
shape, colour -- on the mean-pooled patch features the projector reads), then the alignment
stage with the tower frozen. Written by hand: transformers has no trainer for a bare vision
tower with several classification heads, and a few dozen lines keep it readable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import get_cosine_schedule_with_warmup

from ..fit import adamw
from ..progress import Progress
from ..threads import ThreadGovernor


def patch_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Mean of the patch features the projector reads (same layer, CLS token dropped)."""
    out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:].mean(1)


def label_tensors(labels: list[dict[str, str]]) -> tuple[dict[str, list[str]], dict[str, torch.Tensor]]:
    """Per attribute: its sorted class names and one target per image (-100 = not labelled)."""
    classes = {a: sorted({d[a] for d in labels if a in d}) for a in sorted({a for d in labels for a in d})}
    targets = {a: torch.tensor([names.index(d[a]) if a in d else -100 for d in labels])
               for a, names in classes.items()}
    return classes, targets


def pretrain_vision(model, image_processor, items: list[tuple[Image.Image, dict[str, str]]], *, steps: int,
                    batch_size: int, lr: float, seed: int, show_progress: bool = True, threads: int = 0) -> dict:
    """Train ``model``'s vision tower in place; returns loss statistics. ``threads`` is train.threads
    (0 = follow the load), as in the task stages: on a busy machine two spinning threads ran this stage
    2-2.5x slower than one."""
    if steps <= 0 or not items:  # tiny test configs: keep the random tower
        return {"steps": 0, "images": len(items)}
    classes, targets = label_tensors([labels for _, labels in items])
    pixels = image_processor([img for img, _ in items], return_tensors="pt")["pixel_values"]
    vision = model.model.vision_tower
    width = model.config.vision_config.hidden_size
    heads = torch.nn.ModuleDict({a: torch.nn.Linear(width, len(names)) for a, names in classes.items()})
    params = list(vision.parameters()) + list(heads.parameters())
    optimizer = adamw([{"params": params, "lr": lr}], weight_decay=0.0)  # fused, as in the task stages
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    gen = torch.Generator().manual_seed(seed)
    governor = ThreadGovernor(threads)
    governor.start()

    vision.train()
    losses = []
    progress = Progress("base model, vision encoder", steps, enabled=show_progress, samples_per_unit=batch_size)
    for _ in range(steps):
        idx = torch.randint(len(items), (batch_size,), generator=gen)
        feats = patch_features(model, pixels[idx])
        # one cross-entropy per attribute, over the images that carry it
        loss = sum(F.cross_entropy(head(feats), targets[a][idx], ignore_index=-100, reduction="sum")
                   for a, head in heads.items()) / batch_size
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.update(loss=losses[-1])
        governor.tick()
    progress.close(loss=losses[-1])
    k = max(1, steps // 10)
    return {"steps": steps, "images": len(items), "attributes": {a: len(n) for a, n in classes.items()},
            "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k}
