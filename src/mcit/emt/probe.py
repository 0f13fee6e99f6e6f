"""The EMT encoder baseline: the MLLM's own vision encoder used as an image classifier.

EMT compares an MLLM's classification accuracy with that of its vision encoder. Here:

* :func:`encoder_features` runs the vision tower of an image-text-to-text model (LLaVA-style:
  ``tower(pixel_values=..., output_hidden_states=True)``) on a list of images through the
  model's own image processor, and mean-pools the patch tokens (the CLS token, when the tower
  has one, is left out) of one hidden layer: by default the layer the language model reads
  (``config.vision_feature_layer``; several layers are concatenated). Batched, no gradients.
* :func:`linear_probe` fits a scikit-learn ``LogisticRegression`` (on standardised features) on
  the train split and scores the test split: the natural baseline for an encoder without a text
  tower.
* :func:`zero_shot_accuracy` matches images against class-name prompts, only when the encoder
  has a text tower (a ``CLIPModel``-like ``get_text_features``); for anything else it returns
  None (not available) rather than inventing a number.

Accuracies are percentages (0-100), like every score in mcit.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "ProbeResult",
    "encoder_features",
    "linear_probe",
    "vision_tower_of",
    "zero_shot_accuracy",
    "zero_shot_available",
]

_TOWER_NAMES = ("vision_tower", "vision_model", "visual")


def vision_tower_of(model: torch.nn.Module) -> torch.nn.Module:
    """The vision encoder inside ``model`` (also under PEFT wrappers), or ``model`` itself when it
    is a vision model. ValueError when none is found."""
    found = [(name.count("."), name, module) for name, module in model.named_modules()
             if name.rsplit(".", 1)[-1] in _TOWER_NAMES]
    if found:
        return min(found, key=lambda t: t[:2])[2]  # the outermost one
    if "vision" in type(model).__name__.lower():
        return model
    raise ValueError(f"no vision tower found in {type(model).__name__} (looked for submodules named "
                     f"{', '.join(_TOWER_NAMES)})")


def _feature_layers(model: torch.nn.Module, layer: int | Sequence[int] | None) -> list[int]:
    if layer is None:
        layer = getattr(getattr(model, "config", None), "vision_feature_layer", None)
        if layer is None:
            layer = -1
    return [int(layer)] if isinstance(layer, int) else [int(x) for x in layer]


def _image_processor(processor):
    return getattr(processor, "image_processor", processor)


def _patch_count(tower: torch.nn.Module) -> int | None:
    cfg = getattr(tower, "config", None)
    size, patch = getattr(cfg, "image_size", None), getattr(cfg, "patch_size", None)
    if isinstance(size, int) and isinstance(patch, int) and patch > 0:
        return (size // patch) ** 2
    return None


@torch.no_grad()
def encoder_features(model: torch.nn.Module, processor, images: Sequence[Image.Image], batch_size: int = 32,
                     *, layer: int | Sequence[int] | None = None) -> np.ndarray:
    """Mean-pooled patch features of ``images`` from ``model``'s vision tower, shape (N, D).

    ``processor`` is the checkpoint's processor (its ``image_processor`` is used) or an image
    processor. ``layer`` indexes the tower's hidden states (0 = embeddings); None takes the
    model's ``vision_feature_layer`` (LLaVA: -2), else the last layer. The tower is put in eval
    mode for the call and restored after. Returns float32.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tower = vision_tower_of(model)
    layers = _feature_layers(model, layer)
    image_processor = _image_processor(processor)
    param = next(tower.parameters())
    n_patches = _patch_count(tower)
    was_training = tower.training
    tower.eval()
    chunks = []
    try:
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start:start + batch_size]]
            pixels = image_processor(images=batch, return_tensors="pt")["pixel_values"]
            if pixels.ndim != 4:
                raise ValueError(f"pixel_values of shape {tuple(pixels.shape)}: only towers that take one "
                                 "(batch, channels, height, width) image tensor are supported")
            out = tower(pixel_values=pixels.to(param.device, param.dtype), output_hidden_states=True)
            pooled = []
            for k in layers:
                hidden = out.hidden_states[k]
                if n_patches is not None and hidden.shape[1] == n_patches + 1:
                    hidden = hidden[:, 1:]  # drop the CLS token: pool over patches only
                pooled.append(hidden.float().mean(dim=1))
            chunks.append(torch.cat(pooled, dim=-1).cpu().numpy())
    finally:
        tower.train(was_training)
    if not chunks:
        width = getattr(getattr(tower, "config", None), "hidden_size", 0) * len(layers)
        return np.zeros((0, width), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


@dataclass(frozen=True)
class ProbeResult:
    """Linear-probe scores (percent). ``chance`` is 100 / number of classes seen in train or
    test; ``majority`` the test score of always answering the most common train class."""

    accuracy: float
    train_accuracy: float
    chance: float
    majority: float
    n_train: int
    n_test: int
    n_classes: int
    converged: bool
    predictions: np.ndarray


def _check_xy(x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"{what} features must be 2-D (samples, dims), got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{what}: {len(x)} feature rows but labels of shape {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} features hold NaN or infinite values")
    return x, y


def linear_probe(train_feats, train_labels, test_feats, test_labels, seed: int = 0, *, C: float = 1.0,
                 max_iter: int = 2000) -> ProbeResult:
    """Fit logistic regression on the train features, score it on the test features."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = _check_xy(train_feats, train_labels, "train")
    x_test, y_test = _check_xy(test_feats, test_labels, "test")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train features have {x_train.shape[1]} dims, test features {x_test.shape[1]}")
    if len(np.unique(y_train)) < 2:
        raise ValueError("the train split holds fewer than 2 classes; a probe needs at least 2")
    if len(y_test) == 0:
        raise ValueError("the test split is empty")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x_train, y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    predictions = clf.predict(x_test)
    values, counts = np.unique(y_train, return_counts=True)
    majority_class = values[np.argmax(counts)]
    return ProbeResult(
        accuracy=100.0 * float(np.mean(predictions == y_test)),
        train_accuracy=100.0 * float(np.mean(clf.predict(x_train) == y_train)),
        chance=100.0 / len(np.union1d(y_train, y_test)),
        majority=100.0 * float(np.mean(y_test == majority_class)),
        n_train=len(y_train),
        n_test=len(y_test),
        n_classes=len(np.union1d(y_train, y_test)),
        converged=converged,
        predictions=predictions,
    )


def zero_shot_available(encoder) -> bool:
    """True when ``encoder`` has both an image and a text tower (CLIPModel-like)."""
    return callable(getattr(encoder, "get_text_features", None)) and callable(
        getattr(encoder, "get_image_features", None))


def _embedding(out) -> torch.Tensor:
    # transformers 5 returns a model output with the projected embedding as pooler_output;
    # 4.x returned the tensor itself
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise ValueError(f"cannot read an embedding from {type(out).__name__}")
    return pooled


@torch.no_grad()
def zero_shot_accuracy(encoder, processor, images: Sequence[Image.Image], labels: Sequence[int],
                       class_names: Sequence[str], *, template: str = "a photo of a {}.",
                       batch_size: int = 32) -> float | None:
    """Zero-shot accuracy (percent) from class-name prompts, or None when ``encoder`` has no
    text tower (an MLLM's vision tower never has one; see :func:`zero_shot_available`).

    ``processor`` provides ``tokenizer`` and ``image_processor`` (a CLIPProcessor does). Each
    image is assigned the class whose prompt embedding has the highest cosine similarity.
    """
    if not zero_shot_available(encoder):
        return None
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not images:
        raise ValueError("no images to classify")
    tokenizer = getattr(processor, "tokenizer", processor)
    image_processor = _image_processor(processor)
    param = next(encoder.parameters())
    was_training = encoder.training
    encoder.eval()
    try:
        text = tokenizer([template.format(name) for name in class_names], padding=True, return_tensors="pt")
        text = {k: v.to(param.device) for k, v in text.items() if k in ("input_ids", "attention_mask")}
        text_emb = torch.nn.functional.normalize(_embedding(encoder.get_text_features(**text)).float(), dim=-1)
        predictions = []
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start:start + batch_size]]
            pixels = image_processor(images=batch, return_tensors="pt")["pixel_values"]
            emb = _embedding(encoder.get_image_features(pixel_values=pixels.to(param.device, param.dtype)))
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
            predictions.append((emb @ text_emb.T).argmax(dim=-1).cpu())
    finally:
        encoder.train(was_training)
    predicted = torch.cat(predictions).numpy()
    return 100.0 * float(np.mean(predicted == np.asarray(labels)))
