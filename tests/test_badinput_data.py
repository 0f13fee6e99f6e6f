"""Bad-input catalogue, data area: every malformed release, image and EMT set is refused through the
CLI (`mcit data check`, `mcit run`, `mcit emt`) with a non-zero exit, a message naming the file,
record and field, no traceback, and no file that existed before changed (tests/badinput.py).

The release is a tiny coin-mini generation in CoIN's layout (records ``<Task>_<split>_<i>``, images
``images/<Task>/<split>_<i>.png``), copied for every case and damaged in one place."""
from __future__ import annotations

import functools
import io
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from badinput import assert_rejected, invoke, snapshot
from PIL import Image

from mcit.data import coin_mini

EVAL_ON_TEST = ("TextVQA", "VizWiz", "VQAv2")  # coin-mini writes test.json where CoIN has val.json


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Runs, and the data check's list of images known to be fine, use a fresh cache per case."""
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coin") / "CoIN"
    return coin_mini.generate(root, seed=0, train_per_task=3, test_per_task=2, pretrain_size=0, image_size=32,
                              progress=False)


@pytest.fixture()
def release(pristine, tmp_path) -> Path:
    root = tmp_path / "CoIN"
    shutil.copytree(pristine, root)
    return root


def _data_args(root: Path, task: str) -> list[str]:
    args = ["data.benchmark=coin", f"data.root={root}", f"data.image_root={root / 'images'}",
            f"data.tasks=[{task}]", "data.textvqa_answers=record"]
    if task in EVAL_ON_TEST:
        args.append(f"data.eval_files={{{task}: test.json}}")
    return args


# --------------------------------------------------------------------------------------------
# ways to damage a release


def _file(root: Path, task: str, split: str) -> Path:
    return root / "Original" / task / f"{split}.json"


def _edit(task: str, split: str, change: Callable[[list], object], replace: bool = False) -> Callable[[Path], None]:
    """A damage: load <task>/<split>.json, let ``change`` alter its list in place (or, with
    ``replace``, return the new list), write it back."""
    def damage(root: Path) -> None:
        path = _file(root, task, split)
        records = json.loads(path.read_text("utf-8"))
        result = change(records)
        path.write_text(json.dumps(result if replace else records), "utf-8")
    return damage


def _write(task: str, split: str, text: bytes) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        _file(root, task, split).write_bytes(text)
    return damage


def _set(index: int, key: str, value) -> Callable[[list], None]:
    return lambda recs: recs[index].__setitem__(key, value)


def _drop(index: int, key: str) -> Callable[[list], None]:
    return lambda recs: recs[index].pop(key)


def _gpt(index: int, value: str) -> Callable[[list], None]:
    return lambda recs: recs[index]["conversations"][1].__setitem__("value", value)


def _noise_image(size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    _noise_image().save(buf, format=fmt)
    return buf.getvalue()


def _image_file(rel: str, data: bytes | Callable[[Path], None]) -> Callable[[Path], None]:
    """Put ``data`` at images/<rel> (or let ``data`` write it there)."""
    def damage(root: Path) -> None:
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data(path) if callable(data) else path.write_bytes(data)
    return damage


@functools.lru_cache(maxsize=1)
def _huge_png_bytes() -> bytes:
    # 108 M pixels at 1 bit each: 13.5 MB in memory once, a few KB on disk; the check reads its header only
    buf = io.BytesIO()
    Image.new("1", (12000, 9000), 1).save(buf, format="PNG")
    return buf.getvalue()


def _huge_png(path: Path) -> None:
    path.write_bytes(_huge_png_bytes())


def _both(*damages: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        for d in damages:
            d(root)
    return damage


def _point_at(task: str, split: str, index: int, rel: str, data) -> Callable[[Path], None]:
    """images/<rel> holds ``data`` and record ``index`` of <task>/<split>.json uses it."""
    return _both(_image_file(rel, data), _edit(task, split, _set(index, "image", rel)))


JPEG, PNG = _encoded("JPEG"), _encoded("PNG")
BOX = "[0.10, 0.20, 0.50, 0.60]"

# (task, damage, words the message must hold)
CHECK_CASES = [
    # data holes of the issue
    pytest.param("Grounding", _write("Grounding", "train", b"[]"), ["Grounding/train.json", "no records"],
                 id="empty-train-file"),
    pytest.param("Grounding", _write("Grounding", "test", b"[]\n"), ["Grounding/test.json", "no records"],
                 id="empty-test-file"),
    pytest.param("GQA", _edit("GQA", "test", lambda recs: [{"question_id": r["question_id"]} for r in recs],
                                  replace=True),
                 ["GQA/test.json", "no usable record", "GQA_test_1", "'text'"], id="no-usable-test-record"),
    pytest.param("Grounding", _edit("Grounding", "test", _set(1, "answer_bbox", "[0.10, 0.20, 1.50, 0.60]")),
                 ["Grounding/test.json", "Grounding_test_1", "answer_bbox", "outside [0, 1]"], id="box-above-1"),
    pytest.param("Grounding", _edit("Grounding", "test", _set(0, "answer_bbox", "[-0.10, 0.20, 0.50, 0.60]")),
                 ["Grounding_test_0", "answer_bbox", "outside [0, 1]"], id="box-negative"),
    pytest.param("Grounding", _edit("Grounding", "test", _set(0, "answer_bbox", "[0.70, 0.20, 0.50, 0.60]")),
                 ["Grounding_test_0", "answer_bbox", "x1 > x2"], id="box-x1-after-x2"),
    pytest.param("Grounding", _edit("Grounding", "test", _set(1, "answer_bbox", "[0.10, 0.90, 0.50, 0.60]")),
                 ["Grounding_test_1", "answer_bbox", "y1 > y2"], id="box-y1-after-y2"),
    pytest.param("Grounding", _edit("Grounding", "test", lambda recs: (recs[0].pop("answer_bbox"),
                                                                        recs[0].__setitem__("answer", "the cat"))),
                 ["Grounding_test_0", "'answer'", "not of the form"], id="grounding-test-answer-not-a-box"),
    pytest.param("Grounding", _edit("Grounding", "train", _gpt(2, "the orange square")),
                 ["Grounding/train.json", "Grounding_train_2", "conversations", "must be a box"],
                 id="grounding-train-answer-not-a-box"),
    pytest.param("Grounding", _edit("Grounding", "train", _gpt(0, "[0.1, 0.2, 0.5]")),
                 ["Grounding_train_0", "conversations", "4 numbers"], id="grounding-train-box-three-numbers"),
    pytest.param("Grounding", _edit("Grounding", "train", _gpt(1, "[0.10, 0.20, 0.50, 1.60]")),
                 ["Grounding_train_1", "conversations", "outside [0, 1]"], id="grounding-train-box-out-of-range"),
    pytest.param("ScienceQA", _edit("ScienceQA", "test", _set(0, "answer", "the second one")),
                 ["ScienceQA/test.json", "ScienceQA_test_0", "'answer'", "option letter"],
                 id="multiple-choice-answer-not-a-letter"),
    pytest.param("ScienceQA", _edit("ScienceQA", "test", _set(1, "answer", "F")),
                 ["ScienceQA_test_1", "'F'", "option letter"], id="multiple-choice-letter-beyond-E"),
    pytest.param("ImageNet", _point_at("ImageNet", "train", 0, "ImageNet/cut.jpg", JPEG[: len(JPEG) // 2]),
                 ["ImageNet/train.json", "ImageNet_train_0", "'image'", "truncated", "ImageNet/cut.jpg"],
                 id="truncated-jpeg"),
    pytest.param("ImageNet", _point_at("ImageNet", "test", 1, "ImageNet/cut.png", PNG[: len(PNG) // 2]),
                 ["ImageNet/test.json", "ImageNet_test_1", "'image'", "truncated"], id="truncated-png"),
    pytest.param("GQA", _point_at("GQA", "test", 0, "GQA/huge.png", _huge_png),
                 ["GQA/test.json", "GQA_test_0", "'image'", "12000 x 9000", "data.max_image_pixels"],
                 id="huge-image-108-megapixels"),
    # images
    pytest.param("GQA", _image_file("GQA/train_1.png", b"this is not a PNG\n" * 8),
                 ["GQA/train.json", "GQA_train_1", "'image'", "not a readable image"], id="image-not-an-image"),
    pytest.param("GQA", _image_file("GQA/train_2.png", b""),
                 ["GQA_train_2", "'image'", "not a readable image"], id="image-empty-file"),
    pytest.param("GQA", lambda root: (root / "images" / "GQA" / "test_1.png").unlink(),
                 ["GQA/test.json", "GQA_test_1", "'image'", "not found"], id="image-missing"),
    pytest.param("GQA", _edit("GQA", "train", _set(0, "image", "../../../etc/passwd")),
                 ["GQA_train_0", "'image'", "escapes the image root"], id="image-path-escapes-root"),
    pytest.param("GQA", _edit("GQA", "train", _set(0, "image", "/etc/passwd")),
                 ["GQA_train_0", "'image'", "absolute"], id="image-path-absolute"),
    pytest.param("GQA", _both(lambda root: os.symlink("/etc/hostname", root / "images" / "GQA" / "link.png"),
                              _edit("GQA", "train", _set(1, "image", "GQA/link.png"))),
                 ["GQA_train_1", "'image'", "escapes the image root"], id="image-symlink-out-of-root"),
    pytest.param("GQA", _edit("GQA", "test", _set(0, "image", "GQA")),
                 ["GQA_test_0", "'image'", "not a file"], id="image-path-is-a-folder"),
    pytest.param("GQA", _edit("GQA", "test", _set(1, "image", 42)),
                 ["GQA_test_1", "'image'", "string"], id="image-field-a-number"),
    # json shapes
    pytest.param("VQAv2", _write("VQAv2", "test", b'{"data": []}'), ["VQAv2/test.json", "must be a JSON list"],
                 id="top-level-object"),
    pytest.param("VQAv2", _write("VQAv2", "train", b'[{"id": "x", "conversations": '),
                 ["VQAv2/train.json", "malformed JSON", "line 1"], id="truncated-json"),
    pytest.param("VQAv2", _write("VQAv2", "train", b'[{"id": "caf\xe9"}]'), ["VQAv2/train.json", "not UTF-8"],
                 id="not-utf8"),
    pytest.param("VQAv2", _edit("VQAv2", "train", lambda recs: recs.append(["not", "a", "record"])),
                 ["VQAv2/train.json", "record #3", "JSON object"], id="record-not-an-object"),
    # missing and extra fields
    pytest.param("OCRVQA", _edit("OCRVQA", "train", _drop(1, "id")),
                 ["OCRVQA/train.json", "record #1", "'id'", "missing"], id="missing-id"),
    pytest.param("OCRVQA", _edit("OCRVQA", "train", _set(2, "id", "OCRVQA_train_0")),
                 ["OCRVQA_train_0", "'id'", "duplicate"], id="duplicate-id"),
    pytest.param("OCRVQA", _edit("OCRVQA", "train", _drop(0, "conversations")),
                 ["OCRVQA_train_0", "'conversations'", "missing"], id="missing-conversations"),
    pytest.param("OCRVQA", _edit("OCRVQA", "train", _set(0, "conversations", "hello")),
                 ["OCRVQA_train_0", "'conversations'", "must be a list"], id="conversations-not-a-list"),
    pytest.param("OCRVQA", _edit("OCRVQA", "train", lambda recs: recs[1]["conversations"][0].__setitem__(
        "from", "system")), ["OCRVQA_train_1", "conversations[0].from", "'human' or 'gpt'"], id="turn-from-system"),
    pytest.param("OCRVQA", _edit("OCRVQA", "train", _gpt(0, "   ")),
                 ["OCRVQA_train_0", "'conversations'", "empty"], id="empty-gpt-answer"),
    pytest.param("VizWiz", _edit("VizWiz", "test", _drop(0, "text")),
                 ["VizWiz/test.json", "VizWiz_test_0", "'text'", "missing"], id="missing-question-text"),
    pytest.param("VizWiz", _edit("VizWiz", "test", _drop(1, "answer")),
                 ["VizWiz_test_1", "'answer'", "missing"], id="missing-answer"),
    pytest.param("VizWiz", _edit("VizWiz", "test", _set(0, "answer", [])),
                 ["VizWiz_test_0", "'answer'", "empty list"], id="answer-empty-list"),
    pytest.param("VizWiz", _edit("VizWiz", "test", _set(1, "answer", {"text": "yes"})),
                 ["VizWiz_test_1", "'answer'", "string"], id="answer-an-object"),
    pytest.param("Grounding", _edit("Grounding", "test", _set(0, "size", [0, 32])),
                 ["Grounding_test_0", "'size'", "positive"], id="size-not-positive"),
    pytest.param("Grounding", _edit("Grounding", "test", _set(1, "answer_bbox", "[0.1, 0.2, oops, 0.6]")),
                 ["Grounding_test_1", "answer_bbox", "non-number"], id="box-non-number"),
    # files and folders
    pytest.param("TextVQA", lambda root: _file(root, "TextVQA", "test").unlink(),
                 ["TextVQA/test.json", "file not found"], id="missing-test-file"),
    pytest.param("ImageNet", lambda root: shutil.rmtree(root / "Original" / "ImageNet"),
                 ["ImageNet/", "task folder not found"], id="missing-task-folder"),
]


def assert_check_fails(argv: list[str], mentions: list[str], watch: list[Path]) -> str:
    """`mcit data check` prints its report (every problem) on stdout and exits 1: the harness's
    rules (exit, no traceback, nothing changed) with the mentions looked for in the report."""
    before = snapshot(*watch)
    status, out, err = invoke(argv)
    assert "Traceback" not in out + err, err
    assert status == 1, f"exit {status}\n{out}\n{err}"
    for text in mentions:
        assert text.lower() in out.lower(), f"report does not mention {text!r}:\n{out}"
    assert snapshot(*watch) == before, "the check changed a file"
    return out


@pytest.mark.parametrize("task, damage, mentions", CHECK_CASES)
def test_data_check_refuses(release, task, damage, mentions):
    damage(release)
    report = assert_check_fails(["data", "check", *_data_args(release, task)], mentions, [release])
    assert "decoded" in report and " s\n" in report  # the check says how long it took


def test_a_lower_pixel_limit_is_named(release):
    assert_check_fails(["data", "check", *_data_args(release, "GQA"), "data.max_image_pixels=1000"],
                       ["GQA/train.json", "GQA_train_0", "32 x 32 = 1,024 pixels", "data.max_image_pixels=1,000"],
                       [release])


@pytest.mark.parametrize("value, words", [
    pytest.param("0", ["must be >= 1"], id="pixel-limit-zero"),
    pytest.param("-5", ["must be >= 1"], id="pixel-limit-negative"),
    pytest.param("lots", ["lots"], id="pixel-limit-not-a-number"),
])
def test_a_bad_pixel_limit_is_a_config_error(release, value, words):
    assert_rejected(["data", "check", *_data_args(release, "GQA"), f"data.max_image_pixels={value}"],
                    mentions=["data.max_image_pixels", *words], watch=[release], code=2)


# --------------------------------------------------------------------------------------------
# `mcit run` refuses the same data before anything is trained or written


RUN_CASES = [
    pytest.param("Grounding", _write("Grounding", "train", b"[]"), ["Grounding/train.json", "no records"],
                 id="run-empty-train-file"),
    pytest.param("ImageNet", _point_at("ImageNet", "train", 0, "ImageNet/cut.jpg", JPEG[: len(JPEG) // 2]),
                 ["ImageNet_train_0", "'image'", "truncated"], id="run-truncated-jpeg"),
    pytest.param("Grounding", _edit("Grounding", "train", _gpt(2, "the orange square")),
                 ["Grounding_train_2", "must be a box"], id="run-grounding-answer-not-a-box"),
    pytest.param("GQA", _point_at("GQA", "test", 0, "GQA/huge.png", _huge_png),
                 ["GQA_test_0", "12000 x 9000", "data.max_image_pixels"], id="run-huge-image"),
]


@pytest.mark.parametrize("task, damage, mentions", RUN_CASES)
def test_run_refuses_before_writing(release, tmp_path, task, damage, mentions):
    runs = tmp_path / "runs"
    (runs / "earlier").mkdir(parents=True)
    (runs / "earlier" / "metrics.json").write_text('{"kept": true}\n')
    damage(release)
    assert_rejected(["run", *_data_args(release, task), f"output_dir={runs}", "name=r", "judge.backend=none"],
                    mentions=["data check", *mentions], watch=[release, runs])
    assert sorted(p.name for p in runs.iterdir()) == ["earlier"]  # no run folder was made


def _foreign(tmp_path: Path) -> Path:
    root = tmp_path / "my-photos"
    root.mkdir()
    (root / "holiday.txt").write_text("not a coin-mini generation\n")
    (root / "album").mkdir()
    (root / "album" / "a.png").write_bytes(PNG)
    return root


def test_run_refuses_a_foreign_coin_mini_root(tmp_path):
    root = _foreign(tmp_path)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert_rejected(["run", "data.benchmark=coin-mini", f"data.root={root}", "data.tasks=[GQA]",
                     f"output_dir={tmp_path / 'runs'}", "judge.backend=none"],
                    mentions=["data.root", str(root), "already holds"], watch=[root], code=2)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing added either
    assert not (tmp_path / "runs").exists()


def test_data_check_refuses_a_foreign_coin_mini_root(tmp_path):
    root = _foreign(tmp_path)
    assert_rejected(["data", "check", "data.benchmark=coin-mini", f"data.root={root}"], mentions=[str(root)],
                    watch=[root], code=2)


# --------------------------------------------------------------------------------------------
# EMT sets: a damaged image is refused, never scored as a wrong answer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("emt-ckpt") / "tiny")


def _image_folder(root: Path, per_class: int = 3) -> Path:
    for c, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), colour).save(root / c / f"{i}.png")
    return root


def _every_cat(data) -> Callable[[Path], None]:
    """Every image of class "cat" replaced, so that any --limit selects one of them."""
    def damage(root: Path) -> None:
        for path in sorted((root / "cat").iterdir()):
            data(path) if callable(data) else path.write_bytes(data)
    return damage


def _idx(path: Path, dims: tuple[int, ...], cut: int = 0) -> None:
    body = np.zeros(int(np.prod(dims)), dtype=np.uint8).tobytes()
    header = bytes([0, 0, 8, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    path.write_bytes((header + body)[: len(header + body) - cut])


def _mnist(root: Path, cut_train_images: int = 0) -> Path:
    root.mkdir(parents=True)
    _idx(root / "train-images-idx3-ubyte", (4, 28, 28), cut_train_images)
    _idx(root / "train-labels-idx1-ubyte", (4,))
    _idx(root / "t10k-images-idx3-ubyte", (2, 28, 28))
    _idx(root / "t10k-labels-idx1-ubyte", (2,))
    return root


EMT_CASES = [
    pytest.param("imagefolder", _every_cat(lambda p: p.write_bytes(PNG[: len(PNG) // 2])), ["cat/", "truncated"],
                 "2", id="emt-truncated-png-with-limit"),
    pytest.param("imagefolder", _every_cat(lambda p: p.write_bytes(JPEG[: len(JPEG) // 2])), ["cat/", "truncated"],
                 None, id="emt-truncated-jpeg-data-in-png-files"),
    pytest.param("imagefolder", _every_cat(b""), ["cat/", "not a readable image"], "1", id="emt-empty-image-file"),
    pytest.param("imagefolder", _every_cat(_huge_png), ["cat/", "12000 x 9000", "max_image_pixels"], "1",
                 id="emt-huge-image"),
    pytest.param("mnist", None, ["train-images-idx3-ubyte", "idx body"], "2", id="emt-mnist-truncated-images"),
]


@pytest.mark.parametrize("kind, damage, mentions, limit", EMT_CASES)
def test_emt_refuses_a_damaged_set(checkpoint, tmp_path, kind, damage, mentions, limit):
    if kind == "mnist":
        root = _mnist(tmp_path / "mnist", cut_train_images=100)
    else:
        root = _image_folder(tmp_path / "pets")
        damage(root)
    out = tmp_path / "out"
    argv = ["emt", str(checkpoint), "--datasets", f"{kind}:{root}", "--out", str(out), "--probe-train", "4",
            "--batch-size", "2", "--max-new-tokens", "2"] + (["--limit", limit] if limit else [])
    assert_rejected(argv, mentions=mentions, watch=[root], code=2)
    assert not (out / "answers").exists()  # nothing was scored
