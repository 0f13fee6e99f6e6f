"""Check every file of a CoIN-format stream before any training, reporting all problems at once.

The readers of :mod:`mcit.data.coin_format` stop at the first bad record, which is right for
loading but slow for repairing a release: fix one record, rerun, find the next. This module
walks every file and every record and collects a :class:`Problem` for each defect, then
returns a :class:`CheckReport` (counts per task and split, plus the full problem list).

What is checked, per file (``<release>/<Task>/{train,test}.json``):

* the task folder and the file exist, the file is UTF-8 JSON holding a list;
* each record's structure, with the readers' own record parsers (``_parse_train_record`` and
  ``_parse_test_record``), so "valid" here means exactly "the readers accept it". They stop at
  the first structural problem of a record, so a record shows at most one structural problem;
  the image is checked separately, so an image problem is reported next to it;
* non-empty question and answer texts (the readers accept empty strings);
* the image path stays inside the image root (:func:`resolve_image`), the file exists and
  Pillow can open and ``verify()`` it (each distinct file is opened once per check);
* ids are unique within the file.

Private helpers reused from ``coin_format``: ``_label`` (how a file is named), ``_load_list``
(reading and JSON errors with line and column), ``_image`` (image field type + confinement),
``_record_id`` (id rules) and ``_parse_train_record`` / ``_parse_test_record`` (record
structure, answers, answer_bbox, size).
Checking only reads: nothing is written anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image, UnidentifiedImageError

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
    read_test_json,
    resolve_image,
)
from mcit.data.benchmark import load_benchmark
from mcit.data.release import OfficialTruth, eval_file, resolve_instruction_set
from mcit.data.schema import Sample
from mcit.data.stream import stream_order

__all__ = ["CheckReport", "DataCheckFailed", "Problem", "SplitCounts", "check_release", "check_stream_config"]

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


class _ImageChecker:
    """Opens each distinct image file once; remembers the verdict (None = fine)."""

    def __init__(self, image_root: Path, check_files: bool) -> None:
        self.image_root = image_root
        self.check_files = check_files
        self._verdicts: dict[Path, str | None] = {}

    def problem(self, rec: dict) -> DataError | None:
        """The first problem with the record's image, or None (also when it has none)."""
        try:
            rel = _image(rec, self.image_root)  # type and confinement to the root
        except DataError as err:
            return err
        if rel is None or not self.check_files:
            return None
        path = resolve_image(self.image_root, rel)
        if path not in self._verdicts:
            self._verdicts[path] = self._verify(path)
        verdict = self._verdicts[path]
        return None if verdict is None else DataError(f"{verdict}: {rel!r}", field="image")

    @staticmethod
    def _verify(path: Path) -> str | None:
        if not path.exists():
            return "image file not found"
        if not path.is_file():
            return "image path is not a file"
        try:
            with Image.open(path) as im:
                im.verify()
        except UnidentifiedImageError:
            return "not a readable image (unknown format or not an image)"
        except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, ...)
            return f"not a readable image ({type(exc).__name__}: {exc})"
        return None


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


def _check_file(path: Path, task: str, split: str, images: _ImageChecker,
                problems: list[Problem]) -> SplitCounts:
    label = _label(path)
    try:
        records = _load_list(path)
    except DataError as err:
        problems.append(Problem.from_error(err, file=label))
        return SplitCounts()

    id_key, parse = _ID_KEY[split], _PARSER[split]
    first_seen: dict[str, int] = {}
    bad = 0
    for index, rec in enumerate(records):
        found: list[DataError | None] = []
        rid = _usable_id(rec, id_key)
        if isinstance(rec, dict):
            # the structure without the image, so that an image problem hides no other one
            try:
                sample = parse({k: v for k, v in rec.items() if k != "image"}, task,
                               images.image_root)
            except DataError as err:
                found.append(err)
            else:
                found.append(_empty_text_problem(sample, rec, split))
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
        found = [e for e in found if e is not None]
        if found:
            bad += 1
            for err in found:
                problem = Problem.from_error(err, file=label, index=index)
                if problem.record is None and rid is not None:
                    problem.record = rid
                problems.append(problem)
    return SplitCounts(records=len(records), bad=bad)


def check_release(release_dir: Path, image_root: Path, tasks: list[str],
                  eval_files: dict[str, str] | None = None) -> CheckReport:
    """Check ``<release_dir>/<Task>/train.json`` and each task's evaluation file (``eval_files``,
    default ``test.json``) for every task, and their images.

    ``release_dir`` is the instruction set's folder. Never raises on bad data: every problem
    becomes a :class:`Problem` in the returned report.
    """
    eval_files = eval_files or {}
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

    images = _ImageChecker(image_root, check_files=root_ok)
    for task in tasks:
        task_dir = release_dir / task
        if not task_dir.is_dir():
            problems.append(Problem(f"{task}/", None, None,
                                    f"task folder not found in {release_dir}"))
            report.counts[task] = {split: SplitCounts() for split in SPLITS}
            continue
        names = {"train": "train.json", "test": eval_files.get(task, "test.json")}
        report.counts[task] = {
            split: _check_file(task_dir / names[split], task, split, images, problems)
            for split in SPLITS
        }
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
    report = check_release(release, Path(dc.image_root), tasks, eval_files)
    if not bench.official_ground_truth:
        return report
    try:
        truth = OfficialTruth.read(dc, Path(dc.image_root), tasks)
    except DataError as err:
        report.problems.append(Problem.from_error(err, file=err.file or "official ground truth"))
        return report
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
    return report
