"""The CoIN release as published: its folder names, the file each task is evaluated on, and the
files the official scorers take their ground truth from.

* Instruction sets. The release ships ``Instructions_Original/``, ``Instructions_Diverse/`` and
  ``Instructions_10Type/``; the README's tree spells them ``Instruction_*``; older copies name the
  two paraphrased sets ``Instructions_Type1/`` (Diverse) and ``Instructions_Type2/`` (10Type); the
  LCIA authors' refined copy of Original is ``Instructions/``; coin-mini writes ``Original/``,
  ``Diverse/`` and ``10Type/``. ``data.instruction_set`` takes the set's name (the first of its
  folders that exists is used, and the run says which) or a folder name under the root.
* Evaluation files. The official scripts read ``val.json`` for TextVQA, VizWiz and VQAv2 and
  ``test.json`` for the other five tasks: the ``coin`` benchmark file says so per task
  (``configs/benchmarks/coin.yaml``) and ``data.eval_files`` overrides a task's file.
* Official ground truth. TextVQA is scored against the ten human answers of
  ``TextVQA_0.5.1_val.json`` (kept in the TextVQA image folder), not the one answer of the test
  record; ScienceQA's scorer reads ``problems.json`` and GQA's the balanced test-dev questions.
  :class:`OfficialTruth` reads them and replaces each test record's answers, and lists every
  record whose own answer disagrees (``mcit data check`` prints those as notes).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .coin_format import DataError
from .schema import Sample

__all__ = ["INSTRUCTION_SET_FOLDERS", "OfficialTruth", "canonical_set", "eval_file",
           "resolve_instruction_set", "textvqa_answers_path"]

INSTRUCTION_SET_FOLDERS: dict[str, tuple[str, ...]] = {
    "Original": ("Instructions_Original", "Instruction_Original", "Instructions", "Original"),
    "Diverse": ("Instructions_Diverse", "Instruction_Diverse", "Instructions_Type1", "Instruction_Type1", "Diverse"),
    "10Type": ("Instructions_10Type", "Instruction_10Type", "Instructions_Type2", "Instruction_Type2", "10Type"),
}
"""Each instruction set's folder names, in the order they are tried (the release's own first)."""

TEXTVQA_ANSWERS = "TextVQA/TextVQA_0.5.1_val.json"  # under the image root, as the scripts keep it
OPTION_LETTERS = "ABCDE"  # ScienceQA's problems.json gives the answer as an index into these


def canonical_set(name: str) -> str | None:
    """The instruction set a set name or folder name stands for ("Instructions" -> "Original")."""
    for canonical, folders in INSTRUCTION_SET_FOLDERS.items():
        if name == canonical or name in folders:
            return canonical
    return None


def resolve_instruction_set(root: Path, name: str, tasks: list[str] = ()) -> Path:
    """The folder of instruction set ``name`` under ``root``: a set name tries its known folder
    names in order; any other name is taken as a folder name. A benchmark without instruction
    sets (every task folder directly under ``root``) is read from ``root``. Missing -> ConfigError."""
    root = Path(root)
    tried = INSTRUCTION_SET_FOLDERS.get(name, (name,))
    for folder in tried:
        if (root / folder).is_dir():
            return root / folder
    if tasks and all((root / t).is_dir() for t in tasks):
        return root
    known = ", ".join(INSTRUCTION_SET_FOLDERS)
    raise ConfigError(f"data.instruction_set={name!r}: no folder {' or '.join(tried)} in {root} "
                      f"(give a set name, {known}, or the name of a folder there)")


def eval_file(spec, overrides: dict[str, str]) -> str:
    """The file a task (its benchmark entry ``spec``) is evaluated on: ``data.eval_files`` first."""
    return overrides.get(spec.name, spec.eval_file)


def textvqa_answers_path(setting: str | None, image_root: Path) -> Path | None:
    """Where TextVQA's official answers are read from (None: the records' own answers)."""
    if setting == "record":
        return None
    return Path(setting) if setting else Path(image_root) / TEXTVQA_ANSWERS


# ---------------------------------------------------------------------------------------------
# official ground truth


@dataclass
class OfficialTruth:
    """The reference answers the official scorers use, by task and question id.

    ``answers[task][qid]`` is the tuple of reference answers; ``notes`` collects one
    :class:`DataError` per test record whose own answer disagrees with the official file or that
    the official file lacks (filled by :meth:`apply`).
    """

    answers: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # task -> the file read
    notes: list[DataError] = field(default_factory=list)

    @classmethod
    def read(cls, dc, image_root: Path, tasks: list[str]) -> "OfficialTruth":
        """Read the official files the config names (or finds at their place) for ``tasks``."""
        truth = cls()
        if "TextVQA" in tasks:
            path = textvqa_answers_path(dc.textvqa_answers, image_root)
            if path is not None:
                truth._add("TextVQA", path, _textvqa_answers(path, given=bool(dc.textvqa_answers)))
        if "ScienceQA" in tasks and dc.scienceqa_problems:
            truth._add("ScienceQA", Path(dc.scienceqa_problems), _scienceqa_answers(Path(dc.scienceqa_problems)))
        if "GQA" in tasks and dc.gqa_questions:
            truth._add("GQA", Path(dc.gqa_questions), _gqa_answers(Path(dc.gqa_questions)))
        return truth

    def _add(self, task: str, path: Path, answers: dict[str, tuple[str, ...]]) -> None:
        self.answers[task], self.sources[task] = answers, str(path)

    def apply(self, task: str, samples: list[Sample], label: str) -> list[Sample]:
        """``samples`` with their answers replaced by the official ones; every disagreement or
        missing record becomes a note (TextVQA's single record answer is checked to be among the
        ten; a TextVQA record missing from the answers file is an error, as it cannot be scored)."""
        table = self.answers.get(task)
        if table is None:
            return samples
        source = Path(self.sources[task]).name
        out = []
        for s in samples:
            official = table.get(s.id)
            if official is None:
                if task == "TextVQA":
                    raise DataError(f"question not found in the official answers file {self.sources[task]}",
                                    file=label, record=s.id, field="question_id")
                self.notes.append(DataError(f"not in {source}; scored against its own answer {s.answer!r}",
                                            file=label, record=s.id, field="question_id"))
                out.append(s)
                continue
            agrees = s.answer in official if task == "TextVQA" else s.answers == official
            if not agrees:
                self.notes.append(DataError(f"answer {s.answer!r} disagrees with {source} ({list(official)}); "
                                            f"scored against {source}", file=label, record=s.id, field="answer"))
            # the record's own answer stays: CoIN's GK judge shows it, not the official file's
            out.append(dataclasses.replace(s, answers=official, extra=s.extra | {"record_answer": s.answer}))
        return out


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{what} not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {what}: {exc}", file=str(path)) from None


def _textvqa_answers(path: Path, given: bool) -> dict[str, tuple[str, ...]]:
    """``{"data": [{"question_id", "answers": [10 strings]}, ...]}`` -> qid -> answers."""
    if not given and not path.is_file():
        raise DataError("the official TextVQA answers file is not there: the official score needs the ten "
                        "human answers per question. Give data.textvqa_answers=PATH, or "
                        "data.textvqa_answers=record to score against each record's single answer",
                        file=str(path))
    data = _load_json(path, "TextVQA answers file")
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise DataError("must be an object with a 'data' list", file=str(path), field="data")
    out = {}
    for i, row in enumerate(rows):
        answers = row.get("answers") if isinstance(row, dict) else None
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers) \
                or "question_id" not in row:
            raise DataError("needs a question_id and a non-empty list of answer strings", file=str(path),
                            index=i, field="answers")
        out[str(row["question_id"])] = tuple(answers)
    return out


def _keyed_answers(path: Path, what: str, answer, why: str) -> dict[str, tuple[str, ...]]:
    """An official file that is an object keyed by question id whose values hold an "answer":
    id -> (answer(value["answer"]),); a value ``answer`` refuses (returns None) is an error."""
    data = _load_json(path, what)
    if not isinstance(data, dict):
        raise DataError("must be an object keyed by question id", file=str(path))
    out = {}
    for qid, value in data.items():
        found = answer(value.get("answer")) if isinstance(value, dict) else None
        if found is None:
            raise DataError(why, file=str(path), record=qid, field="answer")
        out[str(qid)] = (found,)
    return out


def _scienceqa_answers(path: Path) -> dict[str, tuple[str, ...]]:
    """problems.json: pid -> {"answer": index into the choices, ...} -> pid -> (letter,)."""
    def letter(index):
        ok = isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(OPTION_LETTERS)
        return OPTION_LETTERS[index] if ok else None

    return _keyed_answers(path, "ScienceQA problems file", letter, "must be an option index 0-4")


def _gqa_answers(path: Path) -> dict[str, tuple[str, ...]]:
    """testdev_balanced_questions.json: qid -> {"answer": ..., ...} -> qid -> (answer,)."""
    return _keyed_answers(path, "GQA questions file", lambda a: a if isinstance(a, str) else None, "must be a string")
