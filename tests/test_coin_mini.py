"""The built-in coin-mini benchmark: layout, determinism, formats and answer correctness."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcit.data import coin_mini as cm
from mcit.data.coin_format import parse_bbox, read_task, read_train_json

SMALL = dict(train_per_task=8, test_per_task=4, pretrain_size=16, progress=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return cm.generate(tmp_path_factory.mktemp("cm") / "coin-mini", seed=0, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _items(task: str, n: int, split: str = "train", seed: int = 0):
    return [cm._make_item(task, seed, split, i, 64) for i in range(n)]


# --- layout and reading back ----------------------------------------------------------------


def test_layout_and_read_back(root: Path):
    assert (root / "meta.json").is_file() and (root / "pretrain.json").is_file()
    meta = json.loads((root / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["image_size"] == 64 and meta["tasks"] == cm.TASKS
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    images = root / "images"
    for task in cm.TASKS:
        for split, n in (("train", 8), ("test", 4)):
            samples = read_task(root / "Original" / task, task, split, images)
            assert len(samples) == n and all(s.task == task for s in samples)
            assert len({s.id for s in samples}) == n
            for s in samples:
                img = Image.open(images / s.image)
                assert img.mode == "RGB" and img.size == (64, 64)
                assert s.image.startswith(f"{task}/{split}_")
    pre = read_train_json(root / "pretrain.json", "pretrain", images)
    assert len(pre) == 16 and all((images / s.image).is_file() for s in pre)
    assert all(s.image.startswith("pretrain/") for s in pre)


def test_instruction_is_last_line(root: Path):
    for task in cm.TASKS:
        for split in ("train", "test"):
            for s in cm.load(root, task, split):
                if task == "Grounding":
                    assert "\n" not in s.text
                    assert s.instruction == cm.INSTRUCTIONS["Grounding"]
                    assert s.question and s.question.startswith("the ")
                else:
                    assert s.text.endswith("\n" + cm.INSTRUCTIONS[task])
                    assert s.instruction == cm.INSTRUCTIONS[task].split("\n")[-1]
                    assert s.question and "Answer" not in s.question.split("\n")[0]


def test_pretrain_has_no_task_formats(root: Path):
    instruction_lines = {line for text in cm.INSTRUCTIONS.values() for line in text.split("\n")}
    pairs = [(s.text, s.answer) for s in cm.load_pretrain(root)]
    pairs += [(it.question, it.answer) for it in _items("pretrain", 60)]
    assert all(isinstance(a, str) for _, a in pairs)
    sqa_questions = {q for it in _items("ScienceQA", 40) for q in it.question.split("\n")[:1]}
    kinds = {"letter": 0, "box": 0}
    for text, answer in pairs:
        assert not any(line in text for line in instruction_lines)
        assert "unanswerable" not in answer.lower()
        if re.fullmatch(r"[A-E]", answer):  # generic multiple choice, like LLaVA-1.5's A-OKVQA
            kinds["letter"] += 1
            options = re.findall(r"^([A-E])\. ", text, re.M)
            assert answer in options and text.split("\n")[0] not in sqa_questions
        elif answer.startswith("["):  # where an object is, like LLaVA-1.5's RefCOCO boxes
            kinds["box"] += 1
            assert text.startswith("Where is the ") and len(parse_bbox(answer)) == 4
        else:
            assert not re.search(r"^[A-E]\. ", text, re.M)
    assert kinds["letter"] > 0 and kinds["box"] > 0


def test_answer_formats(root: Path):
    for split in ("train", "test"):
        for s in cm.load(root, "ScienceQA", split):
            options = re.findall(r"^([A-E])\. ", s.text, re.M)
            assert len(options) in (3, 4) and options == list("ABCD"[: len(options)])
            assert s.answers == (s.answer,) and s.answer in options
        for s in cm.load(root, "Grounding", split):
            box = parse_bbox(s.answer)
            assert re.fullmatch(r"\[\d\.\d\d, \d\.\d\d, \d\.\d\d, \d\.\d\d\]", s.answer)
            assert all(0.0 <= v <= 1.0 for v in box) and box[0] < box[2] and box[1] < box[3]
            if split == "test":
                assert s.extra["bbox"] == box and s.extra["size"] == [64, 64]
    for s in cm.load(root, "TextVQA", "test"):
        assert len(s.answers) == 10
        assert sum(a.lower() == s.answer for a in s.answers) >= 3 and s.answer in cm.WORDS
    assert all(len(s.answers) == 1 for s in cm.load(root, "TextVQA", "train"))
    for s in cm.load(root, "OCRVQA", "test") + cm.load(root, "VQAv2", "test"):
        assert len(s.answers) == 1 and re.fullmatch(r"[a-z0-9]+", s.answer)
    assert {s.answer for s in cm.load(root, "ImageNet", "train")} <= set(cm.OBJECTS)


def test_letters_and_yes_no_are_balanced():
    letters = Counter()
    for it in _items("ScienceQA", 96):
        n = len(re.findall(r"^[A-E]\. ", it.question, re.M))
        letters[(n, it.answer)] += 1
    assert {k: v for k, v in letters.items() if k[0] == 4} == {(4, c): 18 for c in "ABCD"}
    assert {k: v for k, v in letters.items() if k[0] == 3} == {(3, c): 8 for c in "ABC"}
    for task, n in (("GQA", 60), ("VQAv2", 60), ("OCRVQA", 64)):
        answers = Counter(it.answer for it in _items(task, n))
        assert answers["yes"] == answers["no"] > 0
    assert Counter(it.answer for it in _items("ImageNet", 16)) == Counter({o: 2 for o in cm.OBJECTS})


def test_vizwiz_has_some_unanswerable():
    items = _items("VizWiz", 50, "test")
    un = [it for it in items if it.answer == "unanswerable"]
    assert len(un) == 14  # 28% per block of 25
    assert {it.extra["mode"] for it in un} == {"blank", "blur", "absent"}
    for it in un:
        arr = np.asarray(it.image, dtype=np.float64)
        if it.extra["mode"] in ("blank", "blur"):
            assert arr.std(axis=(0, 1)).max() < 25  # nothing sharp to see
    clear = [it for it in items if it.answer != "unanswerable"]
    assert all(np.asarray(it.image, dtype=np.float64).std(axis=(0, 1)).max() > 15 for it in clear)


# --- correctness of questions and boxes ----------------------------------------------------


def _solve_gqa(q: str, objs) -> set[str]:
    """Every answer consistent with the scene (a set of size 1 means unambiguous)."""
    def named(shape):
        hits = [o for o in objs if o.shape == shape]
        assert len(hits) == 1, f"'the {shape}' is ambiguous or absent in {q!r}"
        return hits[0]

    if m := re.fullmatch(r"What (color is the shape|shape is) to the (left|right) of the (\w+)\?", q):
        x = named(m[3])
        hits = [o for o in objs if (o.col < x.col if m[2] == "left" else o.col > x.col)]
        return {o.color if m[1].startswith("color") else o.shape for o in hits}
    if m := re.fullmatch(r"What shape is the same color as the (\w+)\?", q):
        x = named(m[1])
        return {o.shape for o in objs if o is not x and o.color == x.color}
    if m := re.fullmatch(r"What color is the (\w+)\?", q):
        return {named(m[1]).color}
    if m := re.fullmatch(r"Is the (\w+) (\w+)\?", q):
        return {"yes" if named(m[1]).color == m[2] else "no"}
    if m := re.fullmatch(r"Is the (\w+) (above|below|to the left of|to the right of) the (\w+)\?", q):
        a, b = named(m[1]), named(m[3])
        key = {"above": ("row", -1), "below": ("row", 1), "to the left of": ("col", -1), "to the right of": ("col", 1)}
        attr, sign = key[m[2]]
        d = getattr(a, attr) - getattr(b, attr)
        assert d != 0, f"{q!r} is ambiguous"
        return {"yes" if d * sign > 0 else "no"}
    if m := re.fullmatch(r"Is the (\w+) to the left or to the right of the (\w+)\?", q):
        a, b = named(m[1]), named(m[2])
        assert a.col != b.col
        return {"left" if a.col < b.col else "right"}
    raise AssertionError(f"unknown GQA question {q!r}")


def test_gqa_questions_are_answerable_and_unambiguous():
    names = "|".join(cm.SHAPES + tuple(cm.COLORS))
    templates = Counter()
    for split in ("train", "test"):
        for it in _items("GQA", 120, split):
            assert _solve_gqa(it.question, it.objects) == {it.answer}, it.question
            templates[re.sub(rf"\b({names})\b", "X", it.question)] += 1
    assert len(templates) >= 8


def _resolve_phrase(phrase: str, objs) -> list[int]:
    m = re.fullmatch(r"the (\w+) (\w+)", phrase)
    if m and m[1] in cm.COLORS and m[2] == "shape":
        return [j for j, o in enumerate(objs) if o.color == m[1]]
    if m and m[1] in cm.COLORS:
        return [j for j, o in enumerate(objs) if o.color == m[1] and o.shape == m[2]]
    if m := re.fullmatch(r"the (\w+)", phrase):
        return [j for j, o in enumerate(objs) if o.shape == m[1]]
    m = re.fullmatch(r"the (\w+) (on the left|on the right|at the top|at the bottom)", phrase)
    assert m, phrase
    group = [j for j, o in enumerate(objs) if o.shape == m[1]]
    attr, pick = {"on the left": ("col", min), "on the right": ("col", max),
                  "at the top": ("row", min), "at the bottom": ("row", max)}[m[2]]
    best = pick(getattr(objs[j], attr) for j in group)
    return [j for j in group if getattr(objs[j], attr) == best]


def test_grounding_phrases_are_unique_and_boxes_cover_the_object():
    items = _items("Grounding", 80, "test")
    assert {it.question.split()[-1] for it in items if it.question.split()[-1] in ("left", "right", "top", "bottom")}
    for it in items:
        assert _resolve_phrase(it.question, it.objects) == [it.target], it.question
        x1, y1, x2, y2 = parse_bbox(it.answer)
        target = it.objects[it.target]
        assert x1 * 64 - 1 <= target.cx <= x2 * 64 + 1 and y1 * 64 - 1 <= target.cy <= y2 * 64 + 1
        for j, o in enumerate(it.objects):  # no other object's centre lies in the box
            if j != it.target:
                assert not (x1 * 64 < o.cx < x2 * 64 and y1 * 64 < o.cy < y2 * 64)


def test_grounding_box_pixels_show_the_object(root: Path):
    for s in cm.load(root, "Grounding", "train") + cm.load(root, "Grounding", "test"):
        arr = np.asarray(Image.open(root / "images" / s.image)).astype(int)
        x1, y1, x2, y2 = (round(v * 64) for v in parse_bbox(s.answer))
        inside = arr[y1:y2, x1:x2]
        differs = np.abs(inside - np.array(cm.BACKGROUND)).sum(axis=2) > 30
        assert differs.mean() > 0.3, s.id
        # the box is tight: each border row/column of the box touches the object
        assert differs[0].any() and differs[-1].any() and differs[:, 0].any() and differs[:, -1].any()
        # and nothing of the object pokes out just outside it on the left/top
        if x1 > 0:
            col = arr[y1:y2, x1 - 1]
            assert (np.abs(col - np.array(cm.BACKGROUND)).sum(axis=1) <= 30).all()


def test_vqav2_answers_match_the_scene():
    for it in _items("VQAv2", 90):
        q, objs, shapes = it.question, it.objects, [o.shape for o in it.objects]
        if m := re.fullmatch(r"How many (\w+) are there\?", q):
            if m[1] == "shapes":
                assert it.answer == str(len(objs))
            else:
                shape = next(s for s in cm.SHAPES if cm.PLURALS[s] == m[1])
                assert it.answer == str(shapes.count(shape))
        elif q.startswith("How many shapes"):
            assert it.answer == str(len(objs))
        elif m := re.fullmatch(r"What color is the (\w+)\?", q):
            assert shapes.count(m[1]) == 1
            assert it.answer == next(o.color for o in objs if o.shape == m[1])
        elif m := re.fullmatch(r"Is there an? (\w+)\?", q):
            assert it.answer == ("yes" if m[1] in shapes else "no")
        elif m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", q):
            assert it.answer == ("yes" if (m[1], m[2]) in {(o.color, o.shape) for o in objs} else "no")
        elif m := re.fullmatch(r"Are there any (\w+) shapes\?", q):
            assert it.answer == ("yes" if m[1] in {o.color for o in objs} else "no")
        else:
            raise AssertionError(q)


# --- determinism and the generate() contract -------------------------------------------------


def test_generation_is_deterministic(tmp_path: Path, root: Path):
    again = cm.generate(tmp_path / "again", seed=0, **SMALL)
    a, b = _files(root), _files(again)
    assert a.keys() == b.keys() and a == b
    other = _files(cm.generate(tmp_path / "other", seed=1, **SMALL))
    assert other.keys() == a.keys()
    assert other["Original/GQA/test.json"] != a["Original/GQA/test.json"]
    assert other["images/ScienceQA/test_0.png"] != a["images/ScienceQA/test_0.png"]


def test_test_set_does_not_depend_on_train_size(tmp_path: Path, root: Path):
    bigger = cm.generate(tmp_path / "bigger", seed=0, train_per_task=12, test_per_task=4,
                         pretrain_size=4, progress=False)
    for task in cm.TASKS:
        rel = f"Original/{task}/test.json"
        assert (bigger / rel).read_bytes() == (root / rel).read_bytes()


def test_train_and_test_are_different_draws(root: Path):
    for task in cm.TASKS:
        tr = {p.read_bytes() for p in (root / "images" / task).glob("train_*.png")}
        te = {p.read_bytes() for p in (root / "images" / task).glob("test_*.png")}
        assert not tr & te, task


def test_generate_is_idempotent_and_refuses_conflicts(tmp_path: Path):
    out = cm.generate(tmp_path / "d", seed=3, **SMALL)
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert cm.generate(tmp_path / "d", seed=3, **SMALL) == out
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError):
        cm.generate(tmp_path / "d", seed=4, **SMALL)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        cm.generate(tmp_path / "busy", **SMALL)
    assert (tmp_path / "busy" / "file.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert (cm.generate(tmp_path / "empty", **SMALL) / "meta.json").is_file()


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch):
    calls = {"n": 0}
    real = cm._make_item

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(cm, "_make_item", flaky)
    with pytest.raises(KeyboardInterrupt):
        cm.generate(tmp_path / "x", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bitmap_font_fallback(monkeypatch):
    monkeypatch.setattr(cm, "_FREETYPE", False)
    cm._text_mask.cache_clear()
    try:
        mask = cm._fit_text("moon", 58, 32, 26)
        assert mask.width > 20 and mask.height > 10 and mask.getbbox() is not None
    finally:
        cm._text_mask.cache_clear()


def test_bad_parameters():
    with pytest.raises(ValueError):
        cm.generate(Path("/nonexistent/never"), image_size=16, progress=False)
    with pytest.raises(TypeError):
        cm.generate(Path("/nonexistent/never"), seed="0", progress=False)
