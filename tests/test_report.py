"""Tests for mcit.report.matrix and mcit.io."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mcit.io import atomic_write_bytes, atomic_write_text
from mcit.metrics import compute_metrics
from mcit.report.matrix import format_table, load_matrix, save_matrix

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS2 = ["vqa", "gqa"]
M2 = [[80.0, None], [70.5, 90.0]]
Z2 = [10.0, 20.0]


def test_save_writes_four_files_and_nothing_else(tmp_path):
    paths = save_matrix(tmp_path, "result", TASKS2, M2, Z2, compute_metrics(M2, Z2))
    assert set(paths) == {"json", "csv", "md", "png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "result.csv", "result.json", "result.md", "result.png"
    ]


def test_json_round_trip(tmp_path):
    a = np.array([[80.0, 35.0, np.nan], [70.0, 90.0, 40.0], [60.0, 85.0, 95.0]])
    z = [5.0, 25.0, 30.0]
    metrics = compute_metrics(a, z)
    save_matrix(tmp_path, "r", ["a", "b", "c"], a, zero_shot=z, metrics=metrics)
    tasks, matrix, zero_shot, loaded = load_matrix(tmp_path / "r.json")
    assert tasks == ["a", "b", "c"]
    assert matrix == [[80.0, 35.0, None], [70.0, 90.0, 40.0], [60.0, 85.0, 95.0]]
    assert zero_shot == z
    assert loaded == metrics
    # the loaded matrix feeds straight back into the metrics
    assert compute_metrics(matrix, zero_shot) == loaded
    raw = json.loads((tmp_path / "r.json").read_text())
    assert raw["matrix"][0][2] is None


def test_json_round_trip_without_zero_shot_and_default_metrics(tmp_path):
    save_matrix(tmp_path, "r", TASKS2, M2)
    tasks, matrix, zero_shot, metrics = load_matrix(tmp_path / "r.json")
    assert (tasks, matrix, zero_shot) == (TASKS2, M2, None)
    assert metrics == compute_metrics(M2)
    assert metrics["FWT"] is None


def test_csv_exact_2x2(tmp_path):
    save_matrix(tmp_path, "r", TASKS2, M2, Z2, compute_metrics(M2, Z2))
    assert (tmp_path / "r.csv").read_text() == (
        "stage,vqa,gqa\n"
        "base,10.0,20.0\n"
        "vqa,80.0,\n"
        "gqa,70.5,90.0\n"
    )
    save_matrix(tmp_path, "n", TASKS2, M2, metrics=compute_metrics(M2))
    assert (tmp_path / "n.csv").read_text() == "stage,vqa,gqa\nvqa,80.0,\ngqa,70.5,90.0\n"


def test_markdown_contains_matrix_and_metrics(tmp_path):
    metrics = compute_metrics(M2, Z2)  # MFT 85, MFN 80.25, BWT -9.5, Forgetting 9.5
    save_matrix(tmp_path, "r", TASKS2, M2, Z2, metrics)
    md = (tmp_path / "r.md").read_text()
    for text in ("| vqa |", "| gqa |", "80.00", "70.50", "90.00", "10.00", "20.00"):
        assert text in md
    assert "| MFT | 85.00 |" in md
    assert "| MFN | 80.25 |" in md
    assert "| BWT | -9.50 |" in md
    assert "| FWT | - |" in md  # a[0][1] missing, so FWT is None
    assert md.index("| after stage |") < md.index("| metric | value |")


def test_png_magic(tmp_path):
    save_matrix(tmp_path, "r", TASKS2, M2, Z2, compute_metrics(M2, Z2))
    data = (tmp_path / "r.png").read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000


def test_save_rejects_mismatched_tasks_and_bad_matrix(tmp_path):
    with pytest.raises(ValueError, match="task names"):
        save_matrix(tmp_path, "r", ["only"], M2, metrics={})
    with pytest.raises(ValueError, match=r"a\[1\]\[0\]"):
        save_matrix(tmp_path, "r", TASKS2, [[1.0, None], [None, 2.0]], metrics={})
    assert list(tmp_path.iterdir()) == []


def test_format_table():
    metrics = compute_metrics(M2, Z2)
    text = format_table(TASKS2, M2, metrics, zero_shot=Z2, title="demo")
    lines = text.splitlines()
    assert lines[0] == "demo"
    table = lines[1:6]  # header, rule, base, vqa, gqa
    assert table[0].split() == ["stage", "vqa", "gqa"]
    assert table[2].split() == ["base", "10.0", "20.0"]
    assert table[3].split() == ["vqa", "80.0", "-"]
    assert table[4].split() == ["gqa", "70.5", "90.0"]
    assert len({len(line) for line in table}) == 1  # fixed width
    assert "MFT 85.00" in text and "BWT -9.50" in text and "FWT -" in text


def test_format_table_without_zero_shot_or_title():
    text = format_table(["a"], [[42.0]], compute_metrics([[42.0]]), title=None)
    assert text.splitlines()[0].split() == ["stage", "a"]
    assert "base" not in text
    assert "42.0" in text


# ------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    atomic_write_bytes(tmp_path / "g.bin", b"\x00\x01")
    assert target.read_text() == "two"
    assert (tmp_path / "g.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "g.bin"]


def test_atomic_write_failure_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def boom(*args, **kwargs):
        raise OSError("simulated failure")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_failure_during_write_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_save_matrix_failure_keeps_previous_result(tmp_path, monkeypatch):
    save_matrix(tmp_path, "r", TASKS2, M2, Z2, compute_metrics(M2, Z2))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("simulated failure")

    monkeypatch.setattr(os, "replace", boom)
    other = [[10.0, None], [20.0, 30.0]]
    with pytest.raises(OSError):
        save_matrix(tmp_path, "r", ["x", "y"], other, metrics=compute_metrics(other))
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before
