"""A CoIN-format release on disk (written by the coin-mini generator into a temp folder):
`mcit data check` and `mcit run` accept a clean one and refuse a broken one, naming every
defect, with a non-zero exit, no traceback and no run folder."""
import json
import shutil

import pytest
from conftest import save_tiny_checkpoint

from mcit.cli import main
from mcit.data import coin_mini

TASKS = "data.tasks=[ImageNet,VQAv2]"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The data check remembers the images that decoded fine in mcit's cache: a fresh one per test."""
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("coin") / "CoIN"
    coin_mini.generate(root, seed=0, train_per_task=8, test_per_task=4, pretrain_size=8, image_size=32, progress=False)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _args(root, *extra):
    # coin-mini's layout has test.json where the release has VQAv2/val.json (test_release_layout.py
    # checks the published layout)
    return ["data.benchmark=coin", f"data.root={root}", f"data.image_root={root / 'images'}", TASKS,
            "data.eval_files={VQAv2: test.json}", *extra]


def test_clean_release_checks_and_runs(release, checkpoint, tmp_path, capsys):
    assert main(["data", "check", *_args(release)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "ImageNet" in out
    code = main(["run", *_args(release), f"model.name={checkpoint}", "train.steps_per_task=2", "train.batch_size=4",
                 "eval.batch_size=4", "eval.max_new_tokens=4", "eval.scoring=coin-compat",
                 f"output_dir={tmp_path}", "name=r"])
    assert code == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["scoring"] == "coin-compat"


def test_planted_defects_are_all_reported_and_nothing_runs(release, checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(release, bad)
    task_dir = bad / "Original"
    train = json.loads((task_dir / "ImageNet" / "train.json").read_text())
    (bad / "images" / train[0]["image"]).unlink()  # missing image
    train[1]["image"] = "../../etc/passwd"  # escaping path
    (task_dir / "ImageNet" / "train.json").write_text(json.dumps(train))
    test = json.loads((task_dir / "VQAv2" / "test.json").read_text())
    del test[2]["answer"]  # missing answer
    (task_dir / "VQAv2" / "test.json").write_text(json.dumps(test))
    (task_dir / "ImageNet" / "test.json").write_text('[{"question_id": "x", "text": ')  # broken JSON

    assert main(["data", "check", *_args(bad)]) == 1
    report = capsys.readouterr().out
    code = main(["run", *_args(bad), f"model.name={checkpoint}", f"output_dir={tmp_path / 'runs'}", "name=r"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for text in (report, err):
        assert f"ImageNet/train.json, record '{train[0]['id']}', field 'image'" in text
        assert f"ImageNet/train.json, record '{train[1]['id']}', field 'image'" in text and "escapes" in text
        assert f"VQAv2/test.json, record '{test[2]['question_id']}'" in text and "answer" in text
        assert "ImageNet/test.json" in text
    assert not (tmp_path / "runs").exists()  # nothing written


def test_unknown_scoring_mode_is_a_clean_error(release, capsys):
    assert main(["run", *_args(release), "eval.scoring=official"]) == 2
    assert "eval.scoring" in capsys.readouterr().err
