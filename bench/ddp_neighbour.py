"""Training-step time with one CPU-bound neighbour process against without, for two data-parallel
processes of one thread each (`torchrun --nproc_per_node 2 -m mcit run ...`, gloo, DDP), beside
one process at all threads (what `mcit run` does alone on an idle machine).

Why: one process's OpenMP threads meet at a barrier inside every operator, so when a neighbour
holds a core the threads wait for each other and the best a single process can do is the
one-thread step (bench/threads_neighbour.py). Two processes meet once per step (the gradient
all-reduce), so the scheduler's fair share (2 of the 3 busy processes' time) reaches training.

The step is mcit's default LoRA step (default-size tiny LLaVA, fused LoRA, fused AdamW); the DDP
ranks each take half of the batch (8 of 16). Rounds alternate quiet and busy phases (the
neighbour: `while True: pass`, started and stopped by rank 0), each phase settling --settle
seconds untimed before --steps timed steps. Prints one JSON object: median step per layout and
phase, busy/quiet ratios, and the DDP steps against the one-process quiet step.

    python bench/ddp_neighbour.py [--rounds 4] [--steps 8] [--settle 1.5]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def phases(rounds: int) -> list[str]:
    return [p for r in range(rounds) for p in (("quiet", "busy") if r % 2 == 0 else ("busy", "quiet"))]


def measure(step, args, barrier=lambda: None, lead: bool = True) -> dict[str, list[float]]:
    """Step times (ms) per phase; `lead` starts and stops the neighbour, `barrier` keeps ranks in step."""
    times: dict[str, list[float]] = {"quiet": [], "busy": []}
    for phase in phases(args.rounds):
        barrier()
        neighbour = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
                     if phase == "busy" and lead else None)
        try:
            end = time.perf_counter() + args.settle
            while time.perf_counter() < end:
                step()
            barrier()
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                times[phase].append((time.perf_counter() - start) * 1000)
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
    return times


def worker(args, ddp: bool) -> None:
    import torch

    from mcit.config import load_config
    from mcit.fit import adamw
    from mcit.methods import build_method
    from mcit.threads import usable_cores

    sys.path.insert(0, str(HERE))
    from _tiny import tiny_model_and_batch

    barrier, lead = (lambda: None), True
    if ddp:
        import torch.distributed as dist
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
        rank, size = dist.get_rank(), dist.get_world_size()
        barrier, lead = dist.barrier, rank == 0
    else:
        torch.set_num_threads(len(usable_cores()))
    torch.manual_seed(0)
    base, _, batch = tiny_model_and_batch(16, 48)
    if ddp:
        share = 16 // size
        batch = {k: v[rank * share:(rank + 1) * share] for k, v in batch.items()}
    cfg = load_config(None, ["method.name=lora"])
    method = build_method(cfg.method)
    model = method.setup(base, cfg).train()
    optimizer = adamw(method.param_groups(model, cfg), 0.0)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if ddp else model

    def step() -> None:
        wrapped(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    times = measure(step, args, barrier, lead)
    if lead:
        print(json.dumps(times), flush=True)
    if ddp:
        from mcit.distributed import end_process_group
        end_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per phase per round")
    ap.add_argument("--settle", type=float, default=1.5, help="untimed seconds of steps before the timed ones")
    ap.add_argument("--worker", choices=("ddp", "single"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args, args.worker == "ddp")

    common = ["--rounds", str(args.rounds), "--steps", str(args.steps), "--settle", str(args.settle)]
    launches = {
        "ddp_2x1_thread": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), __file__, "--worker", "ddp", *common],
        "one_process_all_threads": [sys.executable, __file__, "--worker", "single", *common],
    }
    times = {}
    for name, cmd in launches.items():
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, check=True).stdout
        times[name] = json.loads(out.strip().splitlines()[-1])
    ms = {k: {ph: round(statistics.median(v), 1) for ph, v in d.items()} for k, d in times.items()}
    one = ms["one_process_all_threads"]
    ddp = ms["ddp_2x1_thread"]
    print(json.dumps({
        "ms_per_step": ms,
        "busy_over_quiet": {k: round(m["busy"] / m["quiet"], 2) for k, m in ms.items()},
        "ddp_busy_over_one_process_quiet": round(ddp["busy"] / one["quiet"], 2),
        "ddp_quiet_over_one_process_quiet": round(ddp["quiet"] / one["quiet"], 2),
        "timed_steps_per_layout_per_phase": args.rounds * args.steps,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
