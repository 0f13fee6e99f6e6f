"""A benchmark is a YAML file: its tasks in stream order, each with its scorer, evaluation file,
generation budget and instruction rule. CoIN and coin-mini ship as ``configs/benchmarks/*.yaml``;
``data.benchmark=path/to/my.yaml`` runs a user's own stream with no code::

    name: my-stream
    tasks:
      - {name: Charts, scorer: exact, eval_file: test.json, max_new_tokens: 32}
      - {name: Receipts, scorer: vqa_soft, instruction: last_line}

Task keys: ``name`` (the folder under the data root), ``scorer`` (one of
:data:`SCORER_NAMES`), ``eval_file`` (default ``test.json``), ``max_new_tokens``
(default 128), ``instruction`` (how a question's instruction is found: ``auto``, the default and
CoIN's convention: the last line, or for a one-line text the part before its colon;
``last_line``; ``before_colon``; ``none``). File keys: ``name``, ``description``, ``tasks``,
``generator`` (``coin-mini``: mcit writes the data) and ``official_ground_truth`` (CoIN: answers
read from the release's official files, see :mod:`mcit.data.release`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError
from .schema import INSTRUCTION_RULES

__all__ = ["BUILTIN", "Benchmark", "TaskSpec", "load_benchmark"]

# The scorers a task may name; mcit.eval.scorers implements exactly these (it asserts so). Named
# here, not imported from eval, so that reading a benchmark does not reach down the data flow.
SCORER_NAMES = ("letter", "vqa_soft", "exact", "class", "bbox")
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "configs" / "benchmarks"
BUILTIN = ("coin-mini", "coin")
GENERATORS = ("coin-mini",)
_FILE_KEYS = {"name", "description", "tasks", "generator", "official_ground_truth"}
_TASK_KEYS = {"name", "scorer", "eval_file", "max_new_tokens", "instruction"}


@dataclass(frozen=True)
class TaskSpec:
    """How one task of a benchmark is read, answered and scored."""

    name: str
    scorer: str
    eval_file: str = "test.json"
    max_new_tokens: int = 128
    instruction: str = "auto"


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: Path
    tasks: tuple[TaskSpec, ...]
    generator: str | None = None
    official_ground_truth: bool = False
    description: str = ""

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def spec(self, task: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == task:
                return t
        raise ConfigError(f"data.tasks: {task!r} is not a task of benchmark {self.name!r} ({self.path}); "
                          f"its tasks: {self.task_names}")


def load_benchmark(name_or_path: str) -> Benchmark:
    """A built-in benchmark by name ("coin-mini", "coin") or a benchmark YAML file by path."""
    if name_or_path in BUILTIN:
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
    else:
        path = Path(name_or_path).expanduser()
        if path.suffix not in (".yaml", ".yml"):
            raise ConfigError(f"data.benchmark: {name_or_path!r} is neither a built-in benchmark {list(BUILTIN)} "
                              "nor a benchmark YAML file (.yaml)")
        if not path.is_file():
            raise ConfigError(f"data.benchmark: {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the benchmark: {exc}") from None
    return _parse(data, path)


def _parse(data: Any, path: Path) -> Benchmark:
    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: {why}")

    if not isinstance(data, dict):
        raise fail("top level", "must be a mapping with name and tasks")
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (known: {sorted(_FILE_KEYS)})")
    for key in ("name", "tasks"):
        if key not in data:
            raise fail(key, "missing")
    if not isinstance(data["name"], str) or not data["name"]:
        raise fail("name", "must be a non-empty string")
    if data.get("generator") is not None and data["generator"] not in GENERATORS:
        raise fail("generator", f"{data['generator']!r} is not one of {list(GENERATORS)}")
    tasks = data["tasks"]
    if not isinstance(tasks, list) or not tasks:
        raise fail("tasks", "must be a non-empty list of tasks")
    specs = tuple(_task(t, f"tasks[{i}]", fail) for i, t in enumerate(tasks))
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise fail("tasks", f"{repeated} listed more than once")
    return Benchmark(name=data["name"], path=path, tasks=specs, generator=data.get("generator"),
                     official_ground_truth=bool(data.get("official_ground_truth", False)),
                     description=str(data.get("description") or ""))


def _task(t: Any, where: str, fail) -> TaskSpec:
    if not isinstance(t, dict):
        raise fail(where, "must be a mapping with name and scorer")
    unknown = sorted(set(t) - _TASK_KEYS)
    if unknown:
        raise fail(f"{where}.{unknown[0]}", f"unknown key (known: {sorted(_TASK_KEYS)})")
    for key in ("name", "scorer"):
        if key not in t:
            raise fail(f"{where}.{key}", "missing")
    name = t["name"]
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise fail(f"{where}.name", f"{name!r} must be a folder name")
    if t["scorer"] not in SCORER_NAMES:
        raise fail(f"{where}.scorer", f"unknown scorer {t['scorer']!r} (known: {sorted(SCORER_NAMES)})")
    spec = TaskSpec(name=name, scorer=t["scorer"])
    eval_file = t.get("eval_file", spec.eval_file)
    if not isinstance(eval_file, str) or not eval_file.endswith(".json") or "/" in eval_file or "\\" in eval_file:
        raise fail(f"{where}.eval_file", f"{eval_file!r} must be a .json file name in the task's folder")
    budget = t.get("max_new_tokens", spec.max_new_tokens)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise fail(f"{where}.max_new_tokens", f"{budget!r} must be a positive integer")
    rule = t.get("instruction", spec.instruction)
    if rule not in INSTRUCTION_RULES:
        raise fail(f"{where}.instruction", f"{rule!r} is not one of {list(INSTRUCTION_RULES)}")
    return TaskSpec(name=name, scorer=t["scorer"], eval_file=eval_file, max_new_tokens=budget, instruction=rule)
