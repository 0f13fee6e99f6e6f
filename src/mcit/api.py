"""The Python API: run a stream from a notebook and read a finished run back as objects.

    import mcit
    run = mcit.run(data={"tasks": ["ImageNet", "VQAv2"]}, train={"steps_per_task": 50}, name="nb")
    run.matrix, run.metrics["BWT"], run.stages[0].predictions("ImageNet")[0]["prediction"]
    mcit.load_run("runs/nb").metrics_gk

``mcit.run`` takes what ``mcit run`` takes: a YAML file (or a RunConfig), then overrides, here
as keyword arguments: a section as a dict (``train={"lr": 3e-4}``), a top-level field
(``seed=1``), or a dotted key (``**{"train.lr": 3e-4}``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping

from .config import RunConfig, config_to_dict, load_config
from .rundir import CONFIG_FILE, ENVIRONMENT_FILE, RunError, load_json, load_stage_info, stage_dir

__all__ = ["Run", "Stage", "load_run", "run"]


def _overrides(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """``key=value`` override strings; JSON is YAML, so every value parses back as given."""
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _overrides(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}={json.dumps(value)}"


def run(config: str | Path | RunConfig | None = None, **overrides: Any) -> "Run":
    """Run a continual stream (as ``mcit run`` does) and return the finished run.

    ``config``: a YAML file, a :class:`~mcit.config.RunConfig`, or None for the built-in
    defaults. Keyword arguments override it (see the module docstring). Raises
    :class:`~mcit.config.ConfigError` for a bad setting before anything runs.
    """
    from .train import run_stream  # torch, transformers: only when a run is asked for

    if isinstance(config, RunConfig):
        cfg = load_config(None, [*_overrides(config_to_dict(config)), *_overrides(overrides)])
    else:
        cfg = load_config(config, list(_overrides(overrides)))
    result = run_stream(cfg)
    return load_run(result["run_dir"])


@dataclass(frozen=True)
class Stage:
    """One training stage of a run: its folder and its ``done.json`` record."""

    index: int  # 0-based
    task: str  # the task trained (``multitask`` for the joint stage)
    dir: Path
    info: dict[str, Any]  # done.json: train statistics, scores, method log

    @property
    def scores(self) -> dict[str, float]:
        """Task -> score (0-100) of the tasks evaluated after this stage."""
        return dict(self.info.get("scores", {}))

    def predictions(self, task: str) -> list[dict[str, Any]]:
        """Every saved prediction record of ``task`` after this stage (id, text, answers,
        raw output, prediction, score)."""
        path = self.dir / "predictions" / f"{task}.jsonl"
        if not path.is_file():
            raise RunError(f"{path}: no predictions of {task!r} after stage {self.index + 1}")
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class Run:
    """A run folder read back: configuration, accuracy matrix, metrics, stages."""

    dir: Path
    config: RunConfig
    stages: list[Stage] = field(default_factory=list)

    def _json(self, name: str) -> dict[str, Any] | None:
        path = self.dir / name
        return load_json(path) if path.is_file() else None

    @cached_property
    def _matrix(self) -> dict[str, Any]:
        return self._json("matrix.json") or self._json("matrix_partial.json") or {}

    @property
    def finished(self) -> bool:
        return (self.dir / "metrics.json").is_file()

    @property
    def tasks(self) -> list[str]:
        return list(self._matrix.get("tasks") or (self._json("multitask.json") or {}).get("scores", {}))

    @property
    def matrix(self) -> list[list[float | None]]:
        """Row t = scores after stage t (None where a task was not evaluated)."""
        return self._matrix.get("matrix", [])

    @property
    def zero_shot(self) -> list[float | None] | None:
        return self._matrix.get("zero_shot")

    @property
    def metrics(self) -> dict[str, Any]:
        """Instruction-following metrics (metrics.json): MFT, MFN, MAA, BWT, Forgetting, ..."""
        return self._json("metrics.json") or {}

    @property
    def metrics_gk(self) -> dict[str, Any] | None:
        """The General Knowledge view (metrics_gk.json), None when no judge ran."""
        return self._json("metrics_gk.json")

    def __repr__(self) -> str:
        state = "finished" if self.finished else f"{len(self.stages)} stage(s) done"
        return f"Run({str(self.dir)!r}, {state}, tasks={self.tasks})"


def load_run(path: str | Path) -> Run:
    """A run folder (finished or not) as a :class:`Run`, with its stages completed in order."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise RunError(f"{path} is not a run folder (no {CONFIG_FILE})")
    names = (load_json(path / ENVIRONMENT_FILE) if (path / ENVIRONMENT_FILE).is_file() else {}).get("stages", [])
    stages = []
    for t, name in enumerate(names):
        info = load_stage_info(stage_dir(path, t, name))
        if info is None:
            break  # stages complete in order; the rest have not run yet
        stages.append(Stage(index=t, task=name, dir=stage_dir(path, t, name), info=info))
    return Run(dir=path, config=load_config(path / CONFIG_FILE), stages=stages)
