"""Readers and writers for the file formats of the CoIN release.

Train files are JSON lists of LLaVA conversation records::

    {"id": ..., "image": "ScienceQA/x.png",
     "conversations": [{"from": "human", "value": "<image>\\n<question>\\n<instruction>"},
                       {"from": "gpt", "value": "<answer>"}]}

Test files are JSON lists of question records::

    {"question_id": ..., "image": ..., "text": "<question>\\n<instruction>", "answer": ...,
     "answer_bbox": "[x1, y1, x2, y2]", "size": [w, h]}      # the last two: grounding only

Every reader returns :class:`mcit.data.schema.Sample` objects and checks each image path
with :func:`resolve_image`, so no record can point outside the image root. Every problem
with the content of a file is reported as a :class:`DataError` that names the file, the
record and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterable, Sequence

from mcit.data.schema import Sample
from mcit.errors import DataError  # noqa: F401 - raised here, imported from here by others
from mcit.io import atomic_write_text

__all__ = [
    "DataError",
    "IMAGE_TOKEN",
    "SPLITS",
    "format_bbox",
    "parse_bbox",
    "read_task",
    "read_test_json",
    "read_train_json",
    "resolve_image",
    "write_test_json",
    "write_train_json",
]

IMAGE_TOKEN = "<image>"
SPLITS = ("train", "test")


# ---------------------------------------------------------------------------------------
# image paths


def resolve_image(image_root: Path, rel: str) -> Path:
    """Resolve ``rel`` against ``image_root``; refuse anything that lands outside the root.

    Absolute paths (POSIX or Windows style), ``..`` escapes and symlinks that point outside
    the root raise :class:`DataError` (field ``image``). The file does not have to exist.
    """
    if not isinstance(rel, str):
        raise DataError(f"image path must be a string, got {type(rel).__name__}", field="image")
    if not rel.strip():
        raise DataError("image path is empty", field="image")
    if "\x00" in rel:
        raise DataError("image path contains a NUL character", field="image")
    if (
        PurePosixPath(rel).is_absolute()
        or PureWindowsPath(rel).is_absolute()
        or PureWindowsPath(rel).drive
        or rel.startswith(("\\", "~"))
    ):
        raise DataError(f"absolute image path {rel!r} is not allowed", field="image")
    root = Path(image_root).resolve()
    target = (root / rel).resolve()
    if target != root and not target.is_relative_to(root):
        raise DataError(f"path {rel!r} escapes the image root", field="image")
    if target == root:
        raise DataError(f"path {rel!r} is the image root itself, not a file", field="image")
    return target


# ---------------------------------------------------------------------------------------
# boxes


def parse_bbox(text: str) -> list[float]:
    """Parse "[x1, y1, x2, y2]" into four finite floats; raise ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"box must be a string, got {type(text).__name__}")
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError(f"box {text!r} is not of the form '[x1, y1, x2, y2]'")
    items = [t.strip() for t in body[1:-1].split(",")]
    if len(items) != 4:
        raise ValueError(f"box {text!r} does not have 4 numbers")
    try:
        values = [float(t) for t in items]
    except ValueError:
        raise ValueError(f"box {text!r} holds a non-number") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"box {text!r} holds a non-finite number")
    return values


def format_bbox(box: Sequence[float], digits: int = 2) -> str:
    """Format four numbers as the CoIN box string, e.g. "[0.10, 0.20, 0.55, 0.70]"."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 numbers, got {len(box)}")
    return "[" + ", ".join(f"{float(v):.{digits}f}" for v in box) + "]"


# ---------------------------------------------------------------------------------------
# reading


def _label(path: Path) -> str:
    """How a file is named in messages: its folder and its name, e.g. "ScienceQA/test.json"."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _load_list(path: Path) -> list:
    label = _label(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", file=label) from None
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", file=label) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=label) from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", file=label
        ) from None
    if not isinstance(data, list):
        raise DataError(f"top level must be a JSON list, got {_jtype(data)}", file=label)
    return data


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _record_id(rec: dict, key: str) -> str:
    if key not in rec:
        raise DataError("missing required field", field=key)
    rid = rec[key]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise DataError(f"must be a string or an integer, got {_jtype(rid)}", field=key)
    rid = str(rid)
    if not rid:
        raise DataError("must not be empty", field=key)
    return rid


def _image(rec: dict, image_root: Path) -> str | None:
    rel = rec.get("image")
    if rel is None:
        return None
    if not isinstance(rel, str):
        raise DataError(f"must be a string, got {_jtype(rel)}", field="image")
    resolve_image(image_root, rel)
    return rel


def _strip_image_token(text: str) -> str:
    if text.startswith(IMAGE_TOKEN + "\n"):
        return text[len(IMAGE_TOKEN) + 1 :]
    if IMAGE_TOKEN in text:
        return text.replace(IMAGE_TOKEN, "", 1).strip("\n")
    return text


def _check_turn(turn: Any, fld: str) -> None:
    if not isinstance(turn, dict):
        raise DataError(f"turn must be a JSON object, got {_jtype(turn)}", field=fld)
    for key in ("from", "value"):
        if key not in turn:
            raise DataError("missing required field", field=f"{fld}.{key}")
        if not isinstance(turn[key], str):
            raise DataError(f"must be a string, got {_jtype(turn[key])}", field=f"{fld}.{key}")
    if turn["from"] not in ("human", "gpt"):
        raise DataError(f"must be 'human' or 'gpt', got {turn['from']!r}", field=f"{fld}.from")


def _conversation_pairs(conv: list) -> list[tuple[str, str]]:
    """The (human, gpt) pairs of a conversation, read as LLaVA's preprocessing reads it: one
    leading gpt turn is skipped, then the turns must alternate human, gpt, human, ...; a
    trailing human turn is dropped (LLaVA renders it but supervises nothing after it, so the
    loss is the same). ``<image>`` may only appear in the first human turn; it is stripped there."""
    for t, turn in enumerate(conv):
        _check_turn(turn, f"conversations[{t}]")
    start = 1 if conv and conv[0]["from"] == "gpt" else 0
    for t in range(start, len(conv)):
        want = "human" if (t - start) % 2 == 0 else "gpt"
        if conv[t]["from"] != want:
            raise DataError(
                f"a {conv[t]['from']} turn where a {want} turn must come (turns alternate human, gpt, "
                "after at most one leading gpt turn)", field=f"conversations[{t}].from",
            )
        if IMAGE_TOKEN in conv[t]["value"] and t != start:
            raise DataError(f"{IMAGE_TOKEN} may only appear in the first human turn",
                            field=f"conversations[{t}].value")
    if start >= len(conv):
        raise DataError("no human turn", field="conversations")
    if start + 1 >= len(conv):
        raise DataError("no gpt turn after the first human turn", field="conversations")
    first = _strip_image_token(conv[start]["value"])
    if IMAGE_TOKEN in first:
        raise DataError(f"more than one {IMAGE_TOKEN} in the first human turn",
                        field=f"conversations[{start}].value")
    values = [first] + [turn["value"] for turn in conv[start + 1:]]
    return list(zip(values[0::2], values[1::2]))  # zip drops a trailing human turn


def _parse_train_record(rec: Any, task: str, image_root: Path) -> Sample:
    if not isinstance(rec, dict):
        raise DataError(f"record must be a JSON object, got {_jtype(rec)}")
    rid = _record_id(rec, "id")
    try:
        image = _image(rec, image_root)
        if "conversations" not in rec:
            raise DataError("missing required field", field="conversations")
        conv = rec["conversations"]
        if not isinstance(conv, list):
            raise DataError(f"must be a list, got {_jtype(conv)}", field="conversations")
        (human, gpt), *later = _conversation_pairs(conv)
    except DataError as exc:
        raise exc.located(record=rid) from None
    extra = {"turns": [list(pair) for pair in later]} if later else {}
    return Sample(id=rid, task=task, image=image, text=human, answers=(gpt,), extra=extra)


def _parse_test_record(rec: Any, task: str, image_root: Path) -> Sample:
    if not isinstance(rec, dict):
        raise DataError(f"record must be a JSON object, got {_jtype(rec)}")
    rid = _record_id(rec, "question_id")
    try:
        image = _image(rec, image_root)
        if "text" not in rec:
            raise DataError("missing required field", field="text")
        text = rec["text"]
        if not isinstance(text, str):
            raise DataError(f"must be a string, got {_jtype(text)}", field="text")
        extra: dict[str, Any] = {}
        if _strip_image_token(text) != text:  # CoIN's GK judge builds its prompt from the text as stored
            extra["record_text"] = text
        text = _strip_image_token(text)
        bbox_text = rec.get("answer_bbox")
        if bbox_text is not None:
            if not isinstance(bbox_text, str):
                raise DataError(f"must be a string, got {_jtype(bbox_text)}", field="answer_bbox")
            try:
                extra["bbox"] = parse_bbox(bbox_text)
            except ValueError as exc:
                raise DataError(str(exc), field="answer_bbox") from None
        if rec.get("size") is not None:
            size = rec["size"]
            if (
                not isinstance(size, list)
                or len(size) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in size)
                or not all(v > 0 for v in size)
            ):
                raise DataError("must be a list of two positive numbers [w, h]", field="size")
            extra["size"] = list(size)
        answers = _answers(rec, bbox_text)
        if bbox_text is not None and answers[0] != bbox_text:  # CoIN's GK judge is shown the box
            extra["record_answer"] = bbox_text
    except DataError as exc:
        raise exc.located(record=rid) from None
    return Sample(id=rid, task=task, image=image, text=text, answers=answers, extra=extra)


def _answers(rec: dict, bbox_text: str | None) -> tuple[str, ...]:
    for key in ("answers", "answer"):
        if rec.get(key) is None:
            continue
        value = rec[key]
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            if not value:
                raise DataError("must not be an empty list", field=key)
            for k, item in enumerate(value):
                if not isinstance(item, str):
                    raise DataError(f"must be a string, got {_jtype(item)}", field=f"{key}[{k}]")
            return tuple(value)
        raise DataError(f"must be a string or a list of strings, got {_jtype(value)}", field=key)
    if bbox_text is not None:
        return (bbox_text,)
    raise DataError("missing required field", field="answer")


def _read(path: Path, task: str, image_root: Path, parse) -> list[Sample]:
    path = Path(path)
    label = _label(path)
    out = []
    for index, rec in enumerate(_load_list(path)):
        try:
            out.append(parse(rec, task, image_root))
        except DataError as exc:
            raise exc.located(file=label, index=index) from None
    return out


def read_train_json(path: Path, task: str, image_root: Path) -> list[Sample]:
    """Read a train file (LLaVA conversation records) into Samples."""
    return _read(path, task, image_root, _parse_train_record)


def read_test_json(path: Path, task: str, image_root: Path) -> list[Sample]:
    """Read a test file (question records) into Samples."""
    return _read(path, task, image_root, _parse_test_record)


def read_task(task_dir: Path, task: str, split: str, image_root: Path) -> list[Sample]:
    """Read ``<task_dir>/<split>.json`` (split "train" or "test") into Samples of ``task``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(task_dir) / f"{split}.json"
    reader = read_train_json if split == "train" else read_test_json
    return reader(path, task, image_root)


# ---------------------------------------------------------------------------------------
# writing


def _check_sample(s: Sample, i: int) -> None:
    if not isinstance(s, Sample):
        raise TypeError(f"item {i} is not a Sample: {type(s).__name__}")
    if not s.answers:
        raise ValueError(f"sample {s.id!r} has no answer")


def _dump(path: Path, records: list[dict]) -> Path:
    text = json.dumps(records, ensure_ascii=False, indent=1) + "\n"
    return atomic_write_text(path, text)


def write_train_json(path: Path, samples: Iterable[Sample]) -> Path:
    """Write Samples as a train file (LLaVA conversations): the first pair is ``text`` and
    ``answers[0]``, then the later pairs of ``extra["turns"]``."""
    records = []
    for i, s in enumerate(samples):
        _check_sample(s, i)
        rec: dict[str, Any] = {"id": s.id}
        if s.image is not None:
            rec["image"] = s.image
        rec["conversations"] = []
        for k, (human, gpt) in enumerate(s.conversation):
            if k == 0 and s.image is not None:
                human = f"{IMAGE_TOKEN}\n{human}"
            rec["conversations"] += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
        records.append(rec)
    return _dump(path, records)


def write_test_json(path: Path, samples: Iterable[Sample]) -> Path:
    """Write Samples as a test file.

    ``answer`` is a string when there is one reference answer, else the list of all of them.
    ``extra["bbox"]`` becomes ``answer_bbox`` (the first answer when it is a box string, else
    the box formatted with two decimals) and ``extra["size"]`` becomes ``size``.
    """
    records = []
    for i, s in enumerate(samples):
        _check_sample(s, i)
        rec: dict[str, Any] = {"question_id": s.id, "image": s.image, "text": s.text}
        rec["answer"] = s.answers[0] if len(s.answers) == 1 else list(s.answers)
        if s.extra.get("bbox") is not None:
            box = [float(v) for v in s.extra["bbox"]]
            try:
                same = parse_bbox(s.answers[0]) == box
            except ValueError:
                same = False
            rec["answer_bbox"] = s.answers[0] if same else format_bbox(box)
        if s.extra.get("size") is not None:
            rec["size"] = list(s.extra["size"])
        records.append(rec)
    return _dump(path, records)
