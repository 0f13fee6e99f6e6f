"""How many threads torch uses for training: fixed (train.threads=N) or adapted to load (0).

Why: OpenMP threads meet at a barrier after every parallel op, so when another process holds
one of the cores, one thread waits for a descheduled sibling at every op: on a 2-core machine
with one CPU-bound neighbour a 2-thread step went from 167 to 556 ms, a 1-thread step stayed at
222 ms (issue 15). `auto` measures what the other processes use of this process's cores
(machine-wide busy time from /proc/stat minus this process's own CPU time, over a few seconds)
and uses the cores left free, at least one. A task stage's results do not depend on the count:
torch's CPU kernels give the same numbers with 1 or 2 threads here (checked in tests/test_threads.py).
The vision-encoder stage's do (its last bits), so it runs at a fixed count (recipes/base_model.py).
Written by hand: neither torch nor Accelerate adapts its thread count to load.
Light module (torch is imported where threads are set): `mcit run --processes` counts cores before
torch is loaded.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

PROC_STAT = Path("/proc/stat")
CHECK_EVERY_S = 2.0  # how often auto re-reads the load: a few steps, so a neighbour costs little


def usable_cores() -> list[int]:
    """The CPU ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows): all of them
        return list(range(os.cpu_count() or 1))


def thread_cap(cores: int) -> int:
    """Auto's ceiling: the usable cores, or fewer if OMP_NUM_THREADS asks for fewer (a user's or
    a scheduler's explicit limit is kept)."""
    try:
        return max(1, min(cores, int(os.environ.get("OMP_NUM_THREADS", cores))))
    except ValueError:
        return cores


def busy_seconds(cores: list[int], stat: Path = PROC_STAT) -> float | None:
    """Non-idle CPU seconds so far on `cores`, all processes together; None without /proc/stat."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    ticks = 0
    for line in lines:
        parts = line.split()
        if parts and parts[0] in wanted:
            values = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
            ticks += sum(values) - values[3] - values[4]
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


SPARE = 0.25  # a core counts as free only if others use less than this much of it


def threads_for(cores: int, others_busy: float) -> int:
    """The cores other processes leave free, at least 1, at most `cores`. Leans to fewer threads:
    one thread too many on a busy core costs several times the step (every op waits at a
    barrier: 10x measured here), one too few on an idle core at most the parallel speed-up."""
    return max(1, min(cores, math.floor(cores - others_busy + SPARE)))


BUSY_HINT = ("mcit: another process is using this machine's cores; training drops to {threads} thread(s), about "
             "its one-thread speed. Two processes of one thread each lose far less beside a busy neighbour: "
             "`mcit run --processes 2 ...` (float rounding differs from one process: compare methods within "
             "one layout)")
_hinted = False  # the hint is given once per process, not once per stage


class ThreadGovernor:
    """Sets torch's thread count at the start and, in auto mode (setting 0), re-checks the load
    every CHECK_EVERY_S seconds from `tick()`, called once per optimizer step. `hint` (a printer;
    the main process of a one-process run passes one) hears once when the load first takes cores away."""

    def __init__(self, setting: int, stat: Path = PROC_STAT, clock=time.monotonic,
                 hint: Callable[[str], None] | None = None):
        self.setting, self.stat, self.clock, self.hint = setting, stat, clock, hint
        self.cores = usable_cores()
        self.cap = thread_cap(len(self.cores))
        self.used: set[int] = set()
        self._last: tuple[float, float, float] | None = None  # (wall, machine busy, own cpu)

    def start(self) -> int:
        threads = self.setting or self.cap
        self._apply(threads)
        self._last = self._sample()
        return threads

    def tick(self) -> None:
        if self.setting or self._last is None:
            return
        now = self.clock()
        if now - self._last[0] < CHECK_EVERY_S:
            return
        sample = self._sample()
        if sample is None:
            self._last = None  # no /proc/stat: stay at all cores
            return
        wall, busy, own = (a - b for a, b in zip(sample, self._last))
        self._last = sample
        others = max(0.0, (busy - own) / wall) if wall > 0 else 0.0
        threads = min(self.cap, threads_for(len(self.cores), others))
        self._apply(threads)
        global _hinted
        if threads < self.cap and self.hint is not None and not _hinted:
            _hinted = True
            self.hint(BUSY_HINT.format(threads=threads))

    def _sample(self) -> tuple[float, float, float] | None:
        busy = busy_seconds(self.cores, self.stat)
        return None if busy is None else (self.clock(), busy, own_cpu_seconds())

    def _apply(self, threads: int) -> None:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        self.used.add(threads)


def describe(setting: int) -> dict:
    """environment.json's record: the setting, the cores this process may use, the threads each
    stage starts with (auto then follows the load) and OpenMP's wait policy."""
    cores = len(usable_cores())
    return {"setting": setting or "auto", "usable_cores": cores, "threads_at_start": setting or thread_cap(cores),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
