"""The whole loop on a very small model: `mcit run` over a 2-task stream, the run folder it
writes, reproducibility from the seed, and user errors without tracebacks."""
import json

import pytest

from conftest import save_tiny_checkpoint

from mcit.cli import DEFAULT_CONFIG, main
from mcit.config import RunConfig, load_config
from mcit.report.matrix import load_matrix

SMALL = [
    "data.tasks=[ImageNet,VQAv2]", "data.train_per_task=24", "data.test_per_task=6", "data.pretrain_size=24",
    "data.image_size=32", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "model.intermediate_size=64", "model.vision_hidden_size=32", "model.vision_layers=1", "model.vocab_size=400",
    "model.vision_steps=2", "model.vision_images=16", "model.vision_batch_size=8",
    "model.base_steps=3", "model.base_batch_size=8", "train.steps_per_task=3", "train.batch_size=8",
    "train.grad_accum=2", "eval.batch_size=4", "eval.max_new_tokens=4", "judge.backend=none",
]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _run(tmp_path, name, *extra):
    code = main(["run", *SMALL, f"output_dir={tmp_path / 'runs'}", f"name={name}", *extra])
    assert code == 0
    return tmp_path / "runs" / name


def test_two_task_run_writes_the_run_folder_and_is_reproducible(cache, capsys):
    run = _run(cache, "a", "judge.backend=embedding")
    out = capsys.readouterr().out
    assert "MFT" in out and "BWT" in out and "ImageNet" in out

    for f in ["config.yaml", "environment.json", "metrics.json", "matrix.json", "matrix.csv", "matrix.md", "matrix.png",
              "metrics_gk.json", "matrix_gk.json"]:  # both views: instruction following, general knowledge
        assert (run / f).is_file(), f
    assert not (run / "matrix_partial.json").exists()
    env = json.loads((run / "environment.json").read_text())
    assert env["seed"] == 0 and env["effective_batch"] == 16 and env["device"] == "cpu"
    assert load_config(run / "config.yaml", []).train.grad_accum == 2  # resolved config reloads

    tasks, matrix, zero_shot, metrics = load_matrix(run / "matrix.json")
    assert tasks == ["ImageNet", "VQAv2"]
    assert matrix[0][1] is None and all(v is not None for v in (matrix[0][0], matrix[1][0], matrix[1][1]))
    assert len(zero_shot) == 2 and set(metrics) >= {"MFT", "MFN", "MAA", "BWT", "Forgetting", "FWT"}

    for stage in ["01-ImageNet", "02-VQAv2"]:
        assert (run / "stages" / stage / "model" / "adapter_model.safetensors").is_file()
        assert (run / "stages" / stage / "done.json").is_file()
    preds = (run / "stages" / "02-VQAv2" / "predictions" / "ImageNet.jsonl").read_text().splitlines()
    assert len(preds) == 6 and {"id", "prediction", "answers", "score"} <= set(json.loads(preds[0]))
    assert not list(run.rglob("*.bin")) and not list(run.rglob("*.pt"))  # safetensors only

    again = _run(cache, "b")  # same seed, cached base model and data: same numbers, same answers
    assert load_matrix(again / "matrix.json")[1] == matrix
    assert (again / "stages" / "02-VQAv2" / "predictions" / "ImageNet.jsonl").read_text() == "\n".join(preds) + "\n"


def test_full_fine_tuning_saves_full_weights(cache):
    run = _run(cache, "full", "method.name=full", "data.tasks=[ImageNet]", "eval.zero_shot=false")
    assert (run / "stages" / "01-ImageNet" / "model" / "model.safetensors").is_file()


def test_unknown_key_is_a_clean_error(cache, capsys):
    code = main(["run", "train.leanring_rate=0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "did you mean 'train.lr'" in err and "Traceback" not in err


def test_unknown_method_and_missing_config_are_clean_errors(cache, capsys):
    assert main(["run", *SMALL, "method.name=nope", f"output_dir={cache / 'runs'}"]) == 2
    assert "unknown method.name 'nope'" in capsys.readouterr().err
    assert main(["run", str(cache / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_default_yaml_documents_exactly_the_defaults():
    text = DEFAULT_CONFIG.read_text()
    assert load_config(DEFAULT_CONFIG, []) == RunConfig()
    assert "lr: 0.001  # peak learning rate" in text  # fields carry their documentation


def test_local_checkpoint_folder_runs_through_the_same_loop(cache, tmp_path):
    """model.name=<folder>: the real-checkpoint path (AutoModelForImageTextToText + AutoProcessor),
    here with a tiny random LLaVA saved by save_pretrained, as a downloaded one would be."""
    ckpt = save_tiny_checkpoint(tmp_path / "my-llava")
    run = _run(cache, "local", f"model.name={ckpt}", "data.tasks=[VQAv2]", "eval.zero_shot=false")
    env = json.loads((run / "environment.json").read_text())
    assert env["checkpoint"] == str(ckpt)
    assert not list((cache / "cache").glob("tiny-llava-*"))  # no base stage was trained
    assert (run / "stages" / "01-VQAv2" / "model" / "adapter_model.safetensors").is_file()
