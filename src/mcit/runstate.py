"""Whether a run folder is running, finished, failed or was stopped: ``state.json``.

The main process writes ``{"state": "running", "pid", "host", "since"}`` when a run starts or
resumes, ``"done"`` when it finishes, and ``"failed"`` (with the error) or ``"interrupted"``
when it stops on an exception or Ctrl-C. A process killed outright (SIGKILL, out of memory, the
machine going down) writes nothing: its state stays "running" while its process is gone, and
`mcit ls` reads that as "stopped". Folders from before this file existed have no state.
"""
from __future__ import annotations

import datetime as _dt
import os
import socket
from pathlib import Path

from .rundir import load_json, save_json

STATE_FILE = "state.json"


def write_state(run_dir: Path, state: str, error: str | None = None) -> None:
    record = {"state": state, "pid": os.getpid(), "host": socket.gethostname(),
              "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if error is not None:
        record["error"] = error
    save_json(Path(run_dir) / STATE_FILE, record)


def read_state(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATE_FILE
    return load_json(path) if path.is_file() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def live_state(run_dir: Path) -> dict | None:
    """The recorded state, "running" turned into "stopped" when its process is gone. A run on
    another machine cannot be checked from here: it stays "running"."""
    state = read_state(run_dir)
    if state and state.get("state") == "running" and state.get("host") == socket.gethostname() \
            and not _alive(int(state.get("pid", -1))):
        state = {**state, "state": "stopped"}
    return state
