"""Resume: a run killed with SIGKILL in the middle, continued with `mcit run --resume`, ends
with the same matrix as an uninterrupted run of the same seed; completed stages are kept."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_end_to_end import SMALL

from mcit.cli import main
from mcit.report.matrix import load_matrix

THREE = [a for a in SMALL if not a.startswith("data.tasks")] + ["data.tasks=[ImageNet,VQAv2,GQA]", "train.steps_per_task=6"]


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("method", ["lora", "full"])
def test_sigkill_then_resume_gives_the_uninterrupted_matrix(env, method):
    args = [*THREE, f"method.name={method}", f"output_dir={env / 'runs'}"]
    assert main(["run", *args, "name=whole"]) == 0
    whole = load_matrix(env / "runs" / "whole" / "matrix.json")

    cmd = [sys.executable, "-m", "mcit", "run", *args, "name=cut"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    first = env / "runs" / "cut" / "stages" / "01-ImageNet" / "done.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cut = env / "runs" / "cut"
    assert first.exists() and not (cut / "matrix.json").exists()  # killed after stage 1, before the end
    stage1 = first.read_text()

    t0 = time.time()
    assert main(["run", "--resume", str(cut)]) == 0
    second_leg = time.time() - t0
    assert first.read_text() == stage1  # a completed stage is never rewritten
    resumed = load_matrix(cut / "matrix.json")
    assert resumed[1] == whole[1] and resumed[2] == whole[2]
    assert json.loads((cut / "environment.json").read_text())["seed"] == 0
    # The wall time counts the first leg's completed stage (its elapsed_seconds) plus the second leg's
    # own time, which starts after the second leg's start-up: so at least the first, and what it adds
    # beyond the first at most the second leg's whole wall time. (Comparing the total with the second
    # leg alone failed under a parallel test worker, when start-up outlasted a short first stage.)
    first_leg = json.loads(stage1)["elapsed_seconds"]
    seconds = json.loads((cut / "metrics.json").read_text())["seconds"]
    assert first_leg > 0 and seconds > first_leg and seconds - first_leg <= second_leg


def test_rerun_into_a_finished_folder_is_refused_and_resume_needs_a_run_folder(env, capsys):
    args = [*THREE, "data.tasks=[ImageNet]", f"output_dir={env / 'runs'}", "name=r"]
    assert main(["run", *args]) == 0
    assert main(["run", *args]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["run", "--resume", str(env)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["run", "--resume", str(env / "runs" / "r")]) == 0  # all done: just re-reports
