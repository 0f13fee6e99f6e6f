"""Kill anywhere: a small run with in-task checkpoints, killed with SIGKILL at 10 random moments
(seeded) and continued each time as the CLI says (`--resume RUN`, or the original command when
it was killed before its folder existed), ends with exactly what an uninterrupted run writes:
matrix.json byte for byte, metrics.json (wall-clock aside), every prediction, every stage's
weights and training statistics.

The moments are spread over an uninterrupted run of the same command, timed: its start-up (until
it reports its run folder, after the model is loaded), its work (the rest) and when each stage
completed. The first leg is killed at a random moment of its start-up; each next one, once it
has reported its own start-up (start-up times vary too much on a shared machine to be added
blindly), at a random moment of the first 30% of the work it has left (from its last completed
stage to the end, on the uninterrupted timeline; 30%, because a resumed leg skips some of that
work, e.g. the zero-shot row). So kills land in training, checkpoint saves, stage saves,
evaluation and the finish alike; a leg that finishes before its moment ends the series.
"""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from badinput import invoke
from test_end_to_end import SMALL

# Two tasks, 6 optimizer steps each, a checkpoint every 2: every kind of file a run writes.
ARGS = [a for a in SMALL if not a.startswith(("data.tasks", "train.steps_per_task"))] + [
    "data.tasks=[ImageNet,VQAv2]", "train.steps_per_task=6", "train.checkpoint_every=2"]
KILLS = 10
WALL_CLOCK = ("seconds",)
STARTED = "run folder:"  # the line a run prints once its model is loaded and its folder made


def _child_env(cache: Path) -> dict:
    env = os.environ.copy()
    src = str(Path(__file__).resolve().parents[1] / "src")
    # one thread: a loaded 2-core machine makes torch's thread pool spin (4x the CPU time)
    env.update(MCIT_CACHE=str(cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([src, env.get("PYTHONPATH", "")]))
    return env


class _Leg:
    """`python -m mcit argv` in a child process; `started` is set when it reports its run folder."""

    def __init__(self, argv: list[str], env: dict):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "mcit", *argv], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.started, self.lines = threading.Event(), []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # drained to the end, so the child never blocks on the pipe
            self.lines.append(line)
            if line.startswith(STARTED):
                self.started.set()
        self.started.set()  # ended (or killed) before: nothing more to wait for

    def finish(self) -> float:
        code = self.proc.wait()
        self.reader.join()
        assert code == 0, "".join(self.lines[-40:])
        return time.monotonic() - self.t0

    def kill_after(self, delay: float) -> bool:
        """SIGKILL after ``delay`` seconds unless it ended before; whether the kill landed."""
        try:
            self.proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.reader.join()
            return True
        self.finish()
        return False


def _done_stages(run: Path) -> int:
    return len(list(run.glob("stages/*/done.json")))


def _uninterrupted(argv: list[str], env: dict, run: Path) -> tuple[float, float, list[float]]:
    """(start-up seconds, work seconds, seconds into the work at which each stage completed) of an
    uninterrupted run."""
    leg = _Leg(argv, env)
    leg.started.wait()
    started, completed = time.monotonic(), []
    while leg.proc.poll() is None:
        if _done_stages(run) > len(completed):
            completed.append(time.monotonic() - started)
        time.sleep(0.02)
    work = leg.finish() - (started - leg.t0)
    return started - leg.t0, work, completed


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
    startup, work, completed = _uninterrupted(["run", *ARGS, f"output_dir={runs}", "name=whole"], env, whole)

    cut = runs / "cut"
    original = ["run", *ARGS, f"output_dir={runs}", "name=cut"]
    rng = random.Random(13)
    landed, before_folder, legs = 0, 0, []
    for i in range(KILLS):
        if cut.exists():
            argv = ["run", "--resume", str(cut)]
        else:  # killed before its folder existed: the CLI says to rerun the original command
            if i:
                code, _, err = invoke(["run", "--resume", str(cut)])
                assert code == 2 and "rerun the original" in err and "Traceback" not in err, err
            argv = original
        done = _done_stages(cut)
        leg = _Leg(argv, env)
        if i == 0:
            delay = rng.uniform(0, startup)
        else:
            leg.started.wait()
            delay = rng.uniform(0, 0.3 * (work - (completed[done - 1] if done else 0.0)))
        hit = leg.kill_after(delay)
        legs.append(f"{done} stage(s) done, {delay:.1f}s{'' if hit else ' (finished first)'}")
        landed += hit
        before_folder += hit and not cut.exists()
        if not hit:
            break  # the run finished before this kill's moment came
    if not (cut / "metrics.json").exists():
        _Leg(["run", "--resume", str(cut)] if cut.exists() else original, env).finish()
    print(f"kill-anywhere: uninterrupted start-up {startup:.1f}s + work {work:.1f}s; {landed} kills landed, "
          f"{before_folder} before the run folder existed; legs: {'; '.join(legs)}")

    assert landed > before_folder  # at least one leg was cut after its folder existed, and resumed
    assert (cut / "matrix.json").read_bytes() == (whole / "matrix.json").read_bytes()
    assert _without_wall_clock(cut / "metrics.json") == _without_wall_clock(whole / "metrics.json")
    for pattern in ("stages/*/predictions/*.jsonl", "stages/*/model/*", "zero_shot.json"):
        assert _digest(cut, pattern) == _digest(whole, pattern), pattern
        assert _digest(cut, pattern), pattern
    assert _train_stats(cut) == _train_stats(whole)
    # nothing half-done is left: no checkpoint, no hidden temporary file or folder
    leftovers = [p for p in cut.rglob("*") if p.name == "checkpoint" or p.name.startswith(".")]
    assert not leftovers and not list(runs.glob(".cut.*"))
