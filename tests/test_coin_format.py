"""Readers and writers of the CoIN release formats."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mcit.data.coin_format import (
    DataError,
    format_bbox,
    parse_bbox,
    read_task,
    read_test_json,
    read_train_json,
    resolve_image,
    write_test_json,
    write_train_json,
)
from mcit.data.schema import Sample


@pytest.fixture()
def layout(tmp_path: Path):
    images = tmp_path / "images"
    (images / "Task").mkdir(parents=True)
    task_dir = tmp_path / "Original" / "Task"
    task_dir.mkdir(parents=True)
    return task_dir, images


def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data), "utf-8")
    return path


# --- round trips ---------------------------------------------------------------------------


def test_train_round_trip(layout):
    task_dir, images = layout
    samples = [
        Sample("a1", "Task", "Task/a.png", "What is this?\nAnswer briefly.", ("circle",)),
        Sample("a2", "Task", None, "Text only question\nAnswer briefly.", ("yes",)),
        Sample("a3", "Task", "Task/sub/b.png", "Q\nA. x\nB. y\nAnswer with the letter.", ("B",)),
    ]
    path = write_train_json(task_dir / "train.json", samples)
    back = read_task(task_dir, "Task", "train", images)
    assert back == samples
    assert all(s.extra == {} for s in back)
    raw = json.loads(path.read_text())
    assert raw[0]["conversations"][0] == {"from": "human", "value": "<image>\nWhat is this?\nAnswer briefly."}
    assert raw[0]["conversations"][1] == {"from": "gpt", "value": "circle"}
    assert "image" not in raw[1]
    assert not raw[1]["conversations"][0]["value"].startswith("<image>")
    # the written file reads back identically a second time (a fixed point)
    write_train_json(task_dir / "train2.json", back)
    assert (task_dir / "train2.json").read_bytes() == path.read_bytes()


def test_test_round_trip_with_lists_boxes_and_sizes(layout):
    task_dir, images = layout
    samples = [
        Sample("q1", "Task", "Task/a.png", "What word?\nAnswer briefly.", ("moon",)),
        Sample("q2", "Task", "Task/b.png", "What word?\nAnswer briefly.",
               ("moon", "MOON", "moon", "mon", "moon", "moon", "Moon", "moon", "moon", "moon")),
        Sample("q3", "Task", "Task/c.png", "Please give the box: the red circle",
               ("[0.10, 0.20, 0.55, 0.70]",), extra={"bbox": [0.1, 0.2, 0.55, 0.7], "size": [64, 48]}),
    ]
    path = write_test_json(task_dir / "test.json", samples)
    back = read_test_json(path, "Task", images)
    assert back == samples
    assert [s.extra for s in back] == [{}, {}, {"bbox": [0.1, 0.2, 0.55, 0.7], "size": [64, 48]}]
    raw = json.loads(path.read_text())
    assert raw[0]["answer"] == "moon"
    assert isinstance(raw[1]["answer"], list) and len(raw[1]["answer"]) == 10
    assert raw[2]["answer_bbox"] == "[0.10, 0.20, 0.55, 0.70]" and raw[2]["size"] == [64, 48]
    assert "answer_bbox" not in raw[0] and "size" not in raw[0]


def test_writers_leave_no_temp_files(layout):
    task_dir, _ = layout
    write_test_json(task_dir / "test.json", [Sample("q", "Task", "Task/a.png", "Q\nI", ("x",))])
    write_train_json(task_dir / "train.json", [Sample("q", "Task", "Task/a.png", "Q\nI", ("x",))])
    assert sorted(p.name for p in task_dir.iterdir()) == ["test.json", "train.json"]


def test_test_reader_answer_variants(layout):
    task_dir, images = layout
    _write(task_dir / "test.json", [
        {"question_id": 7, "image": "Task/a.png", "text": "Q\nI", "answer": "x", "answers": ["y", "z"]},
        {"question_id": "g", "image": "Task/b.png", "text": "Box: the cat",
         "answer_bbox": "[0.1, 0.2, 0.3, 0.4]", "size": [640, 480]},
    ])
    a, b = read_task(task_dir, "Task", "test", images)
    assert a.id == "7" and a.answers == ("y", "z")  # "answers" takes precedence, ids become str
    assert b.answers == ("[0.1, 0.2, 0.3, 0.4]",)
    assert b.extra == {"bbox": [0.1, 0.2, 0.3, 0.4], "size": [640, 480]}
    assert b.instruction == "Box" and b.question == "the cat"


def test_train_reader_takes_first_human_then_gpt_and_strips_image_token(layout):
    task_dir, images = layout
    _write(task_dir / "train.json", [
        {"id": 1, "image": "Task/a.png", "conversations": [
            {"from": "gpt", "value": "ignored"},  # LLaVA skips one leading gpt turn
            {"from": "human", "value": "<image>\nQuestion\nInstruction"},
            {"from": "gpt", "value": "answer"},
            {"from": "human", "value": "second human"},
            {"from": "gpt", "value": "later"},
        ]},
        {"id": "m", "image": "Task/b.png", "conversations": [
            {"from": "human", "value": "Question\n<image>\nInstruction"},
            {"from": "gpt", "value": "x"},
        ]},
    ])
    a, b = read_task(task_dir, "Task", "train", images)
    assert (a.id, a.text, a.answers, a.image) == ("1", "Question\nInstruction", ("answer",), "Task/a.png")
    assert a.extra == {"turns": [["second human", "later"]]}  # later turns: tests/test_turns_and_text_only.py
    assert a.instruction == "Instruction" and a.question == "Question"
    assert "<image>" not in b.text and b.text.split("\n")[-1] == "Instruction"


def test_bbox_helpers():
    assert parse_bbox("[0.1, 0.2, 0.3, 0.4]") == [0.1, 0.2, 0.3, 0.4]
    assert format_bbox([0.1, 0.2, 0.333, 1]) == "[0.10, 0.20, 0.33, 1.00]"
    for bad in ("0.1, 0.2, 0.3, 0.4", "[0.1, 0.2, 0.3]", "[a, b, c, d]", "[nan, 0, 1, 1]"):
        with pytest.raises(ValueError):
            parse_bbox(bad)


# --- image paths ------------------------------------------------------------------------


def test_resolve_image_accepts_paths_inside_root(tmp_path: Path):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    assert resolve_image(root, "a/x.png") == (root / "a" / "x.png").resolve()
    assert resolve_image(root, "a/../b.png") == (root / "b.png").resolve()
    os.symlink(root / "a", root / "link")  # a symlink that stays inside is fine
    assert resolve_image(root, "link/x.png") == (root / "a" / "x.png").resolve()


@pytest.mark.parametrize("rel", ["../x.png", "a/../../x.png", "/etc/passwd", "C:\\x.png", ""])
def test_resolve_image_refuses_escapes(tmp_path: Path, rel: str):
    root = tmp_path / "images"
    root.mkdir()
    with pytest.raises(DataError) as info:
        resolve_image(root, rel)
    assert info.value.field == "image"


def test_resolve_image_refuses_symlink_escape(tmp_path: Path):
    root = tmp_path / "images"
    root.mkdir()
    outside = tmp_path / "secret"
    outside.mkdir()
    os.symlink(outside, root / "evil")
    with pytest.raises(DataError, match="escapes the image root"):
        resolve_image(root, "evil/x.png")


# --- errors name file, record and field ----------------------------------------------------


def _test_records(image: str) -> list[dict]:
    return [
        {"question_id": "ok", "image": "Task/a.png", "text": "Q\nI", "answer": "x"},
        {"question_id": "abc", "image": image, "text": "Q\nI", "answer": "x"},
    ]


@pytest.mark.parametrize("image", ["../x.png", "/tmp/x.png", "Task/../../x.png"])
def test_reader_rejects_escaping_image_paths(layout, image):
    task_dir, images = layout
    _write(task_dir / "test.json", _test_records(image))
    with pytest.raises(DataError) as info:
        read_task(task_dir, "Task", "test", images)
    err = info.value
    assert (err.file, err.index, err.record, err.field) == ("Task/test.json", 1, "abc", "image")
    assert str(err).startswith("Task/test.json, record 1 (id 'abc'), field 'image': ")


def test_reader_rejects_symlink_escape(layout, tmp_path):
    task_dir, images = layout
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", images / "Task" / "out")
    _write(task_dir / "train.json", [{"id": "s1", "image": "Task/out/x.png", "conversations": [
        {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "a"}]}])
    with pytest.raises(DataError, match=r"Task/train.json, record 0 \(id 's1'\), field 'image': .*escapes"):
        read_task(task_dir, "Task", "train", images)


def test_malformed_json_and_wrong_top_level(layout):
    task_dir, images = layout
    _write(task_dir / "test.json", '[{"question_id": 1,')
    with pytest.raises(DataError, match=r"^Task/test.json: malformed JSON") as info:
        read_task(task_dir, "Task", "test", images)
    assert info.value.file == "Task/test.json" and info.value.record is None
    _write(task_dir / "test.json", {"question_id": 1})
    with pytest.raises(DataError, match="top level must be a JSON list"):
        read_task(task_dir, "Task", "test", images)
    with pytest.raises(DataError, match="Task/train.json: file not found"):
        read_task(task_dir, "Task", "train", images)


@pytest.mark.parametrize(
    "record, field",
    [
        ({"image": "Task/a.png", "text": "Q", "answer": "x"}, "question_id"),
        ({"question_id": "q", "image": "Task/a.png", "answer": "x"}, "text"),
        ({"question_id": "q", "image": "Task/a.png", "text": "Q"}, "answer"),
        ({"question_id": "q", "image": "Task/a.png", "text": "Q", "answer": 3}, "answer"),
        ({"question_id": "q", "image": "Task/a.png", "text": "Q", "answer": ["a", 2]}, "answer[1]"),
        ({"question_id": "q", "image": 5, "text": "Q", "answer": "x"}, "image"),
        ({"question_id": "q", "image": "Task/a.png", "text": "Q", "answer_bbox": "[1, 2]"}, "answer_bbox"),
        ({"question_id": "q", "image": "Task/a.png", "text": "Q", "answer": "x", "size": [3]}, "size"),
        ({"question_id": ["q"], "image": "Task/a.png", "text": "Q", "answer": "x"}, "question_id"),
    ],
)
def test_test_record_field_errors(layout, record, field):
    task_dir, images = layout
    _write(task_dir / "test.json", [{"question_id": 0, "image": "Task/z.png", "text": "Q", "answer": "x"}, record])
    with pytest.raises(DataError) as info:
        read_task(task_dir, "Task", "test", images)
    err = info.value
    assert err.file == "Task/test.json" and err.index == 1 and err.field == field
    assert f"record 1" in str(err) and f"field '{field}'" in str(err)


@pytest.mark.parametrize(
    "record, field",
    [
        ({"id": "t", "image": "Task/a.png"}, "conversations"),
        ({"id": "t", "image": "Task/a.png", "conversations": "hi"}, "conversations"),
        ({"id": "t", "image": "Task/a.png", "conversations": [{"from": "human", "value": "Q"}]}, "conversations"),
        ({"id": "t", "image": "Task/a.png", "conversations": [{"from": "human"}]}, "conversations[0].value"),
        ({"id": "t", "image": "Task/a.png", "conversations": [{"from": "human", "value": 1}]},
         "conversations[0].value"),
        ({"image": "Task/a.png", "conversations": []}, "id"),
    ],
)
def test_train_record_field_errors(layout, record, field):
    task_dir, images = layout
    _write(task_dir / "train.json", [record])
    with pytest.raises(DataError) as info:
        read_task(task_dir, "Task", "train", images)
    err = info.value
    assert (err.file, err.index, err.field) == ("Task/train.json", 0, field)
    assert str(err).startswith("Task/train.json, record 0") and f"field '{field}'" in str(err)
    if "id" in record:
        assert err.record == "t" and "(id 't')" in str(err)


def test_non_object_record_and_bad_split(layout):
    task_dir, images = layout
    _write(task_dir / "test.json", [["not", "a", "record"]])
    with pytest.raises(DataError, match=r"Task/test.json, record 0: record must be a JSON object"):
        read_task(task_dir, "Task", "test", images)
    with pytest.raises(ValueError):
        read_task(task_dir, "Task", "val", images)
    assert issubclass(DataError, ValueError)
