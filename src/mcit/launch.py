"""`mcit run --processes N`: the same run as N data-parallel processes on this machine, started by
torch's elastic launcher (what `torchrun --standalone` runs), so a user does not have to know it.
The checks run before torch is imported.

Why offer it: on a CPU shared with a busy neighbour, one process's OpenMP threads meet at a barrier
inside every operator and its step slows to its one-thread time (1.6x its quiet step on 2 cores);
processes of one thread each meet once per step, at the gradient all-reduce, and lose far less
(README, "Benchmarks"). The processes split each global batch (train.batch_size stays the global
batch), so they train the same model up to float rounding, not bit for bit: compare methods
within one layout.
"""
from __future__ import annotations

import logging
import os
import sys
import uuid
from contextlib import contextmanager
from typing import Iterator

from .config import ConfigError

# Set by torchrun, `accelerate launch` and mpirun in the processes they start.
LAUNCHED_MARKERS = ("WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE")


def per_process_batch(batch_size: int, num_processes: int, what: str = "train.batch_size") -> int:
    if batch_size % num_processes:
        raise ConfigError(f"{what}={batch_size} is the global batch and must be divisible by the "
                          f"{num_processes} processes (each gets batch_size / num_processes samples)")
    return batch_size // num_processes


def check_processes(processes: int, batch_size: int, environ=os.environ) -> None:
    """Refuses what would fail only after the launcher started N processes."""
    if processes < 1:
        raise ConfigError(f"--processes {processes}: give 1 or more processes")
    launched = [k for k in LAUNCHED_MARKERS if k in environ]
    if processes > 1 and launched:
        raise ConfigError(f"--processes {processes}: this process was already started by a launcher ({launched[0]} "
                          "is set); give the process count to the launcher, or run `mcit run --processes N` alone")
    per_process_batch(batch_size, processes)


def threads_per_process(processes: int, cores: int, environ=os.environ) -> str:
    """OMP_NUM_THREADS for each process: the user's if set, else the usable cores shared out (at
    least 1; torchrun alone would give every process 1 thread, whatever the machine)."""
    return environ.get("OMP_NUM_THREADS") or str(max(1, cores // processes))


def worker_command(run_args: list[str]) -> list[str]:
    """What each process runs: `mcit run` with the same arguments (without --processes)."""
    return [sys.executable, "-m", "mcit", "run", *run_args]


def run_processes(processes: int, run_args: list[str], cores: int) -> int:
    """Starts the processes through torch's launcher in this process (what `torchrun --standalone`
    does: a local rendezvous on a free port, no restarts) and waits; the command's exit code is the
    first failed process's. The launcher's own log and its traceback of a failed process are
    silenced: each process prints its own error, and a user error (exit 2) stays a one-line message."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    command = worker_command(run_args)
    with _environment(OMP_NUM_THREADS=threads_per_process(processes, cores)), _launcher_quiet():
        try:
            elastic_launch(config, command[0])(*command[1:])
        except SignalException as exc:  # Ctrl-C or a kill reached the launcher; it stopped the processes
            raise KeyboardInterrupt from exc
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            code = failure.exitcode
            if code == 2:  # a user error: the process printed it
                return 2
            how = f"was stopped by signal {-code}" if code < 0 else f"exited with code {code}"
            print(f"mcit: error: process {rank} of {processes} {how}", file=sys.stderr)
            return code if code > 0 else 128 - code
    return 0


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """os.environ with `values` while the processes start (they inherit it), then as it was."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _launcher_quiet() -> Iterator[None]:
    """torch's elastic launcher logs every start, stop and failure at WARNING and above, each of its
    loggers with its own level: raised above CRITICAL while it runs."""
    loggers = [logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict)
               if n.startswith("torch.distributed")] + [logging.getLogger("torch.distributed")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
