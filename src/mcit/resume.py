"""What a run folder must be to be continued (`mcit run --resume RUN`, `mcit compare`), checked
before torch is imported and before anything is written, so that a refused folder is left as it
was:

- it was created by `mcit run` (config.yaml and run.json, see mcit.rundir) and config.yaml was
  not edited since (the keys that differ are named);
- its completed stages are whole: every done.json reads, none follows a stage that is not
  complete, every file a done.json lists has the sha256 it recorded, no stage folder is foreign;
- what continuing reads is there: zero_shot.json (if the run has a zero-shot row), and the
  in-task checkpoint of the stage to continue, whose files match the hashes in its state.json.

A folder that passes either is finished (every stage complete and metrics.json written: nothing
is rewritten) or is continued after its last completed stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from .rundir import (CONFIG_FILE, ENVIRONMENT_FILE, RunError, completed_stages, creation_leftovers, load_json,
                     load_run_config, stage_dir)

ZERO_SHOT_FILE = "zero_shot.json"
RESULT_FILE = "metrics.json"  # written once every stage is complete: a finished run


@dataclass
class Resumable:
    cfg: Any  # the run's own config (config.yaml, checked against run.json)
    stages: list[str]  # the stage names of the run's plan (environment.json)
    done: int  # completed stages
    finished: bool  # every stage complete and the results written


def check_resumable(run_dir: str | Path) -> Resumable:
    """The run folder's config and state if it can be continued as it is; RunError otherwise,
    naming the file at fault and how to go on."""
    run_dir = Path(run_dir)
    _check_is_run_folder(run_dir)
    cfg = load_run_config(run_dir)
    names, tasks = _plan(run_dir)
    done = completed_stages(run_dir, names)
    if done and cfg.eval.zero_shot:
        _check_zero_shot(run_dir, tasks)
    if len(done) < len(names):
        found = ckpt.find(stage_dir(run_dir, len(done), names[len(done)]))
        if found is not None:
            ckpt.verify(found)
    finished = bool(names) and len(done) == len(names) and (run_dir / RESULT_FILE).is_file()
    return Resumable(cfg=cfg, stages=names, done=len(done), finished=finished)


def _check_is_run_folder(run_dir: Path) -> None:
    rerun = "rerun the original `mcit run` command (it starts the run anew)"
    if not run_dir.exists():
        leftovers = creation_leftovers(run_dir)
        if leftovers:
            raise RunError(f"{run_dir} does not exist: the run was killed while its folder was being created, "
                           f"so there is nothing to continue; {rerun}. The leftover {leftovers[0]} may be deleted")
        raise RunError(f"{run_dir} is not a run folder (it does not exist): if a run was killed before creating it, "
                       f"nothing of it was kept; {rerun}")
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run folder (it is a file)")
    if (run_dir / CONFIG_FILE).is_file():
        return
    if not any(run_dir.iterdir()):
        raise RunError(f"{run_dir} is not a run folder (no {CONFIG_FILE}; the folder is empty): if a run was killed "
                       f"while starting, nothing of it was kept; {rerun}. This empty folder may be deleted")
    raise RunError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")


def _plan(run_dir: Path) -> tuple[list[str], list[str]]:
    """(stage names, tasks) recorded in environment.json, written before the first stage starts."""
    environment = run_dir / ENVIRONMENT_FILE
    if not environment.is_file():
        stages = run_dir / "stages"
        if stages.is_dir() and any(stages.iterdir()):
            raise RunError(f"{environment} is missing, but the run has stage folders: the folder was damaged; "
                           "start a new run")
        return [], []  # killed before the model was ready: nothing was trained yet
    record = load_json(environment)
    names, tasks = (record.get("stages"), record.get("tasks")) if isinstance(record, dict) else (None, None)
    if not _strings(names) or not _strings(tasks):
        raise RunError(f"{environment} is damaged (no list of stages and tasks); start a new run")
    return names, tasks


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_zero_shot(run_dir: Path, tasks: list[str]) -> None:
    """The zero-shot row the matrix is finished with (stage 1's done.json records its hash too)."""
    path = run_dir / ZERO_SHOT_FILE
    if not path.is_file():
        raise RunError(f"{path} is missing: the run's zero-shot row cannot be restored; put it back, or start a "
                       "new run")
    record = load_json(path)
    missing = [t for t in tasks if not isinstance(record, dict) or not isinstance(record.get(t), (int, float))]
    if missing:
        raise RunError(f"{path} has no score for {missing}; put the original file back, or start a new run")


def finished_message(run_dir: Path, state: Resumable) -> str:
    judge = getattr(state.cfg, "judge", None)
    gk = ("" if judge is None or judge.backend == "none" or (run_dir / "metrics_gk.json").is_file()
          else f"; its General Knowledge view is missing: `mcit judge {run_dir}` makes it")
    return (f"{run_dir} is finished: all {len(state.stages)} stage(s) are complete and its results are in "
            f"{RESULT_FILE} and matrix.*; nothing to resume, nothing was changed{gk}")
