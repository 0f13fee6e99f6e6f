"""Supervised pretraining of the tiny model's vision tower (the role CLIP plays for LLaVA).

A real LLaVA starts from a vision encoder pretrained on its own before the alignment stage.
A from-scratch ViT that learns only through the language model's next-token loss picks up
colours and shapes but not fine detail such as rendered words (measured: reading stays at
chance after 3000 alignment steps), so the built-in model gets the same two-step start:
first this stage, a linear classifier on mean-pooled patch features predicting each pretrain
image's short answer (the word written, the letter, the object, the colour ...), then the
alignment stage. Written by hand: no library trains an arbitrary `transformers` vision tower
this way without torchvision.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..data.encode import load_image
from ..data.schema import Sample

MIN_CLASS_COUNT = 3  # answers rarer than this are not classes
MAX_ANSWER_WORDS = 4  # short answers only (a word, a letter, "It is a red boat."), not captions


def patch_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Mean of the patch features the projector reads (same layer, CLS dropped)."""
    out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:].mean(1)


def pretrain_vision(model, processor, samples: list[Sample], image_root: Path, *, steps: int,
                    batch_size: int, lr: float, seed: int, show_progress: bool = True) -> dict:
    short = [s for s in samples if s.image and len(s.answer.split()) <= MAX_ANSWER_WORDS]
    counts = Counter(s.answer for s in short)
    labelled = [s for s in short if counts[s.answer] >= MIN_CLASS_COUNT]
    if steps <= 0 or not labelled:  # nothing to learn from (tiny test configs): leave the tower as is
        return {"steps": 0, "classes": 0, "images": 0, "loss_first": None, "loss_last": None}
    classes = sorted({s.answer for s in labelled})
    index = {a: i for i, a in enumerate(classes)}
    labels = torch.tensor([index[s.answer] for s in labelled])
    pixels = processor.image_processor([load_image(image_root, s.image) for s in labelled],
                                       return_tensors="pt")["pixel_values"]

    vision = model.model.vision_tower
    head = torch.nn.Linear(model.config.vision_config.hidden_size, len(classes))
    params = list(vision.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    gen = torch.Generator().manual_seed(seed)

    vision.train()
    losses = []
    for _ in tqdm(range(steps), desc="vision encoder", disable=not show_progress, leave=False):
        idx = torch.randint(len(labelled), (batch_size,), generator=gen)
        loss = F.cross_entropy(head(patch_features(model, pixels[idx])), labels[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    k = max(1, steps // 10)
    return {"steps": steps, "classes": len(classes), "images": len(labelled),
            "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k}
