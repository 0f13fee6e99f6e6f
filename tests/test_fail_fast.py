"""A config error is answered before torch, transformers and PEFT are imported. A fresh process is
the point (in the test session they are long imported), so each case spawns `python -c`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("torch", "transformers", "peft", "accelerate")
PROBE = """
import json, sys
from mcit.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def _mcit_in_fresh_process(tmp_path, *argv):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
           "MCIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("argv, mentions", [
    (["run", "train.lrr=1"], ["train.lrr", "did you mean 'train.lr'"]),
    (["run", "train.lr=abc"], ["train.lr"]),
    (["run", "judge.backend=bogus"], ["judge.backend", "bogus"]),
    (["run", "output_dir=afile"], ["output_dir"]),
    (["run", "--resume", "nonexist"], ["nonexist"]),
    (["compare", "--methods", "lora,nosuch"], ["nosuch"]),
    (["tune", "--method", "lora", "--grid", "nokey.x=1,2"], ["nokey.x"]),
], ids=["typo", "bad-value", "judge-backend", "output-dir-file", "resume-missing", "compare-method", "tune-grid"])
def test_a_config_error_is_reported_before_torch_transformers_and_peft_load(tmp_path, argv, mentions):
    (tmp_path / "afile").write_text("x\n")
    result, stderr = _mcit_in_fresh_process(tmp_path, *argv)
    assert result == {"code": 2, "heavy": []}, stderr
    assert stderr.startswith("mcit: error: ") and len(stderr.strip().splitlines()) == 1
    for text in mentions:
        assert text in stderr


def test_the_probe_sees_heavy_imports_when_they_happen(tmp_path):
    """The same probe on a command that gets past the config (it fails later, on a missing model
    folder) reports torch: the check above can fail."""
    result, stderr = _mcit_in_fresh_process(tmp_path, "run", "model.name=no_such_model_folder", "judge.backend=none")
    assert result["code"] == 2 and "torch" in result["heavy"], stderr
