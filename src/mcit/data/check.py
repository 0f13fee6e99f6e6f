"""Check every file of a CoIN-format stream before any training, reporting all problems at once.

The readers of :mod:`mcit.data.coin_format` stop at the first bad record, which is right for
loading but slow for repairing a release: fix one record, rerun, find the next. This module
walks every file and every record and collects a :class:`Problem` for each defect, then
returns a :class:`CheckReport` (counts per task and split, plus the full problem list).

What is checked, per file (``<release>/<Task>/{train,test}.json``):

* the task folder and the file exist, the file is UTF-8 JSON holding a list, and it holds at
  least one usable record (an empty file leaves the task nothing to train on or evaluate);
* each record's structure, with the readers' own record parsers (``_parse_train_record`` and
  ``_parse_test_record``), so "valid" here means exactly "the readers accept it". They stop at
  the first structural problem of a record, so a record shows at most one structural problem;
  the image is checked separately, so an image problem is reported next to it;
* non-empty question and answer texts (the readers accept empty strings);
* answers of the kind the task's scorer needs (given ``scorers``): ``bbox`` tasks' training
  targets and test references are boxes "[x1, y1, x2, y2]" in [0, 1] with x1 <= x2, y1 <= y2;
  ``letter`` tasks' test answers are option letters A-E;
* the image path stays inside the image root (:func:`resolve_image`), the file exists, is at
  most ``data.max_image_pixels`` pixels (read from its header, so a bomb is never decoded) and
  decodes to its last byte (``verify()`` alone lets a truncated JPEG through). Each distinct file
  is decoded once per check, in a thread pool; :func:`check_stream_config` (what ``mcit data
  check`` and every run use) remembers the files that decoded fine in mcit's cache, so a later
  check decodes only the files that changed;
* ids are unique within the file.

Private helpers reused from ``coin_format``: ``_label`` (how a file is named), ``_load_list``
(reading and JSON errors with line and column), ``_image`` (image field type + confinement),
``_record_id`` (id rules) and ``_parse_train_record`` / ``_parse_test_record`` (record
structure, answers, answer_bbox, size).
The data is only read; the one file written is that list of images known to be fine.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image  # noqa: F401  (tests count the files opened through it)

from mcit.config import ConfigError
from mcit.errors import DataCheckFailed  # noqa: F401 - raised by the run, imported from here by others
from mcit.data.coin_format import (
    SPLITS,
    DataError,
    _image,
    _label,
    _load_list,
    _parse_test_record,
    _parse_train_record,
    _record_id,
    parse_bbox,
    read_test_json,
    resolve_image,
)
from mcit.data.images import inspect_image, pixel_limit
from mcit.io import atomic_write_text
from mcit.data.benchmark import load_benchmark
from mcit.data.release import OPTION_LETTERS, OfficialTruth, eval_file, resolve_instruction_set
from mcit.data.schema import Sample
from mcit.data.stream import cache_dir, coin_mini_root, stream_order

__all__ = ["CheckReport", "DataCheckFailed", "Problem", "SplitCounts", "check_data", "check_release",
           "check_stream_config", "images_checked_file"]

_ID_KEY = {"train": "id", "test": "question_id"}
_PARSER: dict[str, Callable[[Any, str, Path], Sample]] = {
    "train": _parse_train_record,
    "test": _parse_test_record,
}


@dataclass
class Problem:
    """One defect: which file, which record (its id, or its position when it has no usable id),
    which field, and what is wrong. ``file`` is shown as "<Task>/<split>.json"."""

    file: str
    record: str | None
    field: str | None
    message: str
    index: int | None = None  # the record's position in the file's list, when known

    def __str__(self) -> str:
        parts = [self.file]
        if self.record is not None:
            parts.append(f"record {self.record!r}")
        elif self.index is not None:
            parts.append(f"record #{self.index}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts) + ": " + self.message

    @classmethod
    def from_error(cls, err: DataError, *, file: str, index: int | None = None) -> "Problem":
        return cls(
            file=err.file if err.file is not None else file,
            record=None if err.record is None else str(err.record),
            field=err.field,
            message=err.reason,
            index=err.index if err.index is not None else index,
        )


@dataclass
class SplitCounts:
    """Records in one file and how many of them have at least one problem.

    ``records`` is None when the file could not be read at all (missing, not JSON, not a list).
    """

    records: int | None = None
    bad: int = 0


@dataclass
class CheckReport:
    """The outcome of a check: ``counts[task][split]`` and every problem found."""

    release_dir: Path
    image_root: Path
    counts: dict[str, dict[str, SplitCounts]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)  # answers replaced by the official files'
    truth_sources: dict[str, str] = field(default_factory=dict)  # task -> official ground-truth file
    images: int = 0  # distinct image files decoded
    images_unchanged: int = 0  # distinct image files not decoded again: fine at an earlier check, unchanged
    seconds: float = 0.0  # how long the check took

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, max_problems: int = 200) -> str:
        """A table of counts, then one line per problem (at most ``max_problems`` shown)."""
        width = max([len("task")] + [len(t) for t in self.counts])
        lines = [
            f"release {self.release_dir}, images {self.image_root}",
            f"{'task':<{width}}  {'split':<5}  {'records':>7}  {'bad':>5}",
        ]
        for task, splits in self.counts.items():
            for split, c in splits.items():
                records = "-" if c.records is None else str(c.records)
                lines.append(f"{task:<{width}}  {split:<5}  {records:>7}  {c.bad:>5}")
        records = sum(c.records or 0 for splits in self.counts.values() for c in splits.values())
        unchanged = f" ({self.images_unchanged} more unchanged since an earlier check)" if self.images_unchanged else ""
        lines.append(f"checked {records} records and decoded {self.images} distinct images{unchanged} "
                     f"in {self.seconds:.1f} s")
        for task, source in self.truth_sources.items():
            lines.append(f"{task}: ground truth from {source}")
        if self.notes:
            n = len(self.notes)
            lines.append(f"{n} test record{'s' if n != 1 else ''} whose own answer the official file replaces:")
            lines += [f"  {p}" for p in self.notes[:max_problems]]
            if n > max_problems:
                lines.append(f"  ... and {n - max_problems} more")
        if self.ok:
            lines.append("no problems found")
            return "\n".join(lines)
        n = len(self.problems)
        lines.append(f"{n} problem{'s' if n != 1 else ''}:")
        lines += [f"  {p}" for p in self.problems[:max_problems]]
        if n > max_problems:
            lines.append(f"  ... and {n - max_problems} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


# ---------------------------------------------------------------------------------------


@dataclass
class _ImageRef:
    """A record's image, to be decoded once all files are read (each distinct file once)."""

    path: Path
    rel: str


class _ImageChecker:
    """Collects the distinct image files the records use, then decodes them all in a thread pool
    (Pillow's decoders release the GIL) and remembers each verdict (None = fine).

    With ``remembered`` (a JSON file), the files that decoded fine are recorded there by size and
    modification time, and a later check decodes only what changed since: every run starts with a
    data check, and decoding a whole release each time would cost minutes."""

    def __init__(self, image_root: Path, check_files: bool, max_pixels: int | None = None,
                 remembered: Path | None = None) -> None:
        self.image_root = image_root
        self.check_files = check_files
        self.max_pixels = pixel_limit() if max_pixels is None else max_pixels
        self.remembered = remembered
        self.reused = 0
        self._verdicts: dict[Path, str | None] = {}

    def problem(self, rec: dict) -> DataError | _ImageRef | None:
        """The image's path problem, or a reference to decode later, or None (no image)."""
        try:
            rel = _image(rec, self.image_root)  # type and confinement to the root
        except DataError as err:
            return err
        if rel is None or not self.check_files:
            return None
        path = resolve_image(self.image_root, rel)
        self._verdicts.setdefault(path, None)
        return _ImageRef(path, rel)

    def decode_all(self) -> int:
        """Decode every collected file that is not known to be fine (each once); the number decoded."""
        known = self._load_remembered()
        stamps = {p: _stamp(p) for p in self._verdicts}
        todo = [p for p in self._verdicts if not self._still_fine(known.get(str(p)), stamps[p])]
        self.reused = len(self._verdicts) - len(todo)
        workers = max(1, min(8, os.cpu_count() or 1, len(todo)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for path, (verdict, pixels) in zip(todo, pool.map(lambda p: inspect_image(p, self.max_pixels), todo)):
                self._verdicts[path] = verdict
                if verdict is None and stamps[path]:
                    known[str(path)] = [*stamps[path], pixels]
                else:
                    known.pop(str(path), None)
        if todo:
            self._save_remembered(known)
        return len(todo)

    def _still_fine(self, entry, stamp: list[int] | None) -> bool:
        """The file decoded fine when it had this size and time, and is within today's pixel limit."""
        return (stamp is not None and isinstance(entry, list) and len(entry) == 3 and entry[:2] == stamp
                and isinstance(entry[2], int) and entry[2] <= self.max_pixels)

    def _load_remembered(self) -> dict[str, list]:
        if self.remembered is None:
            return {}
        try:
            table = json.loads(self.remembered.read_text("utf-8"))
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: decode everything
        return table if isinstance(table, dict) else {}

    def _save_remembered(self, table: dict[str, list]) -> None:
        if self.remembered is None:
            return
        try:
            atomic_write_text(self.remembered, json.dumps(table, separators=(",", ":")))
        except OSError:
            pass  # a read-only cache only costs the next check its time

    def resolve(self, found: DataError | _ImageRef | None) -> DataError | None:
        if not isinstance(found, _ImageRef):
            return found
        verdict = self._verdicts[found.path]
        return None if verdict is None else DataError(f"{verdict}: {found.rel!r}", field="image")


def _stamp(path: Path) -> list[int] | None:
    """[size, modification time in ns] of a file, or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _empty_text_problem(sample: Sample, rec: dict, split: str) -> DataError | None:
    """Problems the readers let through: an empty question or an empty answer."""
    if split == "train":
        for k, (human, gpt) in enumerate(sample.conversation):
            where = "" if k == 0 else f" of pair {k + 1}"
            if not human.strip():
                return DataError(f"the human turn{where} holds no question", field="conversations")
            if not gpt.strip():
                return DataError(f"the gpt turn{where} is empty", field="conversations")
        return None
    if not sample.text.strip():
        return DataError("must not be empty", field="text")
    if any(not a.strip() for a in sample.answers):
        key = next((k for k in ("answers", "answer") if rec.get(k) is not None), "answer_bbox")
        return DataError("holds an empty answer", field=key)
    return None


def _usable_id(rec: Any, key: str) -> str | None:
    """The record's id as the readers see it, or None when it has no valid one."""
    if not isinstance(rec, dict):
        return None
    try:
        return _record_id(rec, key)
    except DataError:
        return None


def _box_problem(text: str) -> str | None:
    """Why ``text`` is not a box the bbox scorer can use: "[x1, y1, x2, y2]" in [0, 1], x1 <= x2,
    y1 <= y2 (an inverted or out-of-range reference makes every prediction wrong), or None."""
    try:
        x1, y1, x2, y2 = parse_bbox(text)
    except ValueError as exc:
        return str(exc)
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):
        return f"box {text!r} has a coordinate outside [0, 1] (boxes are normalized to the image)"
    if x1 > x2 or y1 > y2:
        return f"box {text!r} has {'x1 > x2' if x1 > x2 else 'y1 > y2'} (the corners are [x1, y1, x2, y2])"
    return None


def _answer_kind_problem(sample: Sample, rec: dict, split: str, scorer: str | None) -> DataError | None:
    """An answer of the wrong kind for the task's scorer: a Grounding answer (train target or
    test reference) that is not a box, a multiple-choice test answer that is not an option letter."""
    if scorer == "bbox":
        if split == "train":
            for k, (_, gpt) in enumerate(sample.conversation):
                why = _box_problem(gpt.strip())
                if why:
                    where = "" if k == 0 else f" of pair {k + 1}"
                    return DataError(f"the gpt turn{where} must be a box: {why}", field="conversations")
            return None
        key = "answer_bbox" if rec.get("answer_bbox") is not None else _answer_key(rec)
        why = _box_problem(rec["answer_bbox"] if key == "answer_bbox" else sample.answer)
        return DataError(why, field=key) if why else None
    answer = sample.answer.strip()  # the letter scorer compares predictions with the first answer only
    if scorer == "letter" and split == "test" and (len(answer) != 1 or answer.upper() not in OPTION_LETTERS):
        return DataError(f"answer {sample.answer!r} is not an option letter ({', '.join(OPTION_LETTERS)}), which "
                         "the letter scorer compares predictions with", field=_answer_key(rec))
    return None


def _answer_key(rec: dict) -> str:
    return next((k for k in ("answers", "answer") if rec.get(k) is not None), "answer_bbox")


@dataclass
class _FileCheck:
    """One file's records after the structural checks; image verdicts are resolved later."""

    label: str
    records: int | None = None  # None: the file could not be read at all
    unreadable: Problem | None = None  # why
    entries: list[tuple[int, str | None, list]] = field(default_factory=list)  # (index, id, found)


def _read_file(path: Path, task: str, split: str, scorer: str | None, images: _ImageChecker) -> _FileCheck:
    label = _label(path)
    try:
        records = _load_list(path)
    except DataError as err:
        return _FileCheck(label, unreadable=Problem.from_error(err, file=label))

    id_key, parse = _ID_KEY[split], _PARSER[split]
    first_seen: dict[str, int] = {}
    result = _FileCheck(label, records=len(records))
    for index, rec in enumerate(records):
        found: list[DataError | _ImageRef | None] = []
        rid = _usable_id(rec, id_key)
        if isinstance(rec, dict):
            # the structure without the image, so that an image problem hides no other one
            try:
                sample = parse({k: v for k, v in rec.items() if k != "image"}, task,
                               images.image_root)
            except DataError as err:
                found.append(err)
            else:
                found.append(_empty_text_problem(sample, rec, split)
                             or _answer_kind_problem(sample, rec, split, scorer))
            found.append(images.problem(rec))
        else:
            try:
                parse(rec, task, images.image_root)  # reports that a record must be an object
            except DataError as err:
                found.append(err)
        if rid is not None:
            if rid in first_seen:
                found.append(DataError(
                    f"duplicate id (first used by record #{first_seen[rid]})", field=id_key))
            else:
                first_seen[rid] = index
        result.entries.append((index, rid, found))
    return result


_NOTHING_TO = {"train": "nothing to train on", "test": "nothing to evaluate"}


def _finish_file(check: _FileCheck, split: str, images: _ImageChecker,
                 problems: list[Problem]) -> SplitCounts:
    """The file's problems (image verdicts now known) appended in record order; its counts."""
    if check.unreadable is not None:
        problems.append(check.unreadable)
        return SplitCounts()
    bad = 0
    for index, rid, found in check.entries:
        errors = [e for e in map(images.resolve, found) if e is not None]
        if errors:
            bad += 1
        for err in errors:
            problem = Problem.from_error(err, file=check.label, index=index)
            if problem.record is None and rid is not None:
                problem.record = rid
            problems.append(problem)
    if check.records == 0:
        problems.append(Problem(check.label, None, None, f"holds no records: the task has {_NOTHING_TO[split]}"))
    elif bad == check.records:
        problems.append(Problem(check.label, None, None,
                                f"no usable record (all {bad} have problems): the task has {_NOTHING_TO[split]}"))
    return SplitCounts(records=check.records, bad=bad)


def check_release(release_dir: Path, image_root: Path, tasks: list[str],
                  eval_files: dict[str, str] | None = None, *, scorers: dict[str, str] | None = None,
                  max_image_pixels: int | None = None, remember: Path | None = None) -> CheckReport:
    """Check ``<release_dir>/<Task>/train.json`` and each task's evaluation file (``eval_files``,
    default ``test.json``) for every task, and their images.

    ``release_dir`` is the instruction set's folder. ``scorers`` (task -> scorer name) adds the
    checks of answer kinds (boxes for ``bbox``, option letters for ``letter``); every image is
    decoded in full and refused above ``max_image_pixels`` (default: data.max_image_pixels's);
    with ``remember`` (a JSON file), images that decoded fine and have not changed since (size,
    modification time) are not decoded again.
    Never raises on bad data: every problem becomes a :class:`Problem` in the returned report.
    """
    started = time.monotonic()
    eval_files, scorers = eval_files or {}, scorers or {}
    release_dir, image_root = Path(release_dir), Path(image_root)
    report = CheckReport(release_dir, image_root)
    problems = report.problems

    root_ok = image_root.is_dir()
    if not root_ok:
        problems.append(Problem(str(image_root), None, None,
                                "image root folder not found; image files were not checked"))
    if not release_dir.is_dir():
        problems.append(Problem(str(release_dir), None, None, "release folder not found"))
        for task in tasks:
            report.counts[task] = {split: SplitCounts() for split in SPLITS}
        return report

    images = _ImageChecker(image_root, check_files=root_ok, max_pixels=max_image_pixels, remembered=remember)
    read: dict[str, dict[str, _FileCheck] | Problem] = {}  # every file read before any image is decoded
    for task in tasks:
        task_dir = release_dir / task
        if not task_dir.is_dir():
            read[task] = Problem(f"{task}/", None, None, f"task folder not found in {release_dir}")
            continue
        names = {"train": "train.json", "test": eval_files.get(task, "test.json")}
        read[task] = {split: _read_file(task_dir / names[split], task, split, scorers.get(task), images)
                      for split in SPLITS}
    report.images = images.decode_all()
    report.images_unchanged = images.reused
    for task, files in read.items():
        if isinstance(files, Problem):
            problems.append(files)
            report.counts[task] = {split: SplitCounts() for split in SPLITS}
            continue
        report.counts[task] = {split: _finish_file(check, split, images, problems) for split, check in files.items()}
    report.seconds = time.monotonic() - started
    return report


def check_stream_config(dc) -> CheckReport:
    """Check the data on disk a ``DataConfig`` points at (CoIN's release, or a benchmark file's).

    Resolves ``dc.instruction_set`` to its folder under ``dc.root``, checks each task's train file
    and official evaluation file (:mod:`mcit.data.release`) with ``dc.image_root`` as the image
    root, for ``dc.tasks`` (default: CoIN's order), then reads the official ground-truth files:
    a missing or malformed one is a problem, and each test record whose answer disagrees with it
    is a note. Raises ``ConfigError`` when the config itself cannot name a release.
    """
    bench = load_benchmark(dc.benchmark)
    if bench.generator:
        raise ConfigError(
            f"data check applies to data on disk, got data.benchmark={dc.benchmark}, which mcit "
            "generates (and which needs no check)")
    if not dc.root or not dc.image_root:
        raise ConfigError(f"data.benchmark={dc.benchmark} needs data.root (the data folder) "
                          "and data.image_root")
    tasks = stream_order(dc, 0, bench)  # the set of tasks; their order does not matter here
    release = resolve_instruction_set(Path(dc.root), dc.instruction_set, tasks)
    eval_files = {t: eval_file(bench.spec(t), dc.eval_files) for t in tasks}
    started = time.monotonic()
    truth, truth_error = OfficialTruth(), None
    if bench.official_ground_truth:
        try:
            truth = OfficialTruth.read(dc, Path(dc.image_root), tasks)
        except DataError as err:
            truth_error = Problem.from_error(err, file=err.file or "official ground truth")
    # a task scored against an official file is not held to its records' own answers
    scorers = {t: bench.spec(t).scorer for t in tasks if t not in truth.answers}
    report = check_release(release, Path(dc.image_root), tasks, eval_files, scorers=scorers,
                           max_image_pixels=dc.max_image_pixels, remember=images_checked_file(Path(dc.image_root)))
    if truth_error is not None:
        report.problems.append(truth_error)
    for task in truth.answers:
        label = f"{task}/{eval_files[task]}"
        if any(p.file == label for p in report.problems):
            continue  # the file itself has problems, already listed
        try:
            truth.apply(task, read_test_json(release / task / eval_files[task], task, Path(dc.image_root)), label)
        except DataError as err:
            report.problems.append(Problem.from_error(err, file=label))
    report.notes = [Problem.from_error(n, file=n.file) for n in truth.notes]
    report.truth_sources = dict(truth.sources)
    report.seconds = time.monotonic() - started
    return report


def check_data(dc, seed: int) -> CheckReport:
    """What ``mcit data check`` checks: the data on disk (:func:`check_stream_config`) or, for a
    generated benchmark, what mcit generated for this config (``seed``: the run's data seed), with
    the same checks. A generated benchmark not there yet, or a ``data.root`` holding something
    else, is a ConfigError."""
    bench = load_benchmark(dc.benchmark)
    if not bench.generator:
        return check_stream_config(dc)
    root = coin_mini_root(dc, seed)
    if not (root / "meta.json").is_file():
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise ConfigError(f"data.root={root} holds other content, not a {dc.benchmark} generation (no "
                              "meta.json); `mcit run` generates it into an empty or missing folder")
        raise ConfigError(f"{dc.benchmark} has not been generated yet at {root}; `mcit run` generates it")
    image_root = Path(dc.image_root) if dc.image_root else root / "images"
    tasks = stream_order(dc, seed, bench)
    return check_release(resolve_instruction_set(root, dc.instruction_set, tasks), image_root, tasks,
                         scorers={t: bench.spec(t).scorer for t in tasks}, max_image_pixels=dc.max_image_pixels,
                         remember=images_checked_file(image_root))


def images_checked_file(image_root: Path) -> Path:
    """Where the checks of an image root remember the files that decoded fine (in mcit's cache)."""
    key = hashlib.sha256(str(Path(image_root).resolve()).encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "image-checks" / f"{key}.json"
