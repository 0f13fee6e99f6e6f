"""The Python API: mcit.run, mcit.load_run, mcit.__version__, and the README's example."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_checkpoint

import mcit

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = {"train": {"steps_per_task": 2, "batch_size": 4}, "eval": {"batch_size": 8, "max_new_tokens": 4},
        "judge": {"backend": "none"}}


def test_version_and_lazy_import():
    assert re.match(r"^\d+\.\d+", mcit.__version__)
    # importing mcit does not pull torch in (a fresh interpreter: this one has it already)
    code = "import sys, mcit; print('torch' in sys.modules, mcit.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", mcit.__version__]
    with pytest.raises(AttributeError):
        mcit.no_such_thing


def test_run_and_load_run(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    run = mcit.run(model={"name": str(ckpt)}, data={"tasks": ["ImageNet", "VQAv2"], "train_per_task": 8,
                   "test_per_task": 4, "pretrain_size": 8, "image_size": 32},
                   output_dir=str(tmp_path / "runs"), name="api", **FAST, **{"train.lr": 2e-3})
    assert run.finished and run.tasks == ["ImageNet", "VQAv2"]
    assert run.config.train.lr == 2e-3 and run.config.train.steps_per_task == 2
    assert [s.task for s in run.stages] == ["ImageNet", "VQAv2"]
    assert len(run.matrix) == 2 and run.matrix[0][1] is None and run.matrix[1][0] == run.stages[1].scores["ImageNet"]
    assert set(run.metrics) >= {"MFT", "MFN", "BWT"} and run.metrics["scoring"] == "corrected"
    preds = run.stages[1].predictions("VQAv2")
    assert len(preds) == 4 and {"prediction", "score", "answers"} <= set(preds[0])
    again = mcit.load_run(tmp_path / "runs" / "api")
    assert again.matrix == run.matrix and again.metrics == run.metrics
    with pytest.raises(mcit.ConfigError, match="train.lerning_rate"):
        mcit.run(**{"train.lerning_rate": 1.0})
    with pytest.raises(Exception, match="not a run folder"):
        mcit.load_run(tmp_path)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python API block, run as written with the tiny settings put in front."""
    block = re.search(r"```python\n(# the Python API.*?)```", README.read_text(), re.S)
    assert block, "README has no Python API example"
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    small = {"model": {"name": str(ckpt)}, "data": {"train_per_task": 8, "test_per_task": 4, "pretrain_size": 8,
             "image_size": 32}, **FAST}
    import mcit.api as api

    real = api.run
    monkeypatch.setattr(mcit, "run", lambda config=None, **kw: real(config, **_merge(kw, small)), raising=False)
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    assert namespace["result"].finished


def _merge(a: dict, b: dict) -> dict:
    """``a`` with ``b`` laid over it, section by section (the tiny settings win)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out
