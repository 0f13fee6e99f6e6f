"""Image classification sets for EMT (evaluating an MLLM as an image classifier).

:func:`load_dataset` turns a dataset spec into a :class:`ClassificationSet`: a name, the class
names (the label set shown to the model), optional synonyms per class, the noun used in the
question ("number", "object", ...) and two lists of ``(PIL RGB image, label index)``, ``train``
(for the encoder's linear probe) and ``test`` (what is evaluated).

Sources (``kind``):

=============== ===========================================================================
``digits``      scikit-learn's bundled handwritten digits (8x8 grey, upscaled, RGB); no download
``coin-shapes`` coin-mini drawings: one shape (circle, square, ...) in a random colour
``coin-colors`` coin-mini drawings: a random shape in one of the six colours
``coin-objects`` coin-mini drawings: one everyday object (house, tree, ...), as in its ImageNet task
``imagefolder`` ``<root>/<class>/<image>`` or ``<root>/{train,test}/<class>/<image>``
``mnist``       MNIST idx files (plain or .gz)
``cifar10``     CIFAR-10 binary release (``data_batch_*.bin``, ``test_batch.bin``)
``cifar100``    CIFAR-100 binary release (``train.bin``, ``test.bin``), fine or coarse labels
=============== ===========================================================================

A spec is a string (``"digits"``, ``"mnist:/data/mnist"``) or a mapping with ``kind`` and the
options: ``root`` (disk kinds), ``name``, ``test_fraction`` (default 0.2), ``image_size``
(built-in kinds), ``per_class`` (coin kinds, images per class, default 60), ``label_level``
(cifar100: ``fine``/``coarse``), ``classes`` (mnist: names for an MNIST-format set such as
Fashion-MNIST), ``synonyms`` (class -> list of other names), ``noun``.

Splits: MNIST and CIFAR keep their official train/test split; every other source is split per
class by a draw seeded with ``(seed, name)``. ``limit`` caps **each** split at that many samples,
a class-stratified seeded subset (round robin over the classes), so a smaller limit gives a
subset of a larger one. All randomness comes from ``random.Random`` seeded with strings (hashed
with SHA-512 by ``random``), never from Python's ``hash``; the same spec and seed always give the
same images in the same order.
"""
from __future__ import annotations

import difflib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mcit.config import ConfigError
from mcit.data import coin_mini as cm

from .readers import (
    DIGIT_CLASSES,
    DIGIT_SYNONYMS,
    RawSet,
    RawSplit,
    read_cifar10,
    read_cifar100,
    read_image_folder,
    read_mnist,
)

__all__ = [
    "BUILTIN_KINDS",
    "DISK_KINDS",
    "KINDS",
    "ClassificationSet",
    "DatasetSpec",
    "load_dataset",
    "parse_spec",
]

BUILTIN_KINDS = ("digits", "coin-shapes", "coin-colors", "coin-objects")
DISK_KINDS = ("imagefolder", "mnist", "cifar10", "cifar100")
KINDS = BUILTIN_KINDS + DISK_KINDS
SPLITS = ("train", "test")


@dataclass
class ClassificationSet:
    """A labelled image set split into train and test. Labels index ``classes``."""

    name: str
    classes: tuple[str, ...]
    train: list[tuple[Image.Image, int]]
    test: list[tuple[Image.Image, int]]
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    noun: str = "object"
    source: str = ""
    seed: int = 0
    official_split: bool = False

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{self.name}: classes must be at least 2 distinct names, got {self.classes}")
        unknown = sorted(set(self.synonyms) - set(self.classes))
        if unknown:
            raise ValueError(f"{self.name}: synonyms given for unknown classes {unknown}")
        for split in SPLITS:
            for i, (_, label) in enumerate(getattr(self, split)):
                if not 0 <= label < len(self.classes):
                    raise ValueError(f"{self.name}: {split} sample {i} has label {label}, "
                                     f"outside 0..{len(self.classes) - 1}")

    def images(self, split: str) -> list[Image.Image]:
        return [im for im, _ in self._split(split)]

    def labels(self, split: str) -> np.ndarray:
        return np.array([label for _, label in self._split(split)], dtype=np.int64)

    def _split(self, split: str) -> list[tuple[Image.Image, int]]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)


# ---------------------------------------------------------------------------------------
# specs


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec (see the module docstring for the options)."""

    kind: str
    root: str | None = None
    name: str | None = None
    test_fraction: float = 0.2
    image_size: int | None = None
    per_class: int = 60
    label_level: str = "fine"
    classes: tuple[str, ...] | None = None
    synonyms: tuple[tuple[str, tuple[str, ...]], ...] = ()
    noun: str | None = None

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.kind == "cifar100" and self.label_level == "coarse":
            return "cifar100-coarse"
        if self.kind == "imagefolder" and self.root:
            return Path(self.root).name or "imagefolder"
        return self.kind


_SPEC_KEYS = tuple(f for f in DatasetSpec.__dataclass_fields__)


def _spec_error(spec: Any, msg: str) -> ConfigError:
    return ConfigError(f"EMT dataset spec {spec!r}: {msg}")


def parse_spec(spec: str | Mapping[str, Any] | DatasetSpec) -> DatasetSpec:
    """``"kind"``, ``"kind:root"`` or a mapping -> :class:`DatasetSpec`; ConfigError if malformed."""
    if isinstance(spec, DatasetSpec):
        return spec
    if isinstance(spec, str):
        kind, sep, root = spec.partition(":")
        fields: dict[str, Any] = {"kind": kind.strip()}
        if sep:
            fields["root"] = root.strip()
    elif isinstance(spec, Mapping):
        fields = dict(spec)
    else:
        raise _spec_error(spec, f"must be a string or a mapping, got {type(spec).__name__}")
    for key in fields:
        if key not in _SPEC_KEYS:
            close = difflib.get_close_matches(str(key), _SPEC_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(_SPEC_KEYS)}"
            raise _spec_error(spec, f"unknown key {key!r}{hint}")
    kind = fields.get("kind")
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise _spec_error(spec, f"unknown kind {kind!r}{hint} (kinds: {', '.join(KINDS)})")
    if kind in DISK_KINDS and not fields.get("root"):
        raise _spec_error(spec, f"kind {kind!r} needs a root folder ('{kind}:/path' or root: /path)")
    if kind in BUILTIN_KINDS and fields.get("root"):
        raise _spec_error(spec, f"kind {kind!r} is built in and takes no root")
    tf = fields.get("test_fraction", 0.2)
    if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0 < tf < 1:
        raise _spec_error(spec, f"test_fraction must be a number in (0, 1), got {tf!r}")
    for key, low in (("image_size", 8), ("per_class", 2)):
        value = fields.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise _spec_error(spec, f"{key} must be an integer >= {low}, got {value!r}")
    if fields.get("label_level", "fine") not in ("fine", "coarse"):
        raise _spec_error(spec, f"label_level must be 'fine' or 'coarse', got {fields['label_level']!r}")
    if fields.get("classes") is not None:
        if kind != "mnist":
            raise _spec_error(spec, "classes can only be given for kind 'mnist' (others name their classes)")
        if isinstance(fields["classes"], str) or not isinstance(fields["classes"], Sequence):
            raise _spec_error(spec, "classes must be a list of class names in label order")
        fields["classes"] = tuple(str(c) for c in fields["classes"])
    syn = fields.get("synonyms") or {}
    if not isinstance(syn, Mapping):
        raise _spec_error(spec, "synonyms must map a class name to a list of names")
    fields["synonyms"] = tuple((str(k), (v,) if isinstance(v, str) else tuple(str(x) for x in v))
                               for k, v in syn.items())
    if fields.get("root") is not None:
        fields["root"] = str(fields["root"])
    return DatasetSpec(**fields)


# ---------------------------------------------------------------------------------------
# built-in sources


def _digits(image_size: int) -> RawSet:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # values are ink counts 0..16 on an 8x8 grid; scale to 0..255 before upscaling
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)

    def image_at(i: int) -> Image.Image:
        small = Image.fromarray(pixels[i], "L")
        return small.resize((image_size, image_size), Image.BILINEAR).convert("RGB")

    return RawSet(DIGIT_CLASSES, {"all": RawSplit(labels, image_at)},
                  "scikit-learn load_digits (1797 8x8 images)", dict(DIGIT_SYNONYMS), "number")


def _coin_shape(rng: random.Random, S: int, shape: str, color: str) -> Image.Image:
    img = Image.new("RGB", (S, S), rng.choice(cm.NEUTRALS))
    r = rng.uniform(0.25, 0.4) * S
    cx, cy = rng.uniform(r + 1, S - r - 1), rng.uniform(r + 1, S - r - 1)
    cm._draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, cm.COLORS[color])
    return img


def _coin_object(rng: random.Random, S: int, kind: str) -> Image.Image:
    img = Image.new("RGB", (S, S), rng.choice(cm.NEUTRALS))
    r = rng.uniform(0.3, 0.4) * S
    cx, cy = rng.uniform(r + 1, S - r - 1), rng.uniform(r + 1, S - r - 1)
    color = cm._object_color(rng, kind)
    cm._draw_object(ImageDraw.Draw(img), kind, cx, cy, r, cm.COLORS[color] if color else (0, 0, 0))
    return img


_COIN = {  # kind -> (classes, noun, synonyms)
    "coin-shapes": (cm.SHAPES, "shape", {}),
    "coin-colors": (cm.COLOR_NAMES, "color", {"purple": ("violet",)}),
    "coin-objects": (cm.OBJECTS, "object", {"car": ("automobile",)}),
}


def _coin(kind: str, seed: int, per_class: int, image_size: int) -> RawSet:
    classes, noun, synonyms = _COIN[kind]
    k = len(classes)
    labels = np.arange(per_class * k, dtype=np.int64) % k  # balanced by construction

    def image_at(i: int) -> Image.Image:
        # one stream per image: an image does not depend on how many others are drawn
        rng = random.Random(f"emt:{kind}:{seed}:{i}")
        name = classes[labels[i]]
        if kind == "coin-shapes":
            return _coin_shape(rng, image_size, name, rng.choice(cm.COLOR_NAMES))
        if kind == "coin-colors":
            return _coin_shape(rng, image_size, rng.choice(cm.SHAPES), name)
        return _coin_object(rng, image_size, name)

    return RawSet(tuple(classes), {"all": RawSplit(labels, image_at)},
                  f"coin-mini drawings ({per_class} per class, seed {seed})", dict(synonyms), noun)


# ---------------------------------------------------------------------------------------
# splitting and limiting


def _by_class(labels: np.ndarray, indices: Sequence[int], rng: random.Random) -> list[list[int]]:
    """Indices grouped by label (groups in label order), each group shuffled by ``rng``."""
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(int(labels[i]), []).append(int(i))
    out = []
    for label in sorted(groups):
        group = groups[label]
        rng.shuffle(group)
        out.append(group)
    return out


def _seeded_split(labels: np.ndarray, fraction: float, seed: int, name: str) -> dict[str, list[int]]:
    rng = random.Random(f"emt-split:{seed}:{name}")
    train: list[int] = []
    test: list[int] = []
    for group in _by_class(labels, range(len(labels)), rng):
        n_test = int(round(len(group) * fraction))
        if len(group) >= 2:  # every class with two samples appears in both splits
            n_test = min(max(n_test, 1), len(group) - 1)
        test += group[:n_test]
        train += group[n_test:]
    return {"train": sorted(train), "test": sorted(test)}


def _limited(labels: np.ndarray, indices: list[int], limit: int | None, seed: int, key: str) -> list[int]:
    if limit is None or limit >= len(indices):
        return indices
    groups = _by_class(labels, indices, random.Random(f"emt-limit:{seed}:{key}"))
    picked: list[int] = []
    depth = 0
    while len(picked) < limit:  # round robin keeps every class in even a small subset
        for group in groups:
            if depth < len(group) and len(picked) < limit:
                picked.append(group[depth])
        depth += 1
    return sorted(picked)


# ---------------------------------------------------------------------------------------
# entry point


def _raw(spec: DatasetSpec, seed: int) -> RawSet:
    if spec.kind == "digits":
        return _digits(spec.image_size or 32)
    if spec.kind in _COIN:
        return _coin(spec.kind, seed, spec.per_class, spec.image_size or 64)
    if spec.kind == "imagefolder":
        return read_image_folder(spec.root)
    if spec.kind == "mnist":
        return read_mnist(spec.root, spec.classes)
    if spec.kind == "cifar10":
        return read_cifar10(spec.root)
    return read_cifar100(spec.root, spec.label_level)


def load_dataset(spec: str | Mapping[str, Any] | DatasetSpec, limit: int | None = None,
                 seed: int = 0) -> ClassificationSet:
    """Load (or draw) the set described by ``spec``; at most ``limit`` samples per split.

    Raises ConfigError for a malformed spec and :class:`~mcit.data.coin_format.DataError`
    (naming the file) for a problem with the data on disk.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    spec = parse_spec(spec)
    name = spec.display_name
    raw = _raw(spec, seed)
    if "all" in raw.splits:
        whole = raw.splits["all"]
        parts = {s: (whole, idx) for s, idx in _seeded_split(whole.labels, spec.test_fraction, seed, name).items()}
    else:
        parts = {s: (raw.splits[s], list(range(len(raw.splits[s])))) for s in SPLITS}
    samples = {}
    for split, (rs, idx) in parts.items():
        chosen = _limited(rs.labels, idx, limit, seed, f"{name}:{split}")
        samples[split] = [(rs.image_at(i), int(rs.labels[i])) for i in chosen]
    synonyms = dict(raw.synonyms)
    for cls, names in spec.synonyms:
        if cls not in raw.classes:
            raise ConfigError(f"EMT dataset {name!r}: synonyms given for {cls!r}, which is not a class "
                              f"(classes: {', '.join(raw.classes)})")
        synonyms[cls] = tuple(dict.fromkeys(synonyms.get(cls, ()) + names))
    return ClassificationSet(
        name=name,
        classes=raw.classes,
        train=samples["train"],
        test=samples["test"],
        synonyms=synonyms,
        noun=spec.noun or raw.noun,
        source=raw.source,
        seed=seed,
        official_split="all" not in raw.splits,
    )
