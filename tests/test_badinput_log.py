"""Bad-input catalogue: the `log` section (progress cadence, trackers). Each refused before any
run folder is made, with the key and what to do in the message."""
import pytest
from badinput import assert_rejected
from test_end_to_end import SMALL

CASES = [
    pytest.param(["log.report_to=[tensorbord]"], ["log.report_to", "did you mean 'tensorboard'"],
                 id="misspelt-tracker"),
    pytest.param(["log.report_to=[all]"], ["log.report_to", "'all' is not a tracker"], id="tracker-all"),
    pytest.param(["log.report_to=tensorboard"], ["log.report_to", "list"], id="tracker-not-a-list"),
    pytest.param(["log.every_steps=-1"], ["log.every_steps", ">= 0"], id="negative-every-steps"),
    pytest.param(["log.every_steps=1.5"], ["log.every_steps", "int"], id="fractional-every-steps"),
    pytest.param(["log.every_seconds=-5"], ["log.every_seconds", ">= 0"], id="negative-every-seconds"),
    pytest.param(["log.every_seconds=nan"], ["log.every_seconds"], id="nan-every-seconds"),
    pytest.param(["log.reportto=[wandb]"], ["log.report_to"], id="misspelt-key"),
]


@pytest.fixture()
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "earlier.txt").write_text("kept\n")
    return tmp_path / "runs"


@pytest.mark.parametrize("override,mentions", CASES)
def test_bad_log_setting(runs, override, mentions):
    assert_rejected(["run", *SMALL, f"output_dir={runs}", "name=r", *override], mentions, watch=[runs], code=2)
    assert not (runs / "r").exists()


@pytest.mark.parametrize("tracker,install", [
    ("tensorboard", "pip install 'mcit[tensorboard]'"), ("mlflow", "pip install 'mcit[mlflow]'"),
    ("wandb", "pip install 'mcit[wandb]'"), ("aim", "pip install aim")])
def test_tracker_whose_package_is_missing_names_the_extra(runs, monkeypatch, tracker, install):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "_available_trackers",
                        [t for t in accelerate.tracking._available_trackers if str(t) != tracker])
    assert_rejected(["run", *SMALL, f"output_dir={runs}", "name=r", f"log.report_to=[{tracker}]"],
                    ["log.report_to", f"'{tracker}'", "not installed", install], watch=[runs], code=2)
    assert not (runs / "r").exists()


def test_bad_tracker_in_a_config_file(runs, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("log:\n  report_to: [wandb2]\n")
    assert_rejected(["run", str(config), *SMALL, f"output_dir={runs}"], ["log.report_to", "did you mean 'wandb'"],
                    watch=[runs, config], code=2)


def test_tracker_that_cannot_start_is_one_line(runs, monkeypatch):
    """A tracker failing at start (an MLflow URI it refuses, a W&B login) stops the run with its reason."""
    import accelerate.tracking

    def refuse(self):
        raise RuntimeError("cannot write the event file: disk full\nsecond line")

    monkeypatch.setattr(accelerate.tracking.TensorBoardTracker, "start", refuse)
    err = assert_rejected(["run", *SMALL, f"output_dir={runs}", "name=r", "log.report_to=[tensorboard]"],
                          ["log.report_to", "could not start", "RuntimeError: cannot write the event file: disk full"],
                          watch=[runs], code=2)
    assert "second line" not in err
