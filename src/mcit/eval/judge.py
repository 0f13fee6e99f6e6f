"""The General Knowledge (GK) view: re-score a run's saved predictions with a judge.

``judge_run(run_dir, judge_cfg)`` reads every ``stages/NN-<task>/predictions/<task>.jsonl`` the
run wrote (and ``stages/00-base/...`` for the zero-shot row), asks the configured judge
(:mod:`mcit.eval.judge_backends`) for a 0-10 score per sample (protocol:
:mod:`mcit.eval.judge_protocol`) and writes, next to the Instruction-Following files and without
touching them::

    stages/NN-<task>/judge/<task>.jsonl       one line per sample: judge score and reply
    matrix_gk.json .csv .md .png              the GK accuracy matrix (report/matrix.py), exact scores
    matrix_gk_official.json .csv .md .png     protocol coin only: the same cells rounded to integers
                                              as CoIN's evaluate_score.py rounds them
    metrics_gk.json                           its metrics, the judge and protocol used, per cell the
                                              exact ``score`` and the official ``score_official``,
                                              unparsable counts
    judge_cache.jsonl                         the judge cache (default place, judge.cache)

The cache is keyed by (backend, model, request): scoring the same run again asks nothing, and a
reply given under one protocol is never reused for another.

A run folder is read as untrusted input: every ``done.json`` must parse, a task name must be a
plain file-name component (from the run's ``data.tasks`` when it lists them) that matches its stage
folder, and every file read or written is checked to resolve inside the run folder.

Faults: when more than ``judge.max_failed_share`` of the samples got no reply (after retries) or an
unparsable one, the GK view is *invalid*: the files above are still written, numbers included (the
failed samples count 0), but ``metrics_gk.json`` says ``"valid": false`` with the counts per kind
and the reason, ``matrix_gk.md`` (and ``matrix_gk_official.md``) start with a warning, and
:class:`JudgeInvalid` is raised (the CLI exits 2). A judge that gave no reply at all writes nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.schema import Sample
import yaml

from ..io import atomic_write_text
from ..metrics import compute_metrics
from ..progress import reporter
from ..report.matrix import format_table, save_matrix
from ..rundir import save_json, stage_dir
from .judge_backends import JudgeBackend, Verdict, build_backend
from .judge_protocol import JudgeError, JudgeItem, gk_task_score, gk_task_score_official
from .scorers import parse_box

__all__ = ["CachedJudge", "JudgeCache", "JudgeError", "JudgeInvalid", "check_task_name", "judge_run",
           "read_predictions"]

CACHE_FILE = "judge_cache.jsonl"
MATRIX_NAME = "matrix_gk"
OFFICIAL_MATRIX_NAME = "matrix_gk_official"
MATRIX_EXTENSIONS = ("json", "csv", "md", "png")
SCORE_RULES = {
    "score": "100 * sum(judge scores) / (10 * N); unparsable or failed samples count as 0",
    "score_official": "round(sum / (10 * N) * 100.0) with Python's round (half to even), as CoIN's "
                      "ETrain/Eval/evaluate_score.py; null for an empty cell",
}
METRICS_FILE = "metrics_gk.json"
CHUNK = 256  # samples judged between two cache appends: an interruption loses at most this many
UNPARSABLE = "unparsable reply"  # the failure kind of a reply the protocol could not read a score from


class JudgeInvalid(JudgeError):
    """The GK view was written but is invalid (too many failed or unparsable judgements);
    ``record`` is its metrics_gk.json content."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


# ------------------------------------------------------------------------------------ cache


class JudgeCache:
    """Judge answers on disk, one JSON line each, keyed by sha256 of (backend, model, prompt).

    Lines are only ever appended (one ``write`` per batch, then fsync), so an interrupted write
    can at worst leave a torn last line; it is skipped when reading.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        self.skipped_lines = 0
        self._load()

    @staticmethod
    def key(backend: str, model: str, text: str) -> str:
        raw = json.dumps([backend, model, text], ensure_ascii=False)
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def _load(self) -> None:
        if not self.path.exists():
            return
        if not self.path.is_file():
            raise JudgeError(f"{self.path}: the judge cache (judge.cache) must be a file, and this is not one")
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                self._entries[entry["key"]] = entry
            except (ValueError, KeyError, TypeError):
                self.skipped_lines += 1
        if self.skipped_lines and not self._entries:  # e.g. judge.cache pointing at some other file
            raise JudgeError(f"{self.path}: not a judge cache (none of its {self.skipped_lines} lines is a cache "
                             "entry); refused to append to it: point judge.cache at a judge cache or a new file")

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict | None:
        return self._entries.get(key)

    def add(self, entries: list[dict]) -> None:
        if not entries:
            return
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() > 0:  # start on a fresh line after a torn write
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        text = "\n" + text
                fh.write(text.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
            for e in entries:
                self._entries[e["key"]] = e


def through_cache(cache: JudgeCache, backend: str, model: str, texts: Sequence[str],
                  ask: Callable[[list[int]], list], to_entry: Callable[[Any], dict | None],
                  from_entry: Callable[[dict], Any], progress: Callable[[int, int], None] | None = None,
                  ) -> tuple[list, int]:
    """(results, hits) for ``texts``: cached ones from ``cache``, the rest from ``ask(positions)``
    in chunks of CHUNK, each chunk appended to the cache as it comes back. ``to_entry(result)``
    gives the fields to keep, or None for a result not worth keeping (no reply: asked again next
    time); ``from_entry`` turns a kept entry back into a result. Shared by the GK judge and EMT's."""
    keys = [cache.key(backend, model, t) for t in texts]
    out: list = [None if (e := cache.get(k)) is None else from_entry(e) for k in keys]
    hits = sum(r is not None for r in out)
    todo = [n for n, r in enumerate(out) if r is None]
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        results = ask(chunk)
        cache.add([{"key": keys[n], "backend": backend, "model": model, **entry}
                   for n, r in zip(chunk, results) if (entry := to_entry(r)) is not None])
        for n, r in zip(chunk, results):
            out[n] = r
        if progress:
            progress(start + len(chunk), len(todo))
    return out, hits


class CachedJudge(JudgeBackend):
    """A backend behind a :class:`JudgeCache`: only samples never judged before reach it.

    A reply that could not be parsed is cached like any reply (asking again costs the same); a
    request that got no reply at all is not, so the next scoring tries it again.
    """

    def __init__(self, inner: JudgeBackend, cache: JudgeCache):
        super().__init__()
        self.inner, self.cache = inner, cache
        self.backend, self.model = inner.backend, inner.model
        self.hits = 0

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def judge(self, items: Sequence[JudgeItem], progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        def ask(positions: list[int]) -> list[Verdict]:
            self.calls += len(positions)
            return self.inner.judge([items[n] for n in positions])

        out, hits = through_cache(
            self.cache, self.backend, self.model, [self.inner.key_text(i) for i in items], ask,
            to_entry=lambda v: None if v.reply is None else {"score": v.score, "reply": v.reply},
            from_entry=lambda e: Verdict(e.get("score"), e.get("reply")), progress=progress)
        self.hits += hits
        return out


# ------------------------------------------------------------------------------------ run folder


@dataclass
class _Cell:
    """One (stage, task) prediction file and what the judge made of it."""

    row: int  # -1 for the base (zero-shot) row
    stage: Path
    task: str
    records: list[dict]
    items: list[JudgeItem]
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def value(self) -> float:
        return gk_task_score([v.score for v in self.verdicts])

    @property
    def official(self) -> int | None:
        return gk_task_score_official([v.score for v in self.verdicts])

    def counts(self) -> dict[str, int]:
        failed = sum(v.reply is None for v in self.verdicts)
        unparsable = sum(v.reply is not None and v.score is None for v in self.verdicts)
        return {"samples": len(self.verdicts), "unparsable": unparsable, "failed": failed}

    def failure_kinds(self) -> dict[str, int]:
        """How many samples failed in each way ("HTTP 500", "ReadTimeout", "unparsable reply", ...)."""
        kinds: dict[str, int] = {}
        for v in self.verdicts:
            if v.score is None:
                kind = UNPARSABLE if v.reply is not None else _failure_kind(v.error)
                kinds[kind] = kinds.get(kind, 0) + 1
        return kinds


def _failure_kind(error: str | None) -> str:
    # "HTTP 500 (gave up after 3 attempts)" -> "HTTP 500": the kind, not the retry count
    return (error or "no reply").split(" (gave up", 1)[0]


def read_predictions(path: Path) -> list[dict]:
    """The records of a predictions JSONL file, checked for the fields the judge needs."""
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise JudgeError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise JudgeError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JudgeError(f"{path} (line {lineno}): not valid JSON: {exc.msg}") from None
        _check_record(rec, path, lineno)
        records.append(rec)
    return records


def _check_record(rec: Any, path: Path, lineno: int) -> None:
    where = f"{path} (line {lineno})"
    if not isinstance(rec, dict):
        raise JudgeError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for key in ("text", "prediction", "record_text", "record_answer"):
        if key.startswith("record_") and key not in rec:
            continue  # optional: present where the stored test record differs from mcit's reading
        if not isinstance(rec.get(key), str):
            problem = "missing" if key not in rec else f"must be a string, got {type(rec[key]).__name__}"
            raise JudgeError(f"{where}: field {key!r} {problem}")
    answers = rec.get("answers")
    if not (isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
        problem = "missing" if "answers" not in rec else "must be a non-empty list of strings"
        raise JudgeError(f"{where}: field 'answers' {problem}")


def _is_box_task(rec: dict, answer: str) -> bool:
    # runs saved before predictions named their scorer: a box answer is a grounding question
    if "scorer" in rec:
        return rec["scorer"] == "bbox"
    return answer.strip().startswith("[") and parse_box(answer) is not None


def _item(rec: dict, task: str) -> JudgeItem:
    answers = tuple(rec["answers"])
    rule = {"instruction_rule": rec["instruction_rule"]} if "instruction_rule" in rec else {}
    sample = Sample(id=str(rec.get("id", "")), task=task, image=None, text=rec["text"], answers=answers, extra=rule)
    # A record whose answers came from an official file (TextVQA's ten) keeps its own answer, and a
    # text stored with "<image>" its raw text: CoIN's judge is shown those.
    answer = rec.get("record_answer", sample.answer)
    return JudgeItem(question=sample.question, answer=answer, prediction=rec["prediction"],
                     references=answers, grounding=_is_box_task(rec, answer), text=rec.get("record_text", rec["text"]))


# ------------------------------------------------------------------------------------ names and paths

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_task_name(task: Any, where: str, allowed: Sequence[str] | None = None) -> str:
    """``task`` if it can name files (``<task>.jsonl``): a non-empty string that is one plain path
    component (no '/', '\\', '..', NUL or other control character), and one of ``allowed`` when
    given. ``where`` names the file and field the name came from."""
    if not isinstance(task, str) or not task.strip():
        raise JudgeError(f"{where}: the task name must be a non-empty string, got {json.dumps(task)[:80]}")
    shown = json.dumps(task)[:80]
    if "/" in task or "\\" in task or task in (".", "..") or ".." in task or _CONTROL.search(task):
        raise JudgeError(f"{where}: task name {shown} is not a plain file name (no '/', '\\', '..' or control "
                         "characters): refused, it would lead outside the run folder")
    if allowed is not None and task not in allowed:
        raise JudgeError(f"{where}: task {shown} is not one of the run's tasks {list(allowed)} (config.yaml data.tasks)")
    return task


def _inside(run_dir: Path, path: Path) -> Path:
    """``path`` after checking that it resolves (symbolic links followed) inside ``run_dir``."""
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise JudgeError(f"{path} leads outside the run folder {run_dir} (a symbolic link?): refused, the judge "
                         "reads and writes only inside the run folder")
    return path


def _config_tasks(run_dir: Path) -> list[str] | None:
    """The task list of the run's config.yaml (data.tasks), or None when it names none (all tasks of
    the benchmark's order) or the file is absent. Read with yaml alone: only this key matters here."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(_inside(run_dir, path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise JudgeError(f"{path}: cannot be read as YAML ({type(exc).__name__})") from None
    tasks = data.get("data", {}).get("tasks") if isinstance(data, dict) and isinstance(data.get("data"), dict) else None
    if tasks is None:
        return None
    if not (isinstance(tasks, list) and all(isinstance(t, str) for t in tasks)):
        raise JudgeError(f"{path}: data.tasks must be a list of task names")
    return tasks


def _read_done(path: Path) -> dict:
    """A stage's done.json, which must parse: a truncated one is an error, not a stage to skip."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise JudgeError(f"{path}: not valid JSON ({type(exc).__name__}: truncated or damaged); the stage's "
                         "record is needed to judge it") from None
    if not isinstance(record, dict):
        raise JudgeError(f"{path}: expected a JSON object, got {type(record).__name__}")
    return record


def _completed_stages(run_dir: Path) -> list[tuple[Path, str]]:
    """(stage folder, task) of the stages finished in order from the first (stops at a gap).
    Every name is checked: see :func:`check_task_name`; a stage folder must be the one the run
    names for its task (``stages/NN-<task>``)."""
    stages = run_dir / "stages"
    if not stages.is_dir():
        raise JudgeError(f"{run_dir} is not a run folder: it has no stages/ folder")
    _inside(run_dir, stages)
    allowed = _config_tasks(run_dir)
    out: list[tuple[Path, str]] = []
    while True:
        found = sorted(stages.glob(f"{len(out) + 1:02d}-*"))
        if len(found) > 1:
            raise JudgeError(f"{stages}: {len(found)} folders for stage {len(out) + 1}: "
                             f"{[f.name for f in found]}; a run has one")
        done = found[0] / "done.json" if found else None
        if done is None or not done.exists():
            return out
        record = _read_done(_inside(run_dir, done))
        task = check_task_name(record.get("task"), f"{done} (field 'task')", allowed)
        expected = stage_dir(run_dir, len(out), task)
        if found[0].name != expected.name:
            raise JudgeError(f"{done}: task {task!r} belongs in stage folder {expected.name}, not {found[0].name}")
        out.append((found[0], task))


def _cells(run_dir: Path, stages: list[tuple[Path, str]]) -> list[_Cell]:
    tasks = [task for _, task in stages]
    rows = [(-1, run_dir / "stages" / "00-base")] + [(t, folder) for t, (folder, _) in enumerate(stages)]
    cells = []
    for row, folder in rows:
        for i, task in enumerate(tasks):
            path = folder / "predictions" / f"{task}.jsonl"
            if path.exists():
                _inside(run_dir, path)
                _inside(run_dir, folder / "judge" / f"{task}.jsonl")  # where its judgements will go
            if not path.is_file():
                if 0 <= row and i <= row:  # the lower triangle is what the metrics need
                    raise JudgeError(f"{path} is missing: stage {folder.name} has no predictions for {task}")
                continue
            records = read_predictions(path)
            cells.append(_Cell(row, folder, task, records, [_item(r, task) for r in records]))
    return cells


def _write_samples(cell: _Cell) -> None:
    lines = []
    for rec, item, v in zip(cell.records, cell.items, cell.verdicts):
        lines.append(json.dumps({"id": rec.get("id"), "task": cell.task, "question": item.question,
                                 "answer": item.answer, "prediction": item.prediction,
                                 "judge_score": v.score, "judge_reply": v.reply, "judge_error": v.error},
                                ensure_ascii=False) + "\n")
    atomic_write_text(cell.stage / "judge" / f"{cell.task}.jsonl", "".join(lines))


def _matrix(cells: list[_Cell], tasks: list[str], value: Callable[[_Cell], float | None] = lambda c: c.value,
            ) -> tuple[list[list[float | None]], list[float] | None]:
    T = len(tasks)
    matrix: list[list[float | None]] = [[None] * T for _ in range(T)]
    base: list[float | None] = [None] * T
    for c in cells:
        i = tasks.index(c.task)
        if c.row < 0:
            base[i] = value(c)
        else:
            matrix[c.row][i] = value(c)
    zero_shot = base if all(v is not None for v in base) else None
    return matrix, zero_shot  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ entry point


def judge_run(run_dir: str | Path, judge_cfg, log: Callable[[str], None] = print,
              backend: JudgeBackend | None = None) -> dict | None:
    """Score a run's saved predictions with the judge of ``judge_cfg``; write the GK files.

    Returns the content of ``metrics_gk.json``, or None when ``judge_cfg.backend`` is "none".
    ``backend`` replaces the configured one (tests). Raises :class:`JudgeError` (bad run folder
    or prediction file, a fatal endpoint answer), ``ConfigError`` (bad ``judge.*`` setting), or,
    after writing the GK files, :class:`JudgeInvalid` (more than ``judge.max_failed_share`` of the
    samples failed or were unparsable; its ``record`` is the metrics_gk.json content).
    """
    if backend is None and judge_cfg.backend == "none":
        return None
    started = time.time()
    run_dir = Path(run_dir)
    stages = _completed_stages(run_dir)
    if not stages:
        raise JudgeError(f"{run_dir} has no completed stage (stages/01-<task>/done.json): nothing to judge")
    tasks = [task for _, task in stages]
    cells = _cells(run_dir, stages)  # every file is read and checked before the judge is loaded
    _check_outputs(run_dir, judge_cfg)
    inner = backend or build_backend(judge_cfg)
    cache = JudgeCache(Path(judge_cfg.cache) if judge_cfg.cache else run_dir / CACHE_FILE)
    judge = CachedJudge(inner, cache)
    log(f"GK judge: {inner.backend} ({inner.model}, protocol {_protocol(inner)}) on "
        f"{sum(len(c.items) for c in cells)} predictions")
    try:
        verdicts = judge.judge([i for c in cells for i in c.items], progress=_progress(log))
    finally:
        getattr(inner, "close", lambda: None)()
    _check_replies(verdicts, inner)
    _distribute(cells, verdicts)
    validity = _validity(cells, judge_cfg.max_failed_share)
    record = _save(run_dir, cells, tasks, judge, _protocol(inner), cache, started, log, validity)
    if not validity["valid"]:
        raise JudgeInvalid(f"the GK view in {run_dir / METRICS_FILE} is invalid: {validity['reason']}; its numbers "
                           "are kept but marked invalid", record)
    return record


def _check_outputs(run_dir: Path, judge_cfg) -> None:
    """The files judge_run writes at the top of the run folder must not lead out of it."""
    names = [METRICS_FILE] + [f"{m}.{e}" for m in (MATRIX_NAME, OFFICIAL_MATRIX_NAME) for e in MATRIX_EXTENSIONS]
    if not judge_cfg.cache:  # a cache the user names is theirs to place
        names.append(CACHE_FILE)
    for name in names:
        _inside(run_dir, run_dir / name)


def _validity(cells: list[_Cell], max_share: float) -> dict[str, Any]:
    """Whether the GK view can be trusted: the share of samples without a score (failed requests
    and unparsable replies) is at most ``max_share`` (judge.max_failed_share)."""
    kinds: dict[str, int] = {}
    for c in cells:
        for kind, n in c.failure_kinds().items():
            kinds[kind] = kinds.get(kind, 0) + n
    samples, bad = sum(len(c.verdicts) for c in cells), sum(kinds.values())
    share = bad / samples if samples else 0.0
    out: dict[str, Any] = {"valid": share <= max_share, "failed_share": share, "max_failed_share": max_share,
                           "failures": dict(sorted(kinds.items(), key=lambda kv: -kv[1])), "reason": None}
    if not out["valid"]:
        detail = ", ".join(f"{n} unparsable" if kind == UNPARSABLE else f"{n} failed: {kind}"
                           for kind, n in out["failures"].items())
        out["reason"] = (f"{bad} of {samples} judged samples ({share:.0%}) have no score ({detail}), more than "
                         f"judge.max_failed_share={max_share:g}")
    return out


def _protocol(inner: JudgeBackend) -> str | None:
    """The protocol name of an LLM judge; None for one that sends no prompt (embedding)."""
    protocol = getattr(inner, "protocol", None)
    return getattr(protocol, "name", None)


def _check_replies(verdicts: list[Verdict], inner: JudgeBackend) -> None:
    # A judge that answered nothing must not overwrite an earlier GK matrix with zeros.
    if verdicts and all(v.reply is None for v in verdicts):
        raise JudgeError(f"the {inner.backend} judge gave no reply for any of the {len(verdicts)} samples "
                         f"(first error: {verdicts[0].error}); nothing was written")


def _progress(log: Callable[[str], None]) -> Callable[[int, int], None]:
    return reporter("GK judge: new samples judged", "sample", log)  # lines at the run's log.every_*


def _distribute(cells: list[_Cell], verdicts: list[Verdict]) -> None:
    pos = 0
    for c in cells:
        c.verdicts, pos = verdicts[pos:pos + len(c.items)], pos + len(c.items)


def _save(run_dir: Path, cells: list[_Cell], tasks: list[str], judge: CachedJudge, protocol: str | None,
          cache: JudgeCache, started: float, log: Callable[[str], None], validity: dict[str, Any]) -> dict:
    for c in cells:
        _write_samples(c)
    matrix, zero_shot = _matrix(cells, tasks)
    metrics = compute_metrics(matrix, zero_shot)
    save_matrix(run_dir, MATRIX_NAME, tasks, matrix, zero_shot, metrics)
    _save_official_matrix(run_dir, cells, tasks, write=protocol == "coin")
    if not validity["valid"]:
        _mark_invalid(run_dir, validity["reason"], official=protocol == "coin")
    per_cell = [{"stage": c.stage.name, "task": c.task, "score": c.value, "score_official": c.official,
                 **c.counts(), "failures": c.failure_kinds()} for c in cells]
    totals = {k: sum(p[k] for p in per_cell) for k in ("samples", "unparsable", "failed")}
    record = {"view": "general_knowledge", **validity, "protocol": protocol, "judge": judge.describe(), **metrics,
              **totals,
              "score_rules": SCORE_RULES,
              "official_matrix": f"{OFFICIAL_MATRIX_NAME}.json" if protocol == "coin" else None,
              "cache": {"path": str(cache.path), "hits": judge.hits, "new": judge.calls},
              "cells": per_cell, "seconds": time.time() - started}
    save_json(run_dir / METRICS_FILE, record)
    log(format_table(tasks, matrix, metrics, zero_shot,
                     title=f"General Knowledge matrix (judge: {judge.backend}, {judge.model}, "
                           f"protocol {protocol})"))
    log(f"GK judge: {totals['samples']} samples, {totals['unparsable']} unparsable, {totals['failed']} failed, "
        f"{judge.hits} from the cache; wrote {run_dir / METRICS_FILE}")
    if not validity["valid"]:
        log(f"GK judge: INVALID view: {validity['reason']}")
    return record


def _mark_invalid(run_dir: Path, reason: str, official: bool) -> None:
    """A warning at the top of the Markdown matrices: the first thing a reader of an invalid view sees."""
    warning = f"> **INVALID General Knowledge view**: {reason}. The numbers below are not to be reported.\n\n"
    for name in (MATRIX_NAME, OFFICIAL_MATRIX_NAME) if official else (MATRIX_NAME,):
        path = run_dir / f"{name}.md"
        atomic_write_text(path, warning + path.read_text(encoding="utf-8"))


def _save_official_matrix(run_dir: Path, cells: list[_Cell], tasks: list[str], write: bool) -> None:
    """Protocol coin: the integer-rounded official scores as their own matrix, to set beside CoIN's
    tables. Other protocols remove one an earlier coin judging left, so it never outlives its run."""
    if not write:
        for ext in MATRIX_EXTENSIONS:
            (run_dir / f"{OFFICIAL_MATRIX_NAME}.{ext}").unlink(missing_ok=True)
        return
    matrix, zero_shot = _matrix(cells, tasks, lambda c: c.official)
    save_matrix(run_dir, OFFICIAL_MATRIX_NAME, tasks, matrix, zero_shot, compute_metrics(matrix, zero_shot))
