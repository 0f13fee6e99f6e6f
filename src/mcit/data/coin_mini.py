"""coin-mini: a small procedurally drawn stand-in for the CoIN benchmark.

Eight tasks in the CoIN order, each imitating the question kinds and answer format of its
CoIN counterpart, over one visual world of coloured shapes, everyday objects, written words
and book covers drawn with Pillow. Everything is a pure function of an integer seed: every
record gets its own ``random.Random(f"{seed}:{task}:{split}:{index}")`` stream (string
seeds are hashed with SHA-512 by ``random``, never with ``hash()``), so train and test draws
never share a stream and a test set does not depend on the size of the train set.

The dataset is written in the layout of the real CoIN release, so the ordinary readers of
:mod:`mcit.data.coin_format` load it::

    <root>/<Set>/<Task>/train.json, test.json     (Set: Original, Diverse, 10Type)
    <root>/images/<Task>/<split>_<index>.png      (image root: <root>/images)
    <root>/images/pretrain/train_<index>.png
    <root>/pretrain.json                          (alignment-stage data, task "pretrain")
    <root>/meta.json                              (written last: its presence means complete)

Balanced answers (option letters, yes/no, unanswerable share, classes) come from fixed
schedules: every block of consecutive records holds each value equally often, in an order
shuffled by the seed.

The three instruction sets of CoIN hold the same records and differ only in the instruction:
*Original* uses :data:`INSTRUCTIONS` (one template per task), *Diverse* one paraphrase per
task, *10Type* one of ten templates per task, drawn per record from its own
``random.Random(f"{seed}:{task}:{split}:{index}:10type")`` stream (see :data:`TEMPLATES`).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from mcit.data.coin_format import (
    format_bbox,
    read_task,
    read_train_json,
    write_test_json,
    write_train_json,
)
from mcit.data.schema import Sample
from mcit.io import atomic_write_text

__all__ = [
    "COLORS",
    "GENRES",
    "INSTRUCTIONS",
    "INSTRUCTION_SETS",
    "NAME",
    "OBJECTS",
    "SHAPES",
    "TASKS",
    "TEMPLATES",
    "VERSION",
    "WORDS",
    "generate",
    "image_root",
    "load",
    "load_pretrain",
    "vision_items",
    "task_dir",
]

NAME = "coin-mini"
VERSION = 4  # 2: pretrain mixture gained option-letter and box questions; 3: more of them, also on
# scenes; 4: ScienceQA options in their pool's fixed order

TASKS = ["ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCRVQA"]

_SHORT = "Answer the question using a single word or phrase."
INSTRUCTIONS: dict[str, str] = {
    "ScienceQA": "Answer with the option's letter from the given choices directly.",
    "TextVQA": _SHORT,
    "ImageNet": _SHORT,
    "GQA": _SHORT,
    "VizWiz": "When the provided information is insufficient, respond with 'Unanswerable'.\n"
    + _SHORT,
    "Grounding": "Please provide the bounding box coordinate of the region this sentence describes",
    "VQAv2": _SHORT,
    "OCRVQA": _SHORT,
}

INSTRUCTION_SETS = ("Original", "Diverse", "10Type")

_DIVERSE: dict[str, str] = {
    "ScienceQA": "Reply with only the letter of the correct option.",
    "TextVQA": "Give your answer as one word or a short phrase.",
    "ImageNet": "Name the object in a single word or a short phrase.",
    "GQA": "Respond with just a word or a brief phrase.",
    "VizWiz": "Reply with one word or a short phrase, or with 'Unanswerable' if the image does not "
    "contain enough information.",
    "Grounding": "Give the bounding box coordinates of the area that this phrase refers to",
    "VQAv2": "Keep the answer to a single word or a short phrase.",
    "OCRVQA": "State the answer as a single word or a short phrase.",
}

_SHORT_10 = [
    "Answer the question using a single word or phrase.",
    "Give your answer as one word or a short phrase.",
    "Respond with just a word or a brief phrase.",
    "Keep the answer to a single word or a short phrase.",
    "Reply briefly, using one word or a short phrase.",
    "State the answer as a single word or a short phrase.",
    "Use only a word or a short phrase to answer.",
    "Your answer should be one word or a brief phrase.",
    "Answer in as few words as possible, a single word or phrase.",
    "Provide a one-word or short-phrase answer.",
]

_TEN: dict[str, list[str]] = {
    "ScienceQA": [
        "Answer with the option's letter from the given choices directly.",
        "Reply with only the letter of the correct option.",
        "Choose the right option and give only its letter.",
        "Respond with the letter of the correct choice and nothing else.",
        "Pick the correct answer and state just its letter.",
        "Select one of the options and answer with its letter only.",
        "Give only the letter that marks the correct choice.",
        "Write the letter of the best option, without any explanation.",
        "Which option is correct? Answer with its letter alone.",
        "Answer by giving just the letter of the right choice.",
    ],
    "TextVQA": list(_SHORT_10),
    "ImageNet": [
        "Answer the question using a single word or phrase.",
        "Name the object in a single word or a short phrase.",
        "Say what the object is, in one word or a short phrase.",
        "Identify the object using a single word or phrase.",
        "Give the name of the object as one word or a brief phrase.",
        "Reply with the object's name only.",
        "Use one word or a short phrase to name what is shown.",
        "State the class of the object in a word or short phrase.",
        "Tell what is pictured using just a word or a short phrase.",
        "Respond with only the name of the object.",
    ],
    "GQA": list(_SHORT_10),
    "VizWiz": [
        "When the provided information is insufficient, respond with 'Unanswerable'. "
        "Answer the question using a single word or phrase.",
        "Reply with one word or a short phrase, or with 'Unanswerable' if the image does not "
        "contain enough information.",
        "Answer in a single word or phrase; if the question cannot be answered from the image, "
        "say 'Unanswerable'.",
        "Give a one-word or short-phrase answer, or 'Unanswerable' when the image is not enough "
        "to tell.",
        "If the image does not show enough to answer, respond 'Unanswerable'; otherwise answer "
        "with a word or short phrase.",
        "Use a single word or phrase to answer, and say 'Unanswerable' if that is impossible.",
        "Respond briefly with a word or phrase; answer 'Unanswerable' when the information is "
        "missing.",
        "Answer with just a word or a short phrase, or 'Unanswerable' if it cannot be determined.",
        "Keep the answer to a word or short phrase; reply 'Unanswerable' if the picture is "
        "insufficient.",
        "State the answer in one word or phrase, or write 'Unanswerable' when the image lacks "
        "the needed details.",
    ],
    "Grounding": [
        "Please provide the bounding box coordinate of the region this sentence describes",
        "Give the bounding box coordinates of the area that this phrase refers to",
        "Output the bounding box of the region described by this sentence",
        "Locate the region this phrase describes and give its bounding box coordinates",
        "Provide the box coordinates of the object mentioned in this sentence",
        "Return the bounding box for the part of the image this text refers to",
        "What are the bounding box coordinates of the region this sentence describes",
        "Find the region matching this description and output its bounding box",
        "State the coordinates of the box around the region this phrase names",
        "Mark the region this sentence refers to with its bounding box coordinates",
    ],
    "VQAv2": list(_SHORT_10),
    "OCRVQA": list(_SHORT_10),
}

# instruction set -> task -> templates. The Original template of VizWiz has two lines (the
# instruction proper is its last line); every other template is a single line.
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "Original": {t: [INSTRUCTIONS[t]] for t in TASKS},
    "Diverse": {t: [_DIVERSE[t]] for t in TASKS},
    "10Type": _TEN,
}

# ---------------------------------------------------------------------------------------
# the visual world

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
PLURALS = {s: ("crosses" if s == "cross" else s + "s") for s in SHAPES}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 230),
    "yellow": (240, 215, 20),
    "purple": (140, 50, 200),
    "orange": (250, 135, 10),
}
COLOR_NAMES = tuple(COLORS)
BACKGROUND = (235, 235, 235)  # the background of every shape scene
NEUTRALS = ((235, 235, 235), (215, 225, 240), (240, 232, 215), (225, 240, 225))
OBJECTS = ("house", "tree", "sun", "flower", "boat", "fish", "car", "mushroom")
WORDS = (
    "moon", "lamp", "cake", "bird", "rain", "king", "gold", "milk",
    "frog", "door", "wolf", "taxi", "open", "stop", "exit", "sale",
)
TITLES = ("dawn", "river", "ember", "echo", "frost", "maze", "orbit", "petal",
          "quest", "storm", "tide", "vale")
AUTHORS = ("smith", "jones", "brown", "lee", "patel", "garcia", "kim", "novak", "silva", "ito")
# genre -> (cover colour, icon shape)
GENRES: dict[str, tuple[str, str]] = {
    "fantasy": ("purple", "star"),
    "cooking": ("orange", "circle"),
    "travel": ("green", "triangle"),
    "science": ("blue", "cross"),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
LETTERS = "ABCDE"
UNANSWERABLE = "unanswerable"


@dataclass(frozen=True)
class _Obj:
    shape: str
    color: str
    row: int
    col: int
    cx: float
    cy: float
    r: float


@dataclass
class _Item:
    image: Image.Image
    question: str  # without the instruction line (for Grounding: the referring phrase)
    answer: str | list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    objects: list[_Obj] = field(default_factory=list)  # for checks; not written to disk
    target: int | None = None  # Grounding: index of the referred object


def _balanced(key: str, name: str, i: int, values: Sequence) -> Any:
    """Value for record ``i`` from a schedule in which every block of len(values) consecutive
    records holds each entry of ``values`` once, in a seeded order."""
    block, k = divmod(i, len(values))
    return _block_order(key, name, block, tuple(values))[k]


@lru_cache(maxsize=4096)
def _block_order(key: str, name: str, block: int, values: tuple) -> tuple:
    order = list(values)
    random.Random(f"{key}:{name}:{block}").shuffle(order)
    return tuple(order)


def _luma(rgb: Sequence[int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _ink_for(rgb: Sequence[int]) -> tuple[int, int, int]:
    return (20, 20, 20) if _luma(rgb) > 140 else (250, 250, 250)


def _a(word: str) -> str:
    """The word with its indefinite article: "a red ...", "an orange ..."."""
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _pos_phrase(row: int, col: int) -> str:
    if row == 1 and col == 1:
        return "in the center"
    if row == 1:
        return f"on the {COLS[col]}"
    if col == 1:
        return f"at the {ROWS[row]}"
    return f"at the {ROWS[row]} {COLS[col]}"


# ---------------------------------------------------------------------------------------
# drawing


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = r * 0.85
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)], fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)
    elif shape == "cross":
        w = 0.36 * r
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(f"unknown shape {shape!r}")


def _draw_object(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float,
                 color: tuple[int, int, int]) -> None:
    """Draw one of OBJECTS roughly inside the square of half-side r around (cx, cy)."""
    dark = (50, 40, 40)
    if kind == "house":
        draw.rectangle([cx - 0.7 * r, cy - 0.1 * r, cx + 0.7 * r, cy + 0.9 * r], fill=color)
        draw.polygon([(cx - 0.95 * r, cy - 0.1 * r), (cx + 0.95 * r, cy - 0.1 * r), (cx, cy - 0.9 * r)],
                     fill=(130, 45, 35))
        draw.rectangle([cx - 0.17 * r, cy + 0.35 * r, cx + 0.17 * r, cy + 0.9 * r], fill=dark)
    elif kind == "tree":
        draw.rectangle([cx - 0.16 * r, cy + 0.15 * r, cx + 0.16 * r, cy + 0.95 * r], fill=(115, 70, 30))
        draw.ellipse([cx - 0.75 * r, cy - 0.95 * r, cx + 0.75 * r, cy + 0.35 * r], fill=(35, 140, 45))
    elif kind == "sun":
        w = max(1, round(r / 7))
        for k in range(8):
            a = k * math.pi / 4
            draw.line([(cx + 0.6 * r * math.cos(a), cy + 0.6 * r * math.sin(a)),
                       (cx + 0.95 * r * math.cos(a), cy + 0.95 * r * math.sin(a))], fill=(245, 170, 0), width=w)
        draw.ellipse([cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r], fill=(250, 210, 0))
    elif kind == "flower":
        draw.line([(cx, cy - 0.2 * r), (cx, cy + 0.95 * r)], fill=(35, 140, 45), width=max(1, round(r / 7)))
        fy = cy - 0.35 * r
        for k in range(5):
            a = -math.pi / 2 + k * 2 * math.pi / 5
            px, py = cx + 0.33 * r * math.cos(a), fy + 0.33 * r * math.sin(a)
            draw.ellipse([px - 0.28 * r, py - 0.28 * r, px + 0.28 * r, py + 0.28 * r], fill=color)
        draw.ellipse([cx - 0.17 * r, fy - 0.17 * r, cx + 0.17 * r, fy + 0.17 * r], fill=(250, 220, 60))
    elif kind == "boat":
        draw.line([(cx, cy + 0.3 * r), (cx, cy - 0.9 * r)], fill=dark, width=max(1, round(r / 10)))
        draw.polygon([(cx + 0.08 * r, cy - 0.85 * r), (cx + 0.08 * r, cy + 0.2 * r), (cx + 0.75 * r, cy + 0.2 * r)],
                     fill=(255, 255, 255), outline=dark)
        draw.polygon([(cx - 0.95 * r, cy + 0.3 * r), (cx + 0.95 * r, cy + 0.3 * r),
                      (cx + 0.6 * r, cy + 0.8 * r), (cx - 0.6 * r, cy + 0.8 * r)], fill=color)
    elif kind == "fish":
        draw.polygon([(cx + 0.3 * r, cy), (cx + 0.95 * r, cy - 0.5 * r), (cx + 0.95 * r, cy + 0.5 * r)], fill=color)
        draw.ellipse([cx - 0.85 * r, cy - 0.45 * r, cx + 0.5 * r, cy + 0.45 * r], fill=color)
        e = max(1.0, 0.09 * r)
        draw.ellipse([cx - 0.5 * r - e, cy - 0.1 * r - e, cx - 0.5 * r + e, cy - 0.1 * r + e], fill=(10, 10, 10))
    elif kind == "car":
        draw.rectangle([cx - 0.5 * r, cy - 0.5 * r, cx + 0.4 * r, cy - 0.05 * r], fill=color)
        draw.rectangle([cx - 0.35 * r, cy - 0.4 * r, cx + 0.25 * r, cy - 0.12 * r], fill=(190, 225, 250))
        draw.rectangle([cx - 0.95 * r, cy - 0.1 * r, cx + 0.95 * r, cy + 0.4 * r], fill=color)
        for wx in (-0.5, 0.5):
            draw.ellipse([cx + wx * r - 0.24 * r, cy + 0.2 * r, cx + wx * r + 0.24 * r, cy + 0.68 * r],
                         fill=(20, 20, 20))
    elif kind == "mushroom":
        draw.rectangle([cx - 0.25 * r, cy - 0.2 * r, cx + 0.25 * r, cy + 0.85 * r], fill=(225, 205, 170),
                       outline=dark)
        draw.pieslice([cx - 0.9 * r, cy - 0.85 * r, cx + 0.9 * r, cy + 0.35 * r], 180, 360, fill=color)
        for dx, dy in ((-0.45, -0.4), (0.0, -0.6), (0.45, -0.4)):
            e = 0.1 * r
            draw.ellipse([cx + dx * r - e, cy + dy * r - e, cx + dx * r + e, cy + dy * r + e], fill=(255, 255, 255))
    else:  # pragma: no cover - guarded by OBJECTS
        raise ValueError(f"unknown object {kind!r}")


_OBJECT_COLORS = {
    "house": ("red", "blue", "yellow", "purple", "orange", "green"),
    "flower": ("red", "blue", "yellow", "purple", "orange"),
    "boat": COLOR_NAMES,
    "fish": COLOR_NAMES,
    "car": COLOR_NAMES,
    "mushroom": ("red", "orange", "purple"),
}


def _object_color(rng: random.Random, kind: str) -> str | None:
    """The colour name of an object's main part, or None for objects of a fixed look."""
    options = _OBJECT_COLORS.get(kind)
    return rng.choice(options) if options else None


def _freetype_available() -> bool:
    try:
        return isinstance(ImageFont.load_default(size=12), ImageFont.FreeTypeFont)
    except Exception:  # old Pillow (no size argument) or no FreeType support
        return False


_FREETYPE = _freetype_available()


@lru_cache(maxsize=None)
def _ft_font(size: int):
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=1)
def _bitmap_font():
    loader = getattr(ImageFont, "load_default_imagefont", None)
    return loader() if loader is not None else ImageFont.load_default()


@lru_cache(maxsize=8192)
def _text_mask(text: str, size: int, freetype: bool) -> Image.Image:
    """A tight 'L' mask of ``text`` about ``size`` pixels tall (font size)."""
    font = _ft_font(size) if freetype else _bitmap_font()
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255)
    if not freetype:  # scale the small bitmap font up to the requested size
        scale = max(1, round(size / 11))
        mask = mask.resize((mask.width * scale, mask.height * scale), Image.NEAREST)
    return mask


def _fit_text(text: str, max_w: float, max_h: float, max_size: int) -> Image.Image:
    for size in range(max(6, max_size), 5, -1):
        mask = _text_mask(text, size, _FREETYPE)
        if mask.width <= max_w and mask.height <= max_h:
            return mask
    return _text_mask(text, 6, _FREETYPE)


def _paste_text(img: Image.Image, mask: Image.Image, cx: float, cy: float, ink) -> None:
    x = int(round(cx - mask.width / 2))
    y = int(round(cy - mask.height / 2))
    img.paste(tuple(ink), (x, y, x + mask.width, y + mask.height), mask)


def _photo_background(rng: random.Random, S: int, dark: bool = False) -> Image.Image:
    """A smooth two-tone gradient with sensor-like noise."""
    nrng = np.random.default_rng(rng.getrandbits(63))
    base = rng.randint(30, 80) if dark else rng.randint(110, 220)
    c1 = np.array([base + rng.randint(-20, 20) for _ in range(3)], dtype=np.float64)
    c2 = np.array([base + rng.randint(-35, 35) for _ in range(3)], dtype=np.float64)
    t = np.linspace(0.0, 1.0, S)
    t = t[:, None, None] if rng.random() < 0.5 else t[None, :, None]
    arr = c1 * (1 - t) + c2 * t + np.zeros((S, S, 1))
    arr = arr + nrng.normal(0.0, 5.0, size=(S, S, 3))
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------------------
# scenes of shapes on a 3x3 grid


def _scene(rng: random.Random, S: int, shapes: Sequence[str], colors: Sequence[str],
           cells: Sequence[tuple[int, int]] | None = None) -> list[_Obj]:
    n = len(shapes)
    if cells is None:
        cells = rng.sample([(r, c) for r in range(3) for c in range(3)], n)
    cell = S / 3
    objs = []
    for shape, color, (row, col) in zip(shapes, colors, cells):
        cx = (col + 0.5) * cell + rng.uniform(-0.04, 0.04) * cell
        cy = (row + 0.5) * cell + rng.uniform(-0.04, 0.04) * cell
        r = rng.uniform(0.37, 0.44) * cell
        objs.append(_Obj(shape, color, row, col, cx, cy, r))
    return objs


def _render_scene(objs: Sequence[_Obj], S: int) -> Image.Image:
    img = Image.new("RGB", (S, S), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objs:
        _draw_shape(draw, o.shape, o.cx, o.cy, o.r, COLORS[o.color])
    return img


def _object_box(o: _Obj, S: int) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom; right/bottom exclusive) of what was drawn for o."""
    mask = Image.new("L", (S, S), 0)
    _draw_shape(ImageDraw.Draw(mask), o.shape, o.cx, o.cy, o.r, 255)
    box = mask.getbbox()
    assert box is not None
    return box


def _random_scene(rng: random.Random, S: int, n: int, distinct_shapes: bool,
                  shape_pool: Sequence[str] = SHAPES) -> list[_Obj]:
    shapes = rng.sample(list(shape_pool), n) if distinct_shapes else [rng.choice(shape_pool) for _ in range(n)]
    colors = [rng.choice(COLOR_NAMES) for _ in range(n)]
    return _scene(rng, S, shapes, colors)


def _caption(objs: Sequence[_Obj]) -> str:
    parts = [f"{_a(o.color)} {o.shape} {_pos_phrase(o.row, o.col)}" for o in sorted(objs, key=lambda o: (o.row, o.col))]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


# ---------------------------------------------------------------------------------------
# task generators: (rng, index, schedule key, image size) -> _Item

Gen = Callable[[random.Random, int, str, int], _Item]

_SQA_KINDS = ("shape", "color", "count", "present")
# (number of options, index of the correct option): within each option count every letter is
# equally frequent; a quarter of the questions have 3 options.
_SQA_LAYOUTS = tuple([(3, k) for k in range(3)] * 4 + [(4, k) for k in range(4)] * 9)


def _gen_scienceqa(rng: random.Random, i: int, key: str, S: int) -> _Item:
    """Options are listed in their pool's fixed order (shapes, colours, counts ascending), so the
    letter follows from the answer and the offered options: the tiny model cannot learn to point
    at a shuffled option line in a CPU budget (measured: chance even on its alignment data)."""
    kind = _balanced(key, "kind", i, _SQA_KINDS)
    n_opt, pos = _balanced(key, "layout", i, _SQA_LAYOUTS)
    for _ in range(1000):
        if kind == "shape":
            objs = _random_scene(rng, S, 1, True)
            question, correct, pool = "Which shape is shown in the image?", objs[0].shape, SHAPES
        elif kind == "color":
            objs = _random_scene(rng, S, rng.randint(1, 3), True)
            target = rng.choice(objs)
            question, correct, pool = f"What color is the {target.shape}?", target.color, COLOR_NAMES
        elif kind == "count":
            objs = _random_scene(rng, S, rng.randint(1, 4), False)
            question, correct = "How many shapes are in the image?", str(len(objs))
            pool = tuple(str(k) for k in range(1, 7))
        else:
            objs = _random_scene(rng, S, rng.randint(1, 3), True)
            present = {o.shape for o in objs}
            question, correct = "Which of these shapes is in the image?", rng.choice(sorted(present))
            pool = tuple(s for s in SHAPES if s not in present or s == correct)
        k = pool.index(correct)
        before, after = list(pool[:k]), list(pool[k + 1:])
        if len(before) >= pos and len(after) >= n_opt - 1 - pos:  # the scheduled letter is possible
            options = sorted(rng.sample(before, pos)) + [correct] + rng.sample(after, n_opt - 1 - pos)
            options.sort(key=pool.index)
            lines = [question] + [f"{LETTERS[j]}. {opt}" for j, opt in enumerate(options)]
            return _Item(_render_scene(objs, S), "\n".join(lines), LETTERS[pos], objects=objs)
    raise RuntimeError("ScienceQA generator found no valid layout")  # pragma: no cover


def _near_miss(rng: random.Random, word: str) -> str:
    k = rng.randrange(len(word))
    if rng.random() < 0.5 and len(word) > 3:
        return word[:k] + word[k + 1:]
    letters = [c for c in "aeiourstln" if c != word[k]]
    return word[:k] + rng.choice(letters) + word[k + 1:]


def _text_image(rng: random.Random, S: int, word: str) -> tuple[Image.Image, str, str]:
    """A word in large letters, plain on a tinted background or on a coloured sign.
    Returns (image, style, colour name of the background or sign)."""
    color = rng.choice(COLOR_NAMES)
    if rng.random() < 0.5:
        tint = tuple(round(0.45 * c + 0.55 * 255) for c in COLORS[color])
        img = Image.new("RGB", (S, S), tint)
        mask = _fit_text(word, 0.9 * S, 0.5 * S, int(0.42 * S))
        ink = rng.choice([(15, 15, 15), (40, 40, 120), (110, 20, 20)])
        _paste_text(img, mask, S / 2 + rng.uniform(-0.05, 0.05) * S, S / 2 + rng.uniform(-0.2, 0.2) * S, ink)
        return img, "plain", color
    img = _photo_background(rng, S)
    w, h = rng.uniform(0.82, 0.95) * S, rng.uniform(0.42, 0.55) * S
    cx, cy = S / 2 + rng.uniform(-0.02, 0.02) * S, S / 2 + rng.uniform(-0.15, 0.15) * S
    draw = ImageDraw.Draw(img)
    draw.rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=COLORS[color], outline=(30, 30, 30))
    mask = _fit_text(word, w - 4, h - 4, int(0.42 * S))
    _paste_text(img, mask, cx, cy, _ink_for(COLORS[color]))
    return img, "sign", color


def _gen_textvqa(rng: random.Random, i: int, key: str, S: int) -> _Item:
    word = _balanced(key, "word", i, WORDS)
    img, style, _ = _text_image(rng, S, word)
    if style == "plain":
        question = rng.choice(["What word is written in the image?", "What is written in the image?"])
    else:
        question = rng.choice(["What does the sign say?", "What is written on the sign?"])
    n_same = rng.randint(6, 9)
    variants = [word.upper(), word.capitalize(), _near_miss(rng, word), _near_miss(rng, word)]
    others = [word] * (n_same - 1) + [rng.choice(variants) for _ in range(10 - n_same)]
    rng.shuffle(others)
    return _Item(img, question, [word] + others)


def _gen_imagenet(rng: random.Random, i: int, key: str, S: int) -> _Item:
    kind = _balanced(key, "class", i, OBJECTS)
    return _Item(_object_image(rng, S, kind)[0], "What is the object in the image?", kind)


# --- GQA --------------------------------------------------------------------------------

_GQA_PLAN = (("relate", None), ("verify", "yes"), ("verify", "no"), ("same_color", None),
             ("attr", None), ("choose", None))


def _gqa_candidates(objs: Sequence[_Obj], kind: str) -> list[tuple[str, str]]:
    """Every (question, answer) of ``kind`` that is answerable and unambiguous in the scene.
    GQA scenes hold distinct shapes, so "the <shape>" always names exactly one object."""
    out: list[tuple[str, str]] = []
    for x in objs:
        if kind == "relate":
            for side, test in (("left", lambda o: o.col < x.col), ("right", lambda o: o.col > x.col)):
                hits = [o for o in objs if o is not x and test(o)]
                if len(hits) == 1:
                    out.append((f"What color is the shape to the {side} of the {x.shape}?", hits[0].color))
                    out.append((f"What shape is to the {side} of the {x.shape}?", hits[0].shape))
        elif kind == "same_color":
            mates = [o for o in objs if o is not x and o.color == x.color]
            if len(mates) == 1:
                out.append((f"What shape is the same color as the {x.shape}?", mates[0].shape))
        elif kind == "attr":
            out.append((f"What color is the {x.shape}?", x.color))
        elif kind == "verify":
            for c in COLOR_NAMES:
                out.append((f"Is the {x.shape} {c}?", "yes" if x.color == c else "no"))
            for y in objs:
                if y is x:
                    continue
                if x.row != y.row:
                    out.append((f"Is the {x.shape} above the {y.shape}?", "yes" if x.row < y.row else "no"))
                    out.append((f"Is the {x.shape} below the {y.shape}?", "yes" if x.row > y.row else "no"))
                if x.col != y.col:
                    out.append((f"Is the {x.shape} to the left of the {y.shape}?", "yes" if x.col < y.col else "no"))
                    out.append((f"Is the {x.shape} to the right of the {y.shape}?", "yes" if x.col > y.col else "no"))
        elif kind == "choose":
            for y in objs:
                if y is not x and x.col != y.col:
                    out.append((f"Is the {x.shape} to the left or to the right of the {y.shape}?",
                                "left" if x.col < y.col else "right"))
    return out


def _gen_gqa(rng: random.Random, i: int, key: str, S: int) -> _Item:
    kind, want = _balanced(key, "plan", i, _GQA_PLAN)
    for _ in range(1000):
        n = rng.choice([2, 3])
        shapes = rng.sample(SHAPES, n)
        colors = [rng.choice(COLOR_NAMES) for _ in range(n)]
        if kind == "same_color":
            colors = rng.sample(COLOR_NAMES, n)
            colors[1] = colors[0]
        objs = _scene(rng, S, shapes, colors)
        cands = [qa for qa in _gqa_candidates(objs, kind) if want is None or qa[1] == want]
        if kind == "verify" and want == "yes":  # keep colour checks from dominating
            rel = [qa for qa in cands if " above " in qa[0] or " below " in qa[0] or " of the " in qa[0]]
            cands = rel if rel and rng.random() < 0.6 else cands
        if cands:
            question, answer = rng.choice(cands)
            return _Item(_render_scene(objs, S), question, answer, objects=objs)
    raise RuntimeError("GQA generator found no valid question")  # pragma: no cover


# --- VizWiz -----------------------------------------------------------------------------

_VIZWIZ_PLAN = tuple([True] * 7 + [False] * 18)  # 28% unanswerable


def _gen_vizwiz(rng: random.Random, i: int, key: str, S: int) -> _Item:
    unanswerable = _balanced(key, "unans", i, _VIZWIZ_PLAN)
    mode = rng.choice(["blank", "blur", "absent"]) if unanswerable else "clear"
    img = _photo_background(rng, S, dark=(mode == "blank" and rng.random() < 0.5))
    use_shape = mode == "absent" or rng.random() < 0.6
    r = rng.uniform(0.25, 0.34) * S
    cx, cy = rng.uniform(r + 1, S - r - 1), rng.uniform(r + 1, S - r - 1)
    draw = ImageDraw.Draw(img)
    if use_shape:
        shape, color = rng.choice(SHAPES), rng.choice(COLOR_NAMES)
        name = shape
    else:
        name = rng.choice(OBJECTS)
        color = _object_color(rng, name)
    if mode != "blank":
        if use_shape:
            _draw_shape(draw, name, cx, cy, r, COLORS[color])
        else:
            _draw_object(draw, name, cx, cy, r, COLORS[color] if color else (0, 0, 0))
    img = img.filter(ImageFilter.GaussianBlur(S / 4.5 if mode == "blur" else 0.6))
    if mode == "clear":
        if use_shape and rng.random() < 0.5:
            question = rng.choice(["What color is this?", f"What color is the {name}?"])
            answer = color
        else:
            question = rng.choice(["What is this?", "What is in this picture?"])
            answer = name
    elif mode == "absent":
        other = rng.choice([s for s in SHAPES if s != name])
        question, answer = f"What color is the {other}?", UNANSWERABLE
    else:
        question = rng.choice(["What is this?", "What is in this picture?", "What color is this?"])
        if mode == "blur":
            question = rng.choice(["What is this?", "What is in this picture?"])
        answer = UNANSWERABLE
    return _Item(img, question, answer, extra={"mode": mode})


# --- Grounding --------------------------------------------------------------------------

_GROUNDING_KINDS = ("color_shape", "shape", "color", "position")


def _ground_phrases(objs: Sequence[_Obj]) -> list[tuple[str, str, int]]:
    """Every (kind, phrase, index) whose phrase matches exactly one object of the scene."""
    out = []
    for j, x in enumerate(objs):
        preds = [
            ("color_shape", f"the {x.color} {x.shape}", lambda o, x=x: o.color == x.color and o.shape == x.shape),
            ("shape", f"the {x.shape}", lambda o, x=x: o.shape == x.shape),
            ("color", f"the {x.color} shape", lambda o, x=x: o.color == x.color),
        ]
        for kind, phrase, pred in preds:
            if sum(1 for o in objs if pred(o)) == 1:
                out.append((kind, phrase, j))
        same = [o for o in objs if o.shape == x.shape and o is not x]
        if same:
            if all(x.col < o.col for o in same):
                out.append(("position", f"the {x.shape} on the left", j))
            if all(x.col > o.col for o in same):
                out.append(("position", f"the {x.shape} on the right", j))
            if all(x.row < o.row for o in same):
                out.append(("position", f"the {x.shape} at the top", j))
            if all(x.row > o.row for o in same):
                out.append(("position", f"the {x.shape} at the bottom", j))
    return out


def _gen_grounding(rng: random.Random, i: int, key: str, S: int) -> _Item:
    kind = _balanced(key, "kind", i, _GROUNDING_KINDS)
    for _ in range(1000):
        n = rng.choice([2, 3])
        shapes = [rng.choice(SHAPES) for _ in range(n)]
        colors = [rng.choice(COLOR_NAMES) for _ in range(n)]
        if kind == "position":
            shapes[1] = shapes[0]
            if rng.random() < 0.5:
                colors[1] = colors[0]
        objs = _scene(rng, S, shapes, colors)
        cands = [c for c in _ground_phrases(objs) if c[0] == kind]
        if cands:
            _, phrase, j = rng.choice(cands)
            left, top, right, bottom = _object_box(objs[j], S)
            box = [left / S, top / S, right / S, bottom / S]
            answer = format_bbox(box)
            extra = {"bbox": [float(f"{v:.2f}") for v in box], "size": [S, S]}
            return _Item(_render_scene(objs, S), phrase, answer, extra=extra, objects=objs, target=j)
    raise RuntimeError("Grounding generator found no valid phrase")  # pragma: no cover


# --- VQAv2 ------------------------------------------------------------------------------

_VQA_PLAN = (("count_shape", None), ("count_all", None), ("color", None), ("color", None),
             ("yesno", "yes"), ("yesno", "no"))


def _gen_vqav2(rng: random.Random, i: int, key: str, S: int) -> _Item:
    kind, want = _balanced(key, "plan", i, _VQA_PLAN)
    for _ in range(1000):
        n = rng.randint(1, 4)
        if kind == "count_shape":
            pool = rng.sample(SHAPES, rng.randint(1, 2))
            objs = _scene(rng, S, [rng.choice(pool) for _ in range(n)], [rng.choice(COLOR_NAMES) for _ in range(n)])
        else:
            objs = _random_scene(rng, S, n, False)
        shapes = [o.shape for o in objs]
        if kind == "count_shape":
            s = rng.choice(sorted(set(shapes)))
            qa = (f"How many {PLURALS[s]} are there?", str(shapes.count(s)))
        elif kind == "count_all":
            qa = (rng.choice(["How many shapes are there?", "How many shapes are in the picture?"]), str(n))
        elif kind == "color":
            unique = [o for o in objs if shapes.count(o.shape) == 1]
            if not unique:
                continue
            o = rng.choice(unique)
            qa = (f"What color is the {o.shape}?", o.color)
        else:
            template = rng.choice(["shape", "color_shape", "color"])
            if template == "shape":
                pool = sorted(set(shapes)) if want == "yes" else [s for s in SHAPES if s not in shapes]
                qa = (f"Is there a {rng.choice(pool)}?", want)
            elif template == "color_shape":
                have = {(o.color, o.shape) for o in objs}
                pool = sorted(have) if want == "yes" else [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in have]
                c, s = rng.choice(pool)
                qa = (f"Is there {_a(c)} {s}?", want)
            else:
                colors = {o.color for o in objs}
                pool = sorted(colors) if want == "yes" else [c for c in COLOR_NAMES if c not in colors]
                qa = (f"Are there any {rng.choice(pool)} shapes?", want)
        return _Item(_render_scene(objs, S), qa[0], qa[1], objects=objs)
    raise RuntimeError("VQAv2 generator found no valid question")  # pragma: no cover


# --- OCRVQA -----------------------------------------------------------------------------

_OCR_PLAN = (("title", None), ("author", None), ("genre", None), ("yesno", "yes"),
             ("title", None), ("author", None), ("genre", None), ("yesno", "no"))


def _cover(rng: random.Random, S: int, title: str, author: str, genre: str) -> Image.Image:
    color_name, icon = GENRES[genre]
    base = COLORS[color_name]
    bg = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in base)
    img = Image.new("RGB", (S, S), bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, S - 1, S - 1], outline=tuple(round(c * 0.55) for c in bg), width=max(1, S // 32))
    ink = _ink_for(bg)
    title_mask = _fit_text(title, 0.9 * S, 0.28 * S, int(0.3 * S))
    _paste_text(img, title_mask, S / 2 + rng.uniform(-0.03, 0.03) * S, 0.18 * S, ink)
    _draw_shape(draw, icon, S / 2 + rng.uniform(-0.05, 0.05) * S, 0.5 * S, rng.uniform(0.11, 0.14) * S,
                (255, 255, 255) if _luma(bg) < 140 else (30, 30, 30))
    author_mask = _fit_text(author, 0.9 * S, 0.22 * S, int(0.24 * S))
    _paste_text(img, author_mask, S / 2 + rng.uniform(-0.03, 0.03) * S, 0.82 * S, ink)
    return img


def _gen_ocrvqa(rng: random.Random, i: int, key: str, S: int) -> _Item:
    kind, want = _balanced(key, "plan", i, _OCR_PLAN)
    title, author = rng.choice(TITLES), rng.choice(AUTHORS)
    genre = _balanced(key, "genre", i, tuple(GENRES))
    img = _cover(rng, S, title, author, genre)
    if kind == "title":
        qa = ("What is the title of this book?", title)
    elif kind == "author":
        qa = ("Who wrote this book?", author)
    elif kind == "genre":
        qa = ("What is the genre of this book?", genre)
    else:
        asked = genre if want == "yes" else rng.choice([g for g in GENRES if g != genre])
        qa = (f"Is this a {asked} book?", want)
    return _Item(img, qa[0], qa[1])


_GENERATORS: dict[str, Gen] = {
    "ScienceQA": _gen_scienceqa,
    "TextVQA": _gen_textvqa,
    "ImageNet": _gen_imagenet,
    "GQA": _gen_gqa,
    "VizWiz": _gen_vizwiz,
    "Grounding": _gen_grounding,
    "VQAv2": _gen_vqav2,
    "OCRVQA": _gen_ocrvqa,
}

# --- pretrain mixture -------------------------------------------------------------------

_PRETRAIN_KINDS = tuple(["scene"] * 7 + ["object"] * 4 + ["text"] * 3 + ["cover"] * 3 + ["photo"] * 3
                        + ["choice"] * 4 + ["where"] * 3)
_DESCRIBE = ("Describe the image.", "What is in this picture?", "Give a short description of the image.")


def _object_image(rng: random.Random, S: int, name: str,
                  size: tuple[float, float] = (0.3, 0.4)) -> tuple[Image.Image, str | None]:
    """One everyday object of half-side ``size`` (fraction of S) at a random place; returns
    (image, colour name or None)."""
    img = Image.new("RGB", (S, S), rng.choice(NEUTRALS))
    r = rng.uniform(*size) * S
    cx, cy = rng.uniform(r + 1, S - r - 1), rng.uniform(r + 1, S - r - 1)
    color = _object_color(rng, name)
    _draw_object(ImageDraw.Draw(img), name, cx, cy, r, COLORS[color] if color else (0, 0, 0))
    return img, color


def _pretrain_choice(rng: random.Random, S: int) -> _Item:
    """A generic multiple-choice question answered with the option letter, as in LLaVA-1.5's
    instruction mixture (A-OKVQA): about objects, signs and shape scenes, worded unlike
    ScienceQA's questions and without its instruction line."""
    kind = rng.choice(["object", "word", "shape", "color", "count"])
    if kind == "object":
        correct = rng.choice(OBJECTS)
        img = _object_image(rng, S, correct)[0]
        question, pool = rng.choice(["Which object is this?", "What is shown here?"]), OBJECTS
    elif kind == "word":
        correct = rng.choice(WORDS)
        img = _text_image(rng, S, correct)[0]
        question, pool = rng.choice(["Which word can you read?", "What does it say?"]), WORDS
    else:
        objs = _random_scene(rng, S, rng.randint(1, 3), True)
        img, target = _render_scene(objs, S), rng.choice(objs)
        question, correct, pool = {
            "shape": (f"Which shape is {target.color}?", target.shape, SHAPES),
            "color": (f"Pick the colour of the {target.shape}.", target.color, COLOR_NAMES),
            "count": ("Count the shapes.", str(len(objs)), tuple(str(k) for k in range(1, 7))),
        }[kind]
        if kind == "shape" and sum(o.color == target.color for o in objs) > 1:
            question, correct = "Which shape can you see?", target.shape
            pool = tuple(x for x in SHAPES if x == correct or x not in {o.shape for o in objs})
    n_opt = rng.choice([2, 3, 4, 5])
    options = rng.sample([p for p in pool if p != correct], min(n_opt - 1, len(pool) - 1))
    pos = rng.randrange(len(options) + 1)
    options.insert(pos, correct)
    lines = [question] + [f"{LETTERS[k]}. {opt}" for k, opt in enumerate(options)]
    return _Item(img, "\n".join(lines), LETTERS[pos])


def _pretrain_where(rng: random.Random, S: int) -> _Item:
    """Where an object is, as a box in [0, 1] (LLaVA-1.5's mixture has RefCOCO boxes): single
    objects placed anywhere, unlike Grounding's scenes of several shapes on a grid."""
    name = rng.choice(OBJECTS)
    img, _ = _object_image(rng, S, name, size=(0.12, 0.3))
    background = Image.new("RGB", (S, S), img.getpixel((0, 0)))  # the plain background colour
    left, top, right, bottom = ImageChops.difference(img, background).getbbox()
    box = [left / S, top / S, right / S, bottom / S]
    return _Item(img, rng.choice([f"Where is the {name}?", f"Where is the {name} in the picture?"]), format_bbox(box))


def _gen_pretrain(rng: random.Random, i: int, key: str, S: int) -> _Item:
    """Captions and generic questions, without any task instruction line."""
    kind = _balanced(key, "kind", i, _PRETRAIN_KINDS)
    if kind == "choice":
        return _pretrain_choice(rng, S)
    if kind == "where":
        return _pretrain_where(rng, S)
    describe = rng.random() < 0.5
    if kind == "scene":
        objs = _random_scene(rng, S, rng.randint(1, 4), False)
        img = _render_scene(objs, S)
        shapes = [o.shape for o in objs]
        unique = [o for o in objs if shapes.count(o.shape) == 1]
        q = rng.choice(["count", "color"] if unique else ["count"])
        if describe:
            return _Item(img, rng.choice(_DESCRIBE), _caption(objs))
        if q == "count":
            n = len(objs)
            return _Item(img, "How many shapes are there?",
                         f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} shape{'' if n == 1 else 's'}.")
        o = rng.choice(unique)
        return _Item(img, f"What color is the {o.shape}?", f"The {o.shape} is {o.color}.")
    if kind == "object":
        name = rng.choice(OBJECTS)
        img, color = _object_image(rng, S, name)
        what = f"{color} {name}" if color else name
        if describe:
            return _Item(img, rng.choice(_DESCRIBE), f"A picture of {_a(what)}.")
        return _Item(img, "What is this?", f"It is {_a(what)}.")
    if kind == "text":
        word = rng.choice(WORDS)
        img, style, color = _text_image(rng, S, word)
        if describe:
            where = f"on {_a(color)} sign" if style == "sign" else f"on a light {color} background"
            return _Item(img, rng.choice(_DESCRIBE), f'The word "{word}" written {where}.')
        return _Item(img, rng.choice(["What is written?", "What is written here?"]), word)
    if kind == "cover":
        title, author, genre = rng.choice(TITLES), rng.choice(AUTHORS), rng.choice(tuple(GENRES))
        img = _cover(rng, S, title, author, genre)
        color, icon = GENRES[genre]
        if describe:
            return _Item(img, rng.choice(_DESCRIBE),
                         f'{_a(color).capitalize()} book cover with the title "{title}", a {icon} and the name "{author}".')
        return _Item(img, "What is written on the cover?", f'"{title}" at the top and "{author}" at the bottom.')
    # photo-like images, including blank and blurred ones
    mode = rng.choice(["clear", "clear", "blank", "blur"])
    img = _photo_background(rng, S, dark=(mode == "blank" and rng.random() < 0.5))
    r = rng.uniform(0.25, 0.34) * S
    cx, cy = rng.uniform(r + 1, S - r - 1), rng.uniform(r + 1, S - r - 1)
    shape, color = rng.choice(SHAPES), rng.choice(COLOR_NAMES)
    if mode != "blank":
        _draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, COLORS[color])
    img = img.filter(ImageFilter.GaussianBlur(S / 4.5 if mode == "blur" else 0.6))
    answer = {
        "clear": f"A photo of {_a(color)} {shape}.",
        "blank": "A blank image; nothing can be seen in it.",
        "blur": "A very blurry image; nothing can be recognized.",
    }[mode]
    return _Item(img, rng.choice(_DESCRIBE) if describe else "What can you see?", answer)


# --- vision-encoder pretraining -----------------------------------------------------------

_VISION_KINDS = ("text", "text", "text", "cover", "cover", "object", "shape")


def _gen_vision(rng: random.Random, i: int, key: str, S: int) -> tuple[Image.Image, dict[str, str]]:
    """An image with its attribute labels (word, title, author, object, shape, colour): the
    labelled images the built-in model's vision encoder is pretrained on, the role web-scale
    image-text pretraining plays for CLIP before LLaVA ever sees it."""
    kind = _balanced(key, "kind", i, _VISION_KINDS)
    if kind == "text":
        word = rng.choice(WORDS)
        img, _, color = _text_image(rng, S, word)
        return img, {"word": word, "color": color}
    if kind == "cover":
        title, author, genre = rng.choice(TITLES), rng.choice(AUTHORS), rng.choice(tuple(GENRES))
        return _cover(rng, S, title, author, genre), {"title": title, "author": author, "color": GENRES[genre][0]}
    if kind == "object":
        name = rng.choice(OBJECTS)
        img, color = _object_image(rng, S, name)
        return img, ({"object": name, "color": color} if color else {"object": name})
    objs = _random_scene(rng, S, 1, True)
    return _render_scene(objs, S), {"shape": objs[0].shape, "color": objs[0].color}


def vision_items(seed: int, n: int, image_size: int = 64) -> list[tuple[Image.Image, dict[str, str]]]:
    """``n`` labelled images for the vision-encoder stage, generated in memory from the seed."""
    key = f"{seed}:vision:train"
    return [_gen_vision(random.Random(f"{key}:{i}"), i, key, image_size) for i in range(n)]


# ---------------------------------------------------------------------------------------
# writing the dataset


def task_dir(root: Path, task: str, instruction_set: str = "Original") -> Path:
    if instruction_set not in INSTRUCTION_SETS:
        raise ValueError(f"unknown instruction set {instruction_set!r}; expected one of {INSTRUCTION_SETS}")
    return Path(root) / instruction_set / task


def image_root(root: Path) -> Path:
    return Path(root) / "images"


def load(root: Path, task: str, split: str, instruction_set: str = "Original") -> list[Sample]:
    """Read one task split of a generated coin-mini dataset."""
    return read_task(task_dir(root, task, instruction_set), task, split, image_root(root))


def load_pretrain(root: Path) -> list[Sample]:
    return read_train_json(Path(root) / "pretrain.json", "pretrain", image_root(root))


def _instruction_for(instruction_set: str, task: str, seed: int, split: str, i: int) -> str:
    templates = TEMPLATES[instruction_set][task]
    if instruction_set == "10Type":
        return random.Random(f"{seed}:{task}:{split}:{i}:10type").choice(templates)
    return templates[0]


def _text_for(task: str, question: str, instruction: str | None = None) -> str:
    instruction = INSTRUCTIONS[task] if instruction is None else instruction
    if task == "Grounding":
        return f"{instruction}: {question}"
    return f"{question}\n{instruction}"


def _make_item(task: str, seed: int, split: str, i: int, S: int) -> _Item:
    key = f"{seed}:{task}:{split}"
    gen = _gen_pretrain if task == "pretrain" else _GENERATORS[task]
    return gen(random.Random(f"{key}:{i}"), i, key, S)


def _params(seed, train_per_task, test_per_task, pretrain_size, image_size) -> dict[str, Any]:
    for name, value in (("seed", seed), ("train_per_task", train_per_task), ("test_per_task", test_per_task),
                        ("pretrain_size", pretrain_size), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if name != "seed" and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 so that objects stay visible, got {image_size}")
    return {"name": NAME, "version": VERSION, "seed": seed, "train_per_task": train_per_task,
            "test_per_task": test_per_task, "pretrain_size": pretrain_size, "image_size": image_size}


def _read_meta(root: Path) -> dict | None:
    try:
        return json.loads((root / "meta.json").read_text("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return {}


def _matches(meta: dict | None, params: dict) -> bool:
    return bool(meta) and all(meta.get(k) == v for k, v in params.items())


def _complete(root: Path, params: dict) -> bool:
    """True when ``root`` holds a finished dataset with ``params`` and every instruction set
    (datasets written before Diverse/10Type existed lack those folders)."""
    return _matches(_read_meta(root), params) and all((root / s).is_dir() for s in INSTRUCTION_SETS)


def _build(out: Path, params: dict, progress: bool) -> None:
    from ..progress import Progress  # a bar on a terminal, lines in a log

    seed, S = params["seed"], params["image_size"]
    images = image_root(out)
    jobs = [(t, s, params[f"{s}_per_task"]) for t in TASKS for s in ("train", "test")]
    jobs.append(("pretrain", "train", params["pretrain_size"]))
    # one unit per task split: a line in a log every log.every_seconds, not one per hundred records
    with Progress(f"generating {NAME} (cached afterwards)", len(jobs), unit="split", enabled=progress) as bar:
        for task, split, n in jobs:
            (images / task).mkdir(parents=True, exist_ok=True)
            samples = []
            by_set: dict[str, list[Sample]] = {s: [] for s in INSTRUCTION_SETS}
            for i in range(n):
                item = _make_item(task, seed, split, i, S)
                rel = f"{task}/{split}_{i}.png"
                item.image.save(images / rel, format="PNG")
                if task == "pretrain":
                    text, sid = item.question, f"pretrain_{i}"
                else:
                    text, sid = _text_for(task, item.question), f"{task}_{split}_{i}"
                answers = tuple(item.answer) if isinstance(item.answer, list) else (item.answer,)
                extra = {k: item.extra[k] for k in ("bbox", "size") if k in item.extra}
                samples.append(Sample(id=sid, task=task, image=rel, text=text, answers=answers, extra=extra))
                if task != "pretrain":
                    for iset in INSTRUCTION_SETS:
                        # Original keeps the exact text it always had (INSTRUCTIONS)
                        t = text if iset == "Original" else _text_for(
                            task, item.question, _instruction_for(iset, task, seed, split, i))
                        by_set[iset].append(Sample(id=sid, task=task, image=rel, text=t, answers=answers,
                                                   extra=extra))
            bar.update(1)
            if task == "pretrain":
                write_train_json(out / "pretrain.json", samples)
                continue
            for iset, set_samples in by_set.items():
                if split == "train":
                    write_train_json(task_dir(out, task, iset) / "train.json", set_samples)
                else:
                    write_test_json(task_dir(out, task, iset) / "test.json", set_samples)
    meta = dict(params, tasks=list(TASKS), instructions=dict(INSTRUCTIONS),
                instruction_sets=list(INSTRUCTION_SETS))
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1) + "\n")  # last: marks completion


def generate(
    root: Path,
    seed: int = 0,
    train_per_task: int = 400,
    test_per_task: int = 60,
    pretrain_size: int = 4000,
    image_size: int = 64,
    progress: bool = True,
) -> Path:
    """Generate coin-mini into ``root`` and return ``root``.

    Nothing is done when ``root/meta.json`` already records the same parameters and every
    instruction set folder exists (a dataset written before the Diverse/10Type sets existed is
    refused below rather than reused). The data is
    written into a temporary sibling folder and renamed into place at the end, so an
    interrupted run leaves no partial dataset at ``root``. A ``root`` that exists and is not
    an empty folder nor a coin-mini dataset with these parameters is refused (FileExistsError);
    nothing of the user's is ever deleted.
    """
    root = Path(root)
    params = _params(seed, train_per_task, test_per_task, pretrain_size, image_size)
    meta = _read_meta(root)
    if _complete(root, params):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if _matches(meta, params):
            what = "an older coin-mini dataset without all instruction sets " + str(INSTRUCTION_SETS)
        else:
            what = "a coin-mini dataset with other parameters" if meta else "other content"
        raise FileExistsError(f"{root} already holds {what}; choose another folder or remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)
        _build(tmp, params, progress)
        try:
            os.replace(tmp, root)  # an empty folder at root is replaced (POSIX rename)
        except OSError:
            if _complete(root, params):  # a concurrent run finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
