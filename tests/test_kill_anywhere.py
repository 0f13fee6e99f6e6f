"""Kill anywhere: a small run with in-task checkpoints, killed with SIGKILL at 10 random moments
(seeded) and continued each time as the CLI says (`--resume RUN`, or the original command when
it was killed before its folder existed), ends with exactly what an uninterrupted run writes:
matrix.json byte for byte, metrics.json (wall-clock aside), every prediction, every stage's
weights and training statistics.

The moments come from an uninterrupted run of the same command, timed: its start-up (until the
run folder appears) and its work (the rest). The first leg is killed at a random moment of the
start-up (before the folder exists); the next ones at sorted random points of the work, each leg
after its own start-up plus the gap to its point, so that kills land in training, checkpoint
saves, stage saves, evaluation and the finish alike.
"""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from badinput import invoke
from test_end_to_end import SMALL

# Two tasks, 6 optimizer steps each, a checkpoint every 2: every kind of file a run writes.
ARGS = [a for a in SMALL if not a.startswith(("data.tasks", "train.steps_per_task"))] + [
    "data.tasks=[ImageNet,VQAv2]", "train.steps_per_task=6", "train.checkpoint_every=2"]
KILLS = 10
WALL_CLOCK = ("seconds",)


def _child_env(cache: Path) -> dict:
    env = os.environ.copy()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env.update(MCIT_CACHE=str(cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([src, env.get("PYTHONPATH", "")]))
    return env


def _start(argv: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mcit", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _uninterrupted(argv: list[str], env: dict, run_dir: Path) -> tuple[float, float]:
    """(seconds until the run folder appears, total seconds) of an uninterrupted run."""
    t0 = time.monotonic()
    proc = _start(argv, env)
    appeared = None
    while proc.poll() is None:
        if appeared is None and (run_dir / "config.yaml").exists():
            appeared = time.monotonic() - t0
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read().decode()
    total = time.monotonic() - t0
    return (appeared or total), total


def _digest(run: Path, pattern: str) -> dict[str, str]:
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.glob(pattern))}


def _without_wall_clock(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in WALL_CLOCK}


def _train_stats(run: Path) -> list:
    return [json.loads(p.read_text())["train"] for p in sorted(run.glob("stages/*/done.json"))]


def test_killed_at_ten_random_moments_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MCIT_CACHE", str(cache))
    env = _child_env(cache)
    runs = tmp_path / "runs"
    # The base model is trained once (into the cache) first, so both runs below start alike.
    code, _, err = invoke(["run", *ARGS, "data.tasks=[ImageNet]", "train.steps_per_task=1", "eval.zero_shot=false",
                           f"output_dir={runs}", "name=warm-up"])
    assert code == 0, err

    whole = runs / "whole"
    startup, total = _uninterrupted(["run", *ARGS, f"output_dir={runs}", "name=whole"], env, whole)

    cut = runs / "cut"
    original = ["run", *ARGS, f"output_dir={runs}", "name=cut"]
    rng = random.Random(13)
    points = sorted(rng.uniform(0, total - startup) for _ in range(KILLS - 1))
    delays = [rng.uniform(0, startup)] + [startup + b - a for a, b in zip([0.0, *points], points)]
    landed, before_folder = 0, 0
    for i, delay in enumerate(delays):
        if cut.exists():
            argv = ["run", "--resume", str(cut)]
        else:  # killed before its folder existed: the CLI says to rerun the original command
            if i:
                code, _, err = invoke(["run", "--resume", str(cut)])
                assert code == 2 and "rerun the original" in err and "Traceback" not in err, err
            argv = original
        proc = _start(argv, env)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            landed += 1
            before_folder += not cut.exists()
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()
        break  # the run finished before this kill's moment came
    if not (cut / "metrics.json").exists():
        proc = _start(original if not cut.exists() else ["run", "--resume", str(cut)], env)
        assert proc.wait() == 0, proc.stderr.read().decode()
    print(f"kill-anywhere: uninterrupted {total:.1f}s (start-up {startup:.1f}s); {landed} kills landed, "
          f"{before_folder} before the run folder existed")

    assert landed >= KILLS // 2  # the moments fall inside the legs: the run was really cut up
    assert (cut / "matrix.json").read_bytes() == (whole / "matrix.json").read_bytes()
    assert _without_wall_clock(cut / "metrics.json") == _without_wall_clock(whole / "metrics.json")
    for pattern in ("stages/*/predictions/*.jsonl", "stages/*/model/*", "zero_shot.json"):
        assert _digest(cut, pattern) == _digest(whole, pattern), pattern
        assert _digest(cut, pattern), pattern
    assert _train_stats(cut) == _train_stats(whole)
    # nothing half-done is left: no checkpoint, no hidden temporary file or folder
    leftovers = [p for p in cut.rglob("*") if p.name == "checkpoint" or p.name.startswith(".")]
    assert not leftovers and not list(runs.glob(".cut.*"))
