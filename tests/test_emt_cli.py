"""`mcit emt` on a checkpoint folder and on a run's stage folder, its user errors, and EMT
tracking during a run (emt_curve.jsonl / emt_curve.png), on very small models."""
import json

import pytest
import torch
from conftest import save_tiny_checkpoint
from safetensors.torch import load_file
from test_end_to_end import SMALL, _run, cache  # noqa: F401  (cache is a fixture)

from mcit.cli import main
from mcit.config import ConfigError, load_config
from mcit.emt.command import load_target
from mcit.emt.curve import read_curve, read_probe
from mcit.report.matrix import load_matrix

OUTCOMES = ("correct", "wrong_label", "hallucinated")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("emt_cli") / "tiny")


def _check_outputs(out, datasets, n):
    record = json.loads((out / "emt.json").read_text())
    assert record["protocol"]["decider"] == "rule"
    assert list(record["datasets"]) == datasets
    for name, r in record["datasets"].items():
        shares = r["mllm"]["shares"]
        assert set(shares) == set(OUTCOMES) and sum(shares.values()) == pytest.approx(100.0)
        assert r["mllm"]["accuracy"] == shares["correct"] and r["mllm"]["decider"] == "rule"
        assert r["n_test"] == n and sum(r["mllm"]["counts"].values()) == n
        assert 0 <= r["probe"]["accuracy"] <= 100 and r["zero_shot"] is None  # a LLaVA tower has no text tower
        assert r["gap"] == pytest.approx(r["probe"]["accuracy"] - r["mllm"]["accuracy"])
        answers = [json.loads(line) for line in (out / r["answers"]).read_text().splitlines()]
        assert len(answers) == n and {a["outcome"] for a in answers} <= set(OUTCOMES)
        assert all(a["decider"] == "rule" and a["label"] in r["classes"] for a in answers)
    md = (out / "emt.md").read_text()
    assert "decider `rule`" in md and all(f"| {name} |" in md for name in datasets)
    return record


def test_emt_on_a_checkpoint_folder(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["emt", str(ckpt), "--datasets", "digits,coin-shapes", "--limit", "8", "--probe-train", "40",
                 "--out", str(out), "--batch-size", "4", "--max-new-tokens", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "MLLM acc" in printed and "probe acc" in printed and "decider: rule" in printed
    assert "digits" in printed and "coin-shapes" in printed
    record = _check_outputs(out, ["digits", "coin-shapes"], 8)
    assert record["model"]["kind"] == "checkpoint" and record["limit"] == 8
    assert record["datasets"]["digits"]["probe"]["n_train"] == 40

    # the lenient rule accepts a superset of the strict rule's correct answers; its name goes with its numbers
    assert main(["emt", str(ckpt), "--datasets", "digits,coin-shapes", "--limit", "8", "--probe-train", "40",
                 "--out", str(tmp_path / "lenient"), "--batch-size", "4", "--max-new-tokens", "4",
                 "--decider", "rule-lenient"]) == 0
    lenient = json.loads((tmp_path / "lenient" / "emt.json").read_text())
    assert lenient["protocol"]["decider"] == "rule-lenient" and lenient["protocol"]["max_extra_words"] is None
    for name, r in lenient["datasets"].items():
        assert r["mllm"]["decider"] == "rule-lenient"
        assert r["mllm"]["accuracy"] >= record["datasets"][name]["mllm"]["accuracy"]


def test_emt_on_a_run_stage_rebuilds_the_runs_model(cache, capsys):  # noqa: F811
    run = _run(cache, "one", "data.tasks=[ImageNet]")
    stage = run / "stages" / "01-ImageNet"
    assert main(["emt", str(stage), "--datasets", "coin-objects", "--limit", "8", "--probe-train", "16",
                 "--max-new-tokens", "4"]) == 0
    assert "coin-objects" in capsys.readouterr().out
    assert main(["emt", str(run), "--datasets", "digits"]) == 2  # the run folder itself: name a stage
    assert "is a run folder; give one of its stages: 00-base, 01-ImageNet" in capsys.readouterr().err
    record = _check_outputs(stage / "emt", ["coin-objects"], 8)  # default output: beside the stage's model
    env = json.loads((run / "environment.json").read_text())
    assert record["model"].items() >= {"kind": "run-stage", "method": "lora", "stage": "01-ImageNet",
                                       "base_checkpoint": env["checkpoint"]}.items()

    # the model answering is the stage's: the trained adapter weights, as saved, on the base checkpoint
    model, _, _ = load_target(stage)
    saved = load_file(str(stage / "model" / "adapter_model.safetensors"))
    live = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert live and any(v.abs().sum() > 0 for v in live.values())  # B starts at zero: it was trained
    for key, value in saved.items():
        if "lora_B" in key:
            match = [v for k, v in live.items() if k.replace(".default", "") == key]
            assert len(match) == 1 and torch.equal(match[0], value)

    # 00-base has no model/: the run's base checkpoint itself
    assert main(["emt", str(run / "stages" / "00-base"), "--datasets", "coin-objects", "--limit", "8",
                 "--probe-train", "16", "--max-new-tokens", "4", "--out", str(cache / "base")]) == 0
    assert json.loads((cache / "base" / "emt.json").read_text())["model"]["stage"] == "00-base"


@pytest.mark.parametrize("args, message", [
    (["--datasets", "digitz"], "unknown kind 'digitz'; did you mean 'digits'?"),
    (["--datasets", "mnist"], "needs a root folder"),
    (["--datasets", "digits,digits"], "given twice"),
    (["--datasets", "digits", "--limit", "0"], "--limit must be at least 1"),
])
def test_emt_user_errors_exit_2_without_traceback(ckpt, tmp_path, capsys, args, message):
    assert main(["emt", str(ckpt), *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_emt_missing_or_wrong_folder_exits_2(tmp_path, capsys):
    assert main(["emt", str(tmp_path / "nope"), "--datasets", "digits"]) == 2
    assert "folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["emt", str(tmp_path / "empty"), "--datasets", "digits"]) == 2
    err = capsys.readouterr().err
    assert "neither a checkpoint folder" in err and "Traceback" not in err
    assert main(["emt", str(tmp_path / "empty"), "--datasets", "digits", "--decider", "gpt"]) == 2
    assert ("EMT decider 'gpt' is not available; choose one of ['rule', 'rule-lenient', 'openai', 'local']"
            in capsys.readouterr().err)


def test_emt_tracking_during_a_run_writes_the_curve(cache):  # noqa: F811
    # 2 tasks x 3 steps = 6 global steps; every 2 -> points at 0, 2, 4, 6, for each of 2 sets
    run = _run(cache, "curve", "emt.every_steps=2", "emt.datasets=[digits,coin-shapes]", "emt.limit=6",
               "emt.batch_size=3", "eval.zero_shot=false")
    records = read_curve(run / "emt_curve.jsonl")
    assert [(r["step"], r["dataset"]) for r in records] == [
        (s, d) for s in (0, 2, 4, 6) for d in ("digits", "coin-shapes")]
    assert [r["stage"] for r in records] == [1] * 4 + [2] * 4  # step 2 in stage 1; 4 and 6 in stage 2
    assert {r["task"] for r in records if r["stage"] == 2} == {"VQAv2"}
    assert all(r["stage_start"] == (0 if r["stage"] == 1 else 3) for r in records)
    for r in records:
        assert r["n"] == 6 and r["decider"] == "rule"
        assert sum(r["shares"].values()) == pytest.approx(100.0) and r["accuracy"] == r["shares"]["correct"]
    assert (run / "emt_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(run / "config.yaml", []).emt.every_steps == 2  # saved with the run
    # the reference line: the untouched tower's probe, the number `mcit emt` gives for the same sets and
    # seed (LoRA leaves the vision tower as it was, so the stage's tower is the base's)
    probe = read_probe(run)
    assert list(probe) == ["digits", "coin-shapes"]
    assert main(["emt", str(run / "stages" / "01-ImageNet"), "--datasets", "digits,coin-shapes", "--limit", "6",
                 "--max-new-tokens", "4", "--seed", str(load_config(run / "config.yaml", []).seed)]) == 0
    emt = json.loads((run / "stages" / "01-ImageNet" / "emt" / "emt.json").read_text())
    assert {k: v["probe"]["accuracy"] for k, v in emt["datasets"].items()} == probe
    plain = _run(cache, "plain", "eval.zero_shot=false")  # tracking only looks: training is unchanged
    assert load_matrix(plain / "matrix.json")[1] == load_matrix(run / "matrix.json")[1]
    assert (plain / "stages" / "02-VQAv2" / "predictions" / "ImageNet.jsonl").read_text() == \
        (run / "stages" / "02-VQAv2" / "predictions" / "ImageNet.jsonl").read_text()

    # cut off in stage 2: resuming redoes the stage and its points, giving the same curve
    (run / "stages" / "02-VQAv2" / "done.json").unlink()
    assert main(["run", "--resume", str(run)]) == 0
    assert read_curve(run / "emt_curve.jsonl") == records


def test_emt_tracking_config_errors(cache, capsys):  # noqa: F811
    assert main(["run", *SMALL, f"output_dir={cache / 'runs'}", "emt.every_steps=2"]) == 2
    assert "emt.datasets is empty" in capsys.readouterr().err
    assert main(["run", *SMALL, f"output_dir={cache / 'runs'}", "emt.every_steps=2", "emt.datasets=[cifar10]"]) == 2
    assert "needs a root folder" in capsys.readouterr().err
    assert main(["run", *SMALL, f"output_dir={cache / 'runs'}", "emt.every_steps=2", "emt.datasets=[digits]",
                 "emt.decider=judge"]) == 2
    assert "emt.decider: must be one of rule, rule-lenient, openai, local, got judge" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="did you mean 'emt.every_steps'"):
        load_config(None, ["emt.every_step=3"])


def test_projector_method_trains_and_saves_only_the_projector(cache, capsys):  # noqa: F811
    run = _run(cache, "proj", "method.name=projector", "data.tasks=[ImageNet]", "eval.zero_shot=false")
    stage = run / "stages" / "01-ImageNet"
    saved = load_file(str(stage / "model" / "projector.safetensors"))
    assert saved and all(k.split(".").count("multi_modal_projector") == 1 for k in saved)
    env = json.loads((run / "environment.json").read_text())
    assert env["parameters"]["trainable"] == sum(v.numel() for v in saved.values())

    model, _, info = load_target(stage)  # the stage's projector on the base checkpoint
    live = dict(model.named_parameters())
    assert info["method"] == "projector" and all(torch.equal(live[k], v) for k, v in saved.items())
    assert main(["emt", str(stage), "--datasets", "coin-colors", "--limit", "6", "--probe-train", "12",
                 "--max-new-tokens", "4"]) == 0
    _check_outputs(stage / "emt", ["coin-colors"], 6)
