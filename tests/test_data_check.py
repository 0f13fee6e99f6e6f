"""Whole-release validation (mcit.data.check): every problem of every file, reported at once."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from mcit.config import ConfigError, DataConfig
from mcit.data import check as check_mod
from mcit.data import coin_mini
from mcit.data.check import Problem, check_data, check_release, check_stream_config
from mcit.data.coin_format import format_bbox, write_test_json, write_train_json
from mcit.data.schema import Sample

TASKS = ["ScienceQA", "TextVQA", "Grounding"]
N = 3  # records per split and task in the clean fixture


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """check_stream_config remembers the images that decoded fine in mcit's cache: a fresh one per test."""
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))


def _png(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), color).save(path, format="PNG")


def _make_release(root: Path) -> tuple[Path, Path]:
    """A clean CoIN-format release: <root>/Original/<Task>/{train,test}.json + <root>/images."""
    images = root / "images"
    release = root / "Original"
    for t, task in enumerate(TASKS):
        prefix = task[:3].lower()
        for i in range(N):
            _png(images / task / f"{i}.png", (40 * t, 60 * i, 100))
        # answers of the kind each task's scorer expects: a letter, a box, a phrase
        answer = {"ScienceQA": "B", "Grounding": format_bbox([0.1, 0.2, 0.5, 0.6])}.get(task)
        train = [
            Sample(f"{prefix}-t{i}", task, f"{task}/{i}.png", f"Question {i}?\nAnswer briefly.",
                   (answer or f"answer {i}",))
            for i in range(N)
        ]
        if task == "Grounding":
            test = [
                Sample(f"{prefix}-q{i}", task, f"{task}/{i}.png",
                       "Please provide the bounding box coordinate of the region this sentence "
                       f"describes: object {i}", (format_bbox([0.1, 0.2, 0.5, 0.6]),),
                       extra={"bbox": [0.1, 0.2, 0.5, 0.6], "size": [16, 12]})
                for i in range(N)
            ]
        else:
            test = [
                Sample(f"{prefix}-q{i}", task, f"{task}/{i}.png", f"Question {i}?\nAnswer briefly.",
                       (answer or f"answer {i}",))
                for i in range(N)
            ]
        (release / task).mkdir(parents=True)
        write_train_json(release / task / "train.json", train)
        write_test_json(release / task / "test.json", test)
    return release, images


def _load(path: Path) -> list:
    return json.loads(path.read_text("utf-8"))


def _dump(path: Path, records) -> None:
    path.write_text(json.dumps(records, indent=1), "utf-8")


def _snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                     hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*")) if p.is_file()
    } | {str(p.relative_to(folder)) + "/": (0, 0, "") for p in folder.rglob("*") if p.is_dir()}


def _plant_defects(release: Path, images: Path) -> None:
    # ScienceQA/train.json: a missing image, an escaping path, a duplicate id
    path = release / "ScienceQA" / "train.json"
    recs = _load(path)
    recs[1]["image"] = "ScienceQA/missing.png"
    recs[2]["image"] = "../../etc/passwd"
    recs.append(dict(recs[0]))  # same id "sci-t0" again
    _dump(path, recs)
    # ScienceQA/test.json: a record missing its answer, an absolute image path
    path = release / "ScienceQA" / "test.json"
    recs = _load(path)
    del recs[1]["answer"]
    recs[2]["image"] = "/etc/passwd"
    _dump(path, recs)
    # TextVQA: a broken train.json (truncated) and no test.json
    path = release / "TextVQA" / "train.json"
    path.write_text(path.read_text("utf-8")[:-40], "utf-8")
    (release / "TextVQA" / "test.json").unlink()
    # Grounding/train.json: two records share a corrupt (non-image) PNG
    (images / "Grounding" / "corrupt.png").write_bytes(b"this is not a PNG file\n" * 4)
    path = release / "Grounding" / "train.json"
    recs = _load(path)
    recs[0]["image"] = recs[2]["image"] = "Grounding/corrupt.png"
    _dump(path, recs)
    # Grounding/test.json: a malformed answer_bbox
    path = release / "Grounding" / "test.json"
    recs = _load(path)
    recs[1]["answer_bbox"] = "[0.1, 0.2, oops]"
    _dump(path, recs)


def _find(problems: list[Problem], file: str, record: str | None, field: str | None) -> Problem:
    hits = [p for p in problems if (p.file, p.record, p.field) == (file, record, field)]
    assert len(hits) == 1, f"expected one problem at {(file, record, field)}, got {hits}\n" + \
        "\n".join(map(str, problems))
    return hits[0]


# ---------------------------------------------------------------------------------------------


def test_clean_release_is_ok(tmp_path):
    release, images = _make_release(tmp_path)
    report = check_release(release, images, TASKS)
    assert report.ok, report.format()
    assert report.problems == []
    assert list(report.counts) == TASKS
    for task in TASKS:
        for split in ("train", "test"):
            assert (report.counts[task][split].records, report.counts[task][split].bad) == (N, 0)
    text = report.format()
    assert "no problems found" in text
    assert "ScienceQA" in text and "Grounding" in text


def test_every_planted_defect_is_reported(tmp_path):
    release, images = _make_release(tmp_path)
    _plant_defects(release, images)
    before = _snapshot(tmp_path)

    report = check_release(release, images, TASKS)

    assert _snapshot(tmp_path) == before  # checking wrote nothing into the data folder
    assert not report.ok
    ps = report.problems

    missing = _find(ps, "ScienceQA/train.json", "sci-t1", "image")
    assert "not found" in missing.message and "ScienceQA/missing.png" in missing.message
    assert str(missing).startswith("ScienceQA/train.json, record 'sci-t1', field 'image': image file not found")
    assert "escapes the image root" in _find(ps, "ScienceQA/train.json", "sci-t2", "image").message
    dup = _find(ps, "ScienceQA/train.json", "sci-t0", "id")
    assert "duplicate" in dup.message and dup.index == 3

    assert "missing" in _find(ps, "ScienceQA/test.json", "sci-q1", "answer").message
    assert "absolute" in _find(ps, "ScienceQA/test.json", "sci-q2", "image").message

    broken = _find(ps, "TextVQA/train.json", None, None)
    assert "malformed JSON" in broken.message
    assert "line" in broken.message and "column" in broken.message
    assert "not found" in _find(ps, "TextVQA/test.json", None, None).message

    for rid in ("gro-t0", "gro-t2"):
        assert "not a readable image" in _find(ps, "Grounding/train.json", rid, "image").message
    assert "box" in _find(ps, "Grounding/test.json", "gro-q1", "answer_bbox").message

    assert len(ps) == 10, "\n".join(map(str, ps))

    c = report.counts
    assert (c["ScienceQA"]["train"].records, c["ScienceQA"]["train"].bad) == (4, 3)
    assert (c["ScienceQA"]["test"].records, c["ScienceQA"]["test"].bad) == (3, 2)
    assert c["TextVQA"]["train"].records is None and c["TextVQA"]["test"].records is None
    assert (c["Grounding"]["train"].records, c["Grounding"]["train"].bad) == (3, 2)
    assert (c["Grounding"]["test"].records, c["Grounding"]["test"].bad) == (3, 1)

    text = report.format()
    assert "10 problems" in text
    for p in ps:
        assert str(p) in text


def test_shared_image_is_verified_once(tmp_path, monkeypatch):
    release, images = _make_release(tmp_path)
    for split in ("train", "test"):  # every record of ScienceQA points at one image
        path = release / "ScienceQA" / f"{split}.json"
        recs = _load(path)
        for r in recs:
            r["image"] = "ScienceQA/0.png"
        _dump(path, recs)
    opened: list[str] = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(check_mod.Image, "open", counting_open)
    report = check_release(release, images, ["ScienceQA"])
    assert report.ok, report.format()
    assert len(opened) == 1


def test_problems_the_readers_let_through_and_several_per_record(tmp_path):
    release, images = _make_release(tmp_path)
    path = release / "TextVQA" / "train.json"
    recs = _load(path)
    recs[0]["conversations"][1]["value"] = "   "  # empty answer
    del recs[1]["id"]  # no id: named by its position
    recs[2]["image"] = "../outside.png"  # an image problem ...
    recs[2]["conversations"] = [{"from": "human", "value": "<image>\nQ?"}]  # ... and no gpt turn
    recs.append(["not", "an", "object"])
    _dump(path, recs)
    path = release / "TextVQA" / "test.json"
    recs = _load(path)
    recs[0]["text"] = ""
    _dump(path, recs)

    report = check_release(release, images, ["TextVQA"])
    ps = report.problems
    assert "empty" in _find(ps, "TextVQA/train.json", "tex-t0", "conversations").message
    no_id = _find(ps, "TextVQA/train.json", None, "id")
    assert no_id.index == 1 and str(no_id).startswith("TextVQA/train.json, record #1, field 'id'")
    assert "escapes" in _find(ps, "TextVQA/train.json", "tex-t2", "image").message
    assert "gpt" in _find(ps, "TextVQA/train.json", "tex-t2", "conversations").message
    whole_file = [p for p in ps if (p.file, p.record, p.field) == ("TextVQA/train.json", None, None)]
    assert [p.index for p in whole_file] == [3, None]  # the list item, then the file: all 4 records are bad
    assert "object" in whole_file[0].message and "no usable record" in whole_file[1].message
    assert "empty" in _find(ps, "TextVQA/test.json", "tex-q0", "text").message
    assert (report.counts["TextVQA"]["train"].records, report.counts["TextVQA"]["train"].bad) == (4, 4)
    assert report.counts["TextVQA"]["test"].bad == 1


def test_missing_task_folder_release_and_image_root(tmp_path):
    release, images = _make_release(tmp_path)
    report = check_release(release, images, ["ScienceQA", "VizWiz"])
    assert not report.ok
    folder = _find(report.problems, "VizWiz/", None, None)
    assert "task folder not found" in folder.message
    assert report.counts["VizWiz"]["train"].records is None
    assert report.counts["ScienceQA"]["test"].records == N and len(report.problems) == 1

    gone = check_release(tmp_path / "Diverse", images, TASKS)
    assert [p.message for p in gone.problems] == ["release folder not found"]

    no_images = check_release(release, tmp_path / "no-images", ["ScienceQA"])
    assert len(no_images.problems) == 1 and "image root" in no_images.problems[0].message


def test_format_caps_the_listing_but_keeps_every_problem(tmp_path):
    release, images = _make_release(tmp_path)
    path = release / "GQA"
    path.mkdir()
    recs = [{"question_id": f"g{i}", "image": f"GQA/{i}.png", "text": "Q?", "answer": "a"}
            for i in range(30)]
    _dump(path / "test.json", recs)
    _dump(path / "train.json", [])
    report = check_release(release, images, ["GQA"])
    # 30 missing images, then the empty train file and the test file without a usable record
    assert len(report.problems) == 32
    assert "holds no records" in report.problems[0].message and report.problems[0].file == "GQA/train.json"
    assert "no usable record (all 30" in report.problems[-1].message
    text = report.format(max_problems=5)
    assert "... and 27 more" in text
    assert sum(line.startswith("  GQA/test.json") for line in text.splitlines()) == 4
    assert report.counts["GQA"]["train"].records == 0


def test_check_stream_config(tmp_path):
    release, images = _make_release(tmp_path)
    # this layout has TextVQA/test.json with single answers (test_release_layout.py checks the
    # published one: val.json and the ten official answers)
    coin_mini_like = dict(eval_files={"TextVQA": "test.json"}, textvqa_answers="record")
    dc = DataConfig(benchmark="coin", root=str(tmp_path), image_root=str(images), tasks=TASKS, **coin_mini_like)
    report = check_stream_config(dc)
    assert report.ok and list(report.counts) == TASKS

    default = check_stream_config(DataConfig(benchmark="coin", root=str(tmp_path),
                                             image_root=str(images), **coin_mini_like))
    assert len(default.counts) == 8  # CoIN's default order
    assert {p.file for p in default.problems} == {
        f"{t}/" for t in default.counts if t not in TASKS}

    with pytest.raises(ConfigError):
        check_stream_config(DataConfig(benchmark="coin", root=str(tmp_path)))
    with pytest.raises(ConfigError):
        check_stream_config(DataConfig(benchmark="coin-mini"))


def test_a_later_check_decodes_only_the_images_that_changed(tmp_path, monkeypatch):
    release, images = _make_release(tmp_path)
    dc = DataConfig(benchmark="coin", root=str(tmp_path), image_root=str(images), tasks=TASKS,
                    eval_files={"TextVQA": "test.json"}, textvqa_answers="record")
    first = check_stream_config(dc)
    assert first.ok and (first.images, first.images_unchanged) == (3 * N, 0)
    assert "decoded 9 distinct images in" in first.format()

    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(check_mod.Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    second = check_stream_config(dc)
    assert second.ok and (second.images, second.images_unchanged) == (0, 3 * N) and opened == []
    assert "decoded 0 distinct images (9 more unchanged since an earlier check)" in second.format()

    cut = images / "TextVQA" / "1.png"  # a different size: decoded again, and refused
    cut.write_bytes(cut.read_bytes()[:-30])
    third = check_stream_config(dc)
    assert (third.images, third.images_unchanged) == (1, 3 * N - 1) and opened == [str(cut)]
    assert [(p.record, p.field) for p in third.problems] == [("tex-t1", "image"), ("tex-q1", "image")]

    same_size = images / "Grounding" / "2.png"  # same size, new time: decoded again
    data = bytearray(same_size.read_bytes())
    data[40:60] = bytes(20)
    same_size.write_bytes(bytes(data))
    os.utime(same_size, ns=(same_size.stat().st_atime_ns, same_size.stat().st_mtime_ns + 10**9))
    fourth = check_stream_config(dc)
    assert fourth.images == 2 and {p.record for p in fourth.problems} == {"tex-t1", "tex-q1", "gro-t2", "gro-q2"}

    # a lower limit than the one the remembered images passed: every image is looked at again
    lower = check_stream_config(dataclasses.replace(dc, max_image_pixels=16 * 12 - 1))
    assert lower.images == 3 * N and sum(p.field == "image" for p in lower.problems) == 2 * 3 * N
    assert "16 x 12 = 192 pixels, above data.max_image_pixels=191" in lower.problems[0].message


def test_check_data_checks_a_generated_benchmark_like_one_on_disk(tmp_path):
    root = tmp_path / "mini"
    coin_mini.generate(root, seed=0, train_per_task=2, test_per_task=2, pretrain_size=0, image_size=32,
                       progress=False)
    dc = DataConfig(benchmark="coin-mini", root=str(root), tasks=["Grounding", "ScienceQA"], train_per_task=2,
                    test_per_task=2, pretrain_size=0, image_size=32)
    assert check_data(dc, seed=0).ok
    path = root / "Original" / "Grounding" / "train.json"
    recs = _load(path)
    recs[1]["conversations"][1]["value"] = "[0.50, 0.20, 0.40, 0.60]"
    _dump(path, recs)
    report = check_data(dc, seed=0)
    assert [str(p) for p in report.problems] == [
        "Grounding/train.json, record 'Grounding_train_1', field 'conversations': the gpt turn must be a box: "
        "box '[0.50, 0.20, 0.40, 0.60]' has x1 > x2 (the corners are [x1, y1, x2, y2])"]

    foreign = tmp_path / "photos"
    (foreign / "album").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"data.root=.*photos holds other content, not a coin-mini generation"):
        check_data(dataclasses.replace(dc, root=str(foreign)), seed=0)
    with pytest.raises(ConfigError, match="has not been generated yet"):
        check_data(dataclasses.replace(dc, root=str(tmp_path / "empty")), seed=0)
    assert not (tmp_path / "empty").exists()
