"""GPU check for the training engines (issue 17, part 4): on a machine with one CUDA GPU, in a few
minutes, a small model built from config trains a 2-task stream (coin-mini, the built-in tiny
LLaVA in bf16) three ways and one JSON verdict is printed:

* `single`: `mcit run`, one process, no process group (the reference);
* `ddp`:    `torchrun --nproc_per_node 1 ... train.engine=ddp` (DDP over NCCL, world size 1);
* `fsdp`:   `torchrun --nproc_per_node 1 ... train.engine=fsdp` (FSDP2 `fully_shard` over NCCL with
            the bf16 mixed-precision policy: the GPU-only code path, with one shard);
* `deepspeed-zero2`, `deepspeed-zero3` when the deepspeed package is installed:
            `torchrun --nproc_per_node 1 ... train.engine=deepspeed-zero2` (and -zero3): the
            DeepSpeed engine Accelerate builds from mcit's DeepSpeed config, bf16; without the
            package they are listed as skipped.

Passes when every run ends with exit 0, the runs record the engine they used, and every other
run's accuracy matrix is within one test answer of the single-process one (bf16 sums in another
order may flip a greedy answer). With no GPU it prints a "skipped" verdict and exits 0.

    python bench/gpu_check.py [--work DIR] [--keep]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEEPSPEED = ("deepspeed-zero2", "deepspeed-zero3")  # run when the deepspeed package is installed
TEST_PER_TASK = 12
SETTINGS = [  # a small model from config and a short 2-task stream: minutes, not hours
    "data.tasks=[ImageNet,VQAv2]", "data.train_per_task=64", f"data.test_per_task={TEST_PER_TASK}",
    "data.pretrain_size=64", "model.dtype=bfloat16", "model.base_steps=20", "train.steps_per_task=20",
    "train.batch_size=8", "eval.batch_size=12", "judge.backend=none", "method.name=lora",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _commands(out: Path) -> dict[str, list[str]]:
    py = sys.executable
    run = ["-m", "mcit", "run", *SETTINGS, f"output_dir={out}"]
    torchrun = [py, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1"]
    commands = {
        "single": [py, *run, "name=single"],
        "ddp": [*torchrun, "--master_port", str(_free_port()), *run, "train.engine=ddp", "name=ddp"],
        "fsdp": [*torchrun, "--master_port", str(_free_port()), *run, "train.engine=fsdp", "name=fsdp"],
    }
    if importlib.util.find_spec("deepspeed") is not None:
        for engine in DEEPSPEED:
            commands[engine] = [*torchrun, "--master_port", str(_free_port()), *run, f"train.engine={engine}",
                                f"name={engine}"]
    return commands


def _run(name: str, cmd: list[str], out: Path, env: dict) -> dict:
    started = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    record = {"exit": done.returncode, "seconds": round(time.time() - started, 1)}
    folder = out / name
    if done.returncode == 0:
        record["matrix"] = json.loads((folder / "matrix.json").read_text())["matrix"]
        record["engine"] = json.loads((folder / "environment.json").read_text()).get("engine")
    else:
        lines = [x for x in done.stderr.splitlines() if "error" in x.lower()]
        record["error"] = (lines[-1] if lines else done.stderr[-300:]).strip()
    return record


def _max_difference(a: list, b: list) -> float:
    return max((abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb) if x is not None and y is not None),
               default=0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="folder for the runs and the model cache (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"verdict": "skipped", "reason": "no CUDA GPU on this machine: the GPU paths (NCCL, "
                          "bf16 mixed precision, DeepSpeed) cannot be checked here"}))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="mcit-gpu-check-"))
    env = os.environ | {"MCIT_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT / "src"),
                        "HF_HOME": str(work / "hf")}  # no user accelerate config
    started = time.time()
    runs = {name: _run(name, cmd, work / "runs", env) for name, cmd in _commands(work / "runs").items()}
    one_answer = 100.0 / TEST_PER_TASK
    problems = [f"{n}: exit {r['exit']}: {r.get('error')}" for n, r in runs.items() if r["exit"] != 0]
    for name in [n for n in runs if n != "single"]:
        if runs[name]["exit"] == 0 and runs["single"]["exit"] == 0:
            runs[name]["max_difference_from_single"] = diff = _max_difference(runs[name]["matrix"],
                                                                              runs["single"]["matrix"])
            if diff > one_answer + 1e-9:
                problems.append(f"{name}: matrix differs from one process by {diff:.1f} points "
                                f"(more than one answer, {one_answer:.1f})")
            if runs[name]["engine"] != name:
                problems.append(f"{name}: the run recorded engine {runs[name]['engine']!r}")
    skipped = {} if importlib.util.find_spec("deepspeed") else {e: "deepspeed is not installed" for e in DEEPSPEED}
    verdict = {"verdict": "fail" if problems else "pass", "problems": problems, "skipped": skipped,
               "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "seconds": round(time.time() - started, 1), "runs": runs}
    print(json.dumps(verdict))
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
