"""train.threads: the auto policy's arithmetic, the governor on a synthetic /proc/stat, the
record in environment.json, and that the thread count does not change results."""
import copy
import json

import pytest
import torch
from conftest import train_losses

from mcit import threads
from mcit.config import load_config
from mcit.rundir import save_environment
from mcit.threads import ThreadGovernor, busy_seconds, threads_for


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, others, expected", [(2, 0.0, 2), (2, 0.2, 2), (2, 0.4, 1), (2, 1.0, 1),
                                                     (2, 1.8, 1), (2, 5.0, 1), (8, 2.6, 5), (8, 2.8, 5)])
def test_threads_for_leaves_the_busy_cores(cores, others, expected):
    assert threads_for(cores, others) == expected


def _stat(path, busy_ticks_per_cpu: list[int], idle: int = 1000):
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{i} {b} 0 0 {idle} 0 0 0 0 0 0" for i, b in enumerate(busy_ticks_per_cpu)]
    path.write_text("\n".join(lines) + "\nintr 1 2 3\n")


def test_busy_seconds_counts_the_usable_cores_only(tmp_path):
    stat = tmp_path / "stat"
    _stat(stat, [100, 300, 700])
    hz = threads.os.sysconf("SC_CLK_TCK")
    assert busy_seconds([0, 1], stat) == pytest.approx(400 / hz)
    assert busy_seconds([2], stat) == pytest.approx(700 / hz)
    assert busy_seconds([0], tmp_path / "missing") is None


def test_auto_drops_to_the_free_cores_and_comes_back(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(threads, "own_cpu_seconds", lambda: 0.0)  # all the busy time is another process's
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # no ceiling (pytest-xdist workers set 1)
    hz = threads.os.sysconf("SC_CLK_TCK")
    stat, now = tmp_path / "stat", [0.0]
    _stat(stat, [0, 0])
    gov = ThreadGovernor(0, stat=stat, clock=lambda: now[0])
    assert gov.start() == 2 and torch.get_num_threads() == 2
    now[0] = 1.0  # before CHECK_EVERY_S: not re-checked
    _stat(stat, [int(10 * hz), 0])
    gov.tick()
    assert torch.get_num_threads() == 2
    now[0] = 10.0  # one core busy for the 10 s since the start: one thread
    gov.tick()
    assert torch.get_num_threads() == 1
    now[0] = 20.0  # the neighbour has gone: both cores again
    gov.tick()
    assert torch.get_num_threads() == 2 and gov.used == {1, 2}


def test_a_fixed_setting_is_never_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "own_cpu_seconds", lambda: 0.0)
    stat, now = tmp_path / "stat", [0.0]
    _stat(stat, [0, 0])
    gov = ThreadGovernor(1, stat=stat, clock=lambda: now[0])
    gov.start()
    now[0] = 10.0
    gov.tick()
    assert torch.get_num_threads() == 1 and gov.used == {1}


def test_environment_json_records_threads(tmp_path):
    save_environment(tmp_path, load_config(None, ["train.threads=1"]))
    record = json.loads((tmp_path / "environment.json").read_text())["threads"]
    assert record["setting"] == 1 and record["threads_at_start"] == 1 and record["compile"] is False
    save_environment(tmp_path, load_config(None, []))
    record = json.loads((tmp_path / "environment.json").read_text())["threads"]
    assert record["setting"] == "auto" and 1 <= record["threads_at_start"] <= record["usable_cores"]


def test_losses_do_not_depend_on_the_thread_count():
    from test_fused_lora import _batch, _tiny
    from mcit.methods import build_method
    base, processor = _tiny()
    cfg = load_config(None, ["method.name=lora", "method.lora_r=4"])
    method = build_method(cfg.method)
    batch = _batch(processor)
    losses = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        torch.manual_seed(0)
        model = method.setup(copy.deepcopy(base), cfg).train()
        opt = torch.optim.AdamW(method.param_groups(model, cfg), lr=1e-2)
        losses[n] = train_losses(model, opt, batch, 3)
    assert losses[1] == losses[2]


def test_auto_keeps_an_explicit_omp_num_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: [0, 1, 2, 3])
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    stat = tmp_path / "stat"
    _stat(stat, [0, 0, 0, 0])
    assert ThreadGovernor(0, stat=stat).start() == 2
    assert threads.describe(0)["threads_at_start"] == 2


def test_a_one_process_run_hears_once_that_a_busy_machine_took_its_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(threads, "own_cpu_seconds", lambda: 0.0)
    monkeypatch.setattr(threads, "_hinted", False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    hz = threads.os.sysconf("SC_CLK_TCK")
    stat, now, heard = tmp_path / "stat", [0.0], []
    _stat(stat, [0, 0])
    quiet = ThreadGovernor(0, stat=stat, clock=lambda: now[0], hint=heard.append)
    quiet.start()
    now[0] = 10.0
    quiet.tick()  # both cores free: nothing to say
    assert heard == []
    for stage in range(2):  # one governor per stage; the hint comes once per process
        gov = ThreadGovernor(0, stat=stat, clock=lambda: now[0], hint=heard.append)
        gov.start()
        now[0] += 10.0
        _stat(stat, [int(now[0] * hz), 0])  # core 0 busy all along
        gov.tick()
        assert torch.get_num_threads() == 1
    assert len(heard) == 1 and "drops to 1 thread" in heard[0] and "mcit run --processes 2" in heard[0]
