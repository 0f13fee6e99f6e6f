"""Training-step time with one CPU-bound neighbour process against without, per thread policy.

Policies (each in its own worker process, as OMP_WAIT_POLICY is read when torch loads):
  threads_1        torch.set_num_threads(1)
  threads_all      all usable cores (torch's default)
  threads_all_passive  all cores, OMP_WAIT_POLICY=PASSIVE (waiting threads sleep instead of spinning)
  auto             train.threads=0: mcit.threads.ThreadGovernor, ticked once per step as mcit.fit does
  auto_passive     auto with OMP_WAIT_POLICY=PASSIVE
The step is mcit's default LoRA step (default-size tiny LLaVA, fused LoRA, fused AdamW). Rounds
alternate quiet and busy phases (the neighbour: `while True: pass` in another process, started
and stopped by this script); within a phase every policy runs in turn, the order rotating. Each
turn first steps untimed for --settle seconds (auto re-reads the load every 2 s), then times
--steps steps. Reported: median step per policy and phase, busy/quiet ratios, the busy step against
the quiet one-thread step (the floor for one process on 2 cores: its threads meet at a barrier in every
operator, so with the neighbour on a core busy/quiet cannot go below the quiet speed-up of 2 threads
over 1; two processes do better, bench/ddp_neighbour.py), and the load other processes put on these cores
during the quiet phases (the machine may not be idle).
Prints one JSON object.

    python bench/threads_neighbour.py [--rounds 5] [--steps 4] [--settle 4.5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLICIES = {"threads_1": ("1", {}), "threads_all": ("all", {}),
            "threads_all_passive": ("all", {"OMP_WAIT_POLICY": "PASSIVE"}), "auto": ("auto", {}),
            "auto_passive": ("auto", {"OMP_WAIT_POLICY": "PASSIVE"})}


def worker(policy: str) -> None:
    """Reads `run <steps> <settle>` lines; answers each with one JSON line of step times (ms)."""
    import torch

    from mcit.config import load_config
    from mcit.fit import adamw
    from mcit.methods import build_method
    from mcit.threads import ThreadGovernor, usable_cores

    sys.path.insert(0, str(HERE))
    from _tiny import tiny_model_and_batch

    torch.manual_seed(0)
    base, _, batch = tiny_model_and_batch(16, 48)
    cfg = load_config(None, ["method.name=lora"])
    method = build_method(cfg.method)
    model = method.setup(base, cfg).train()
    optimizer = adamw(method.param_groups(model, cfg), 0.0)
    setting = {"1": 1, "all": len(usable_cores()), "auto": 0}[policy]
    governor = ThreadGovernor(setting)
    governor.start()

    def step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        governor.tick()

    step()
    print("ready", flush=True)
    for line in sys.stdin:
        _, steps, settle = line.split()
        end = time.perf_counter() + float(settle)
        while time.perf_counter() < end:
            step()
        times, threads = [], set()
        for _ in range(int(steps)):
            threads.add(torch.get_num_threads())
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1000)
        print(json.dumps({"ms": times, "threads": sorted(threads)}), flush=True)


def start_worker(policy: str) -> subprocess.Popen:
    threads_setting, env = POLICIES[policy]
    proc = subprocess.Popen([sys.executable, __file__, "--worker", threads_setting], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=os.environ | env)
    return proc


def others_load(seconds: float) -> float:
    """Cores' worth of CPU that processes other than this script's use, over `seconds` (idle workers)."""
    from mcit.threads import busy_seconds, usable_cores
    cores = usable_cores()
    before, t0 = busy_seconds(cores), time.perf_counter()
    time.sleep(seconds)
    after = busy_seconds(cores)
    return None if before is None else round((after - before) / (time.perf_counter() - t0), 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per policy per phase per round")
    # auto re-reads the load every 2 s over the last 2 s: a sample straddling the neighbour's start or
    # stop can keep the previous thread count for up to 4 s, so settle longer than that
    ap.add_argument("--settle", type=float, default=4.5, help="untimed seconds of steps before the timed ones")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)

    workers = {p: start_worker(p) for p in POLICIES}
    for proc in workers.values():
        assert proc.stdout.readline().strip() == "ready"
    background = [others_load(1.0)]
    times = {p: {"quiet": [], "busy": []} for p in POLICIES}
    threads_seen = {p: {"quiet": set(), "busy": set()} for p in POLICIES}
    keys = list(POLICIES)
    try:
        for r in range(args.rounds):
            for phase in (("quiet", "busy") if r % 2 == 0 else ("busy", "quiet")):
                neighbour = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
                             if phase == "busy" else None)
                try:
                    for p in keys[r % len(keys):] + keys[:r % len(keys)]:
                        workers[p].stdin.write(f"run {args.steps} {args.settle}\n")
                        workers[p].stdin.flush()
                        answer = json.loads(workers[p].stdout.readline())
                        times[p][phase] += answer["ms"]
                        threads_seen[p][phase].update(answer["threads"])
                finally:
                    if neighbour is not None:
                        neighbour.kill()
                        neighbour.wait()
            background.append(others_load(0.5))
    finally:
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()

    ms = {p: {ph: round(statistics.median(v), 1) for ph, v in d.items()} for p, d in times.items()}
    best_quiet = min(m["quiet"] for m in ms.values())
    print(json.dumps({
        "ms_per_step": ms,
        "busy_over_quiet": {p: round(m["busy"] / m["quiet"], 2) for p, m in ms.items()},
        "busy_over_best_quiet": {p: round(m["busy"] / best_quiet, 2) for p, m in ms.items()},
        # the floor for one process: its threads wait for each other at every operator, so with a neighbour
        # on one core no thread policy's busy step beats the quiet step on one core fewer (here: one thread)
        "busy_over_quiet_one_core_fewer": {p: round(m["busy"] / ms["threads_1"]["quiet"], 2) for p, m in ms.items()}
        if "threads_1" in ms else None,
        "quiet_all_threads_speedup_over_one": round(ms["threads_1"]["quiet"] / ms["threads_all"]["quiet"], 2)
        if "threads_1" in ms and "threads_all" in ms else None,
        "threads_at_timed_steps": {p: {ph: sorted(s) for ph, s in d.items()} for p, d in threads_seen.items()},
        "background_load_cores": background,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "rounds": args.rounds, "timed_steps_per_policy_per_phase": args.rounds * args.steps,
    }, indent=2))


if __name__ == "__main__":
    main()
