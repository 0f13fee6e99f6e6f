"""The bad-input catalogue's harness (tests/test_badinput_*.py).

Every entry runs the CLI in-process on one malformed input and asserts what a user must get:
a non-zero exit, a message naming the file / record / field, no Python traceback, and no file
that existed before changed (sha256 of every file under the watched folders, before and after).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import traceback
from pathlib import Path
from typing import Iterable, Sequence

from mcit.cli import main


def snapshot(*roots: str | Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (a file root is hashed itself), by path."""
    hashes: dict[str, str] = {}
    for root in map(Path, roots):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for path in files:
            hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def invoke(argv: Sequence[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``mcit argv`` run in-process. An exception escaping main()
    is what a user would see as a traceback: it is written to stderr as one."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - the point is to see it
            err.write(traceback.format_exc())
            code = -1
    return code, out.getvalue(), err.getvalue()


def assert_rejected(argv: Sequence[str], mentions: Iterable[str] = (), watch: Iterable[str | Path] = (),
                    code: int | None = None) -> str:
    """Run ``mcit argv`` and assert a clean refusal: exit != 0 (or == ``code``), no traceback, every
    string of ``mentions`` in the message (case-insensitive), and every file that existed under
    ``watch`` unchanged. Returns stderr."""
    watch = list(watch)
    before = snapshot(*watch)
    status, out, err = invoke(argv)
    after = snapshot(*watch)
    assert "Traceback" not in err and "Traceback" not in out, f"traceback for {list(argv)}:\n{err}"
    assert status != 0, f"accepted (exit 0): {list(argv)}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    if code is not None:
        assert status == code, f"exit {status}, expected {code}: {err}"
    for text in mentions:
        assert text.lower() in err.lower(), f"message does not mention {text!r}: {err!r}"
    changed = sorted(p for p, h in before.items() if after.get(p) != h)
    assert not changed, f"files changed or removed by a refused command: {changed}"
    return err


def rerecord(path: str | Path) -> None:
    """Record ``path`` (a file of a completed stage, edited by a test) in its stage's done.json, as
    if the run had written it so: the edit then reaches the reader under test instead of being
    refused as a damaged stage file."""
    from mcit.rundir import file_sha256, load_json, save_json

    path = Path(path)
    stage = next(p for p in path.parents if (p / "done.json").is_file())
    done = load_json(stage / "done.json")
    done["files"][path.relative_to(stage.parent.parent).as_posix()] = file_sha256(path)
    save_json(stage / "done.json", done)


@contextlib.contextmanager
def tiny_run(tmp_path_factory, label: str):
    """One real run folder made by a tiny `mcit run` (its own cache), for cases that damage copies of it."""
    import pytest

    from test_end_to_end import SMALL

    root = tmp_path_factory.mktemp(label)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCIT_CACHE", str(root / "cache"))
        code, _, err = invoke(["run", *SMALL, f"output_dir={root / 'runs'}", "name=lora"])
        assert code == 0, err
        yield root / "runs" / "lora"
