"""train.compile and train.threads in a real (tiny) run: the model's forward goes through
torch.compile when asked, the first step's time is in each stage's record, the run's results do
not depend on either setting, and bad values are refused (catalogue style)."""
import json

import pytest
import torch
from test_end_to_end import SMALL

from mcit import fit
from mcit.cli import main


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _run(tmp_path, name, *extra):
    assert main(["run", *SMALL, "judge.backend=none", f"output_dir={tmp_path / 'runs'}", f"name={name}", *extra]) == 0
    return tmp_path / "runs" / name


def _train_records(run):
    done = [d / "done.json" for d in sorted((run / "stages").glob("0*"))]
    return [json.loads(f.read_text())["train"] for f in done if f.is_file()]  # stage 00-base has none


def test_compile_goes_through_torch_compile_and_reports_the_first_step(cache, monkeypatch):
    compiled = []

    def eager_compile(model):  # the wiring under test; inductor's 30 s compile is bench/lora_step.py's
        compiled.append(model)
        return torch.compile(model, backend="eager")

    monkeypatch.setattr(fit, "_compiled", eager_compile)
    plain = _run(cache, "plain", "train.threads=1")
    assert not compiled
    run = _run(cache, "compiled", "train.compile=true", "train.threads=2")
    assert len(compiled) == 2  # one per stage
    records = _train_records(run)
    assert records and all(r["first_step_seconds_with_compile"] > 0 for r in records)
    assert all("first_step_seconds_with_compile" not in r for r in _train_records(plain))
    assert (json.loads((run / "matrix.json").read_text()) == json.loads((plain / "matrix.json").read_text()))
    threads = json.loads((run / "environment.json").read_text())["threads"]
    assert threads["setting"] == 2 and threads["compile"] is True
