"""CPU cost of validating a config (mcit.config.load_config + mcit.preflight.check_run_settings: every
range, kind and cross-field rule, the benchmark's task names, the output folder) against the cost of
the imports a run needs anyway (mcit.train: torch, transformers, PEFT, Accelerate).

Each variant runs in a fresh interpreter, so nothing is cached between them; the variants alternate
over the rounds, so load from other processes on a shared machine hits both alike. CPU seconds of
the child (user + system), not wall time. Prints one JSON object: the medians and their ratio.

    python bench/config_check.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
VALIDATE = ("from mcit.config import load_config; from mcit.preflight import check_run_settings; "
            "check_run_settings(load_config(None, ['train.lr=3e-4', 'output_dir=/tmp/mcit-bench-runs']))")
HEAVY_IMPORTS = "import mcit.train"
BASELINE = "pass"  # the interpreter's own start-up, subtracted from both


def child_cpu_seconds(code: str) -> float:
    """User + system CPU seconds of a fresh `python -c code`."""
    env = dict(os.environ, PYTHONPATH=SRC, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {code}")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    times: dict[str, list[float]] = {"baseline": [], "validate": [], "heavy_imports": []}
    for _ in range(args.rounds):
        for name, code in (("baseline", BASELINE), ("validate", VALIDATE), ("heavy_imports", HEAVY_IMPORTS)):
            times[name].append(child_cpu_seconds(code))
    median = {k: statistics.median(v) for k, v in times.items()}
    validate = median["validate"] - median["baseline"]
    heavy = median["heavy_imports"] - median["baseline"]
    print(json.dumps({"rounds": args.rounds, "median_cpu_seconds": median,
                      "validate_over_heavy_imports": round(validate / heavy, 4)}, indent=2))


if __name__ == "__main__":
    main()
