"""Seconds from starting `mcit` to its answer on a config error, against a bare `python -c pass`.

Each case is a fresh process (the point is what the process imports before it answers); the
figure is the median of --repeat runs of wall time and of the process's CPU time (user + system,
which a loaded machine inflates less). Prints one JSON object.

    python bench/cli_startup.py                 # typo, bad value, judge.backend=bogus, missing config
    python bench/cli_startup.py --repeat 5
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "typo": ["run", "train.lrr=1"],
    "bad_value": ["run", "train.lr=abc"],
    "judge_backend_bogus": ["run", "judge.backend=bogus"],
    "missing_config": ["run", "nonexistent.yaml"],
}


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the child, exit code) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode


def _median(argv: list[str], env: dict[str, str], repeat: int) -> dict:
    runs = [_timed(argv, env) for _ in range(repeat)]
    return {"wall_s": round(statistics.median(r[0] for r in runs), 3),
            "cpu_s": round(statistics.median(r[1] for r in runs), 3), "exit": runs[0][2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (the median is reported)")
    args = ap.parse_args()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1"}
    baseline = _median([sys.executable, "-c", "pass"], env, args.repeat)
    result = {"python_c_pass": baseline}
    for name, argv in CASES.items():
        case = _median([sys.executable, "-m", "mcit", *argv], env, args.repeat)
        case["wall_ratio_to_python"] = round(case["wall_s"] / max(baseline["wall_s"], 1e-6), 1)
        result[name] = case
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
