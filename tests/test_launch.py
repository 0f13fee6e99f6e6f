"""`mcit run --processes N`: checked before anything starts; the launcher's command and threads."""
import sys

import pytest
from test_end_to_end import SMALL

from mcit import launch
from mcit.cli import main
from mcit.config import ConfigError


def test_each_process_runs_mcit_with_the_same_arguments():
    assert launch.worker_command(["cfg.yaml", "method.name=ema"]) == [
        sys.executable, "-m", "mcit", "run", "cfg.yaml", "method.name=ema"]


@pytest.mark.parametrize("processes, cores, env, expected", [
    (2, 2, {}, "1"), (2, 8, {}, "4"), (3, 8, {}, "2"), (4, 2, {}, "1"), (2, 8, {"OMP_NUM_THREADS": "3"}, "3")])
def test_each_process_gets_its_share_of_the_cores_unless_the_user_set_it(processes, cores, env, expected):
    assert launch.threads_per_process(processes, cores, env) == expected


def test_bad_process_counts_and_nested_launches_are_refused():
    launch.check_processes(2, 8, {})
    launch.check_processes(1, 7, {"WORLD_SIZE": "2"})  # one process inside a launch: the launch decides
    with pytest.raises(ConfigError, match="must be divisible by the 3 processes"):
        launch.check_processes(3, 8, {})
    with pytest.raises(ConfigError, match="give 1 or more"):
        launch.check_processes(0, 8, {})
    with pytest.raises(ConfigError, match="already started by a launcher \\(WORLD_SIZE"):
        launch.check_processes(2, 8, {"WORLD_SIZE": "2"})


def test_the_cli_refuses_before_starting_anything(tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(launch, "run_processes", lambda *a: started.append(a))
    runs = tmp_path / "runs"
    assert main(["run", "--processes", "3", *SMALL, f"output_dir={runs}"]) == 2  # SMALL's batch is 8
    assert "train.batch_size=8 is the global batch and must be divisible by the 3 processes" in capsys.readouterr().err
    assert main(["run", "--processes", "2", *SMALL, "train.lr=oops", f"output_dir={runs}"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert started == [] and not runs.exists()


def test_a_user_error_inside_the_processes_stays_a_message_with_exit_2(tmp_path, monkeypatch, capfd):
    """Found by the processes themselves (the data folder is read there): each prints its one line;
    neither the launcher's log nor its traceback of the failed process reaches the user."""
    (tmp_path / "coin").mkdir()
    (tmp_path / "img").mkdir()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code = main(["run", "--processes", "2", "data.benchmark=coin", f"data.root={tmp_path / 'coin'}",
                 f"data.image_root={tmp_path / 'img'}", f"output_dir={tmp_path / 'runs'}"])
    out, err = capfd.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("mcit: error: data.instruction_set='Original': no folder") for line in lines)
    assert str(tmp_path / "coin") in lines[0] and "Traceback" not in err
