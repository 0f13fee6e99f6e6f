"""Seeing a run as it runs: progress lines where there is no terminal, one train_log.jsonl record
per optimizer step, the loss curve, and the trackers (TensorBoard, MLflow, W&B) read back."""
import contextlib
import importlib.util
import json
import math
import re
import struct
from pathlib import Path

import pytest
from test_end_to_end import SMALL

from mcit import progress
from mcit.cli import main
from mcit.progress import Progress, duration, reporter
from mcit.report.matrix import load_matrix
from mcit.tracking import TrainLog, read_train_log

TASKS = ["ImageNet", "VQAv2"]
# SMALL: 3 steps per stage, 1 of them warm-up (ceil(0.03 * 3)); then cosine from lr 1e-3 to 0.
LR = [0.0, 1e-3, 1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5))]
TRACKERS = ["tensorboard"] + [t for t in ("mlflow", "wandb") if importlib.util.find_spec(t)]


@pytest.fixture(autouse=True)
def _default_cadence():
    yield
    progress.configure(100, 60.0)  # a run sets the cadence for the process: put the default back


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, cache):
    """One two-task run, stdout and stderr to files (no terminal), a progress line every step,
    every tracker that is installed, both views (the embedding judge)."""
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCIT_CACHE", str(cache))
        mp.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind a switch
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        with open(root / "stdout.txt", "w") as out, open(root / "stderr.txt", "w") as err, \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["run", *SMALL, f"output_dir={root / 'runs'}", "name=tracked", "judge.backend=embedding",
                         "log.every_steps=1", "log.every_seconds=0", f"log.report_to=[{','.join(TRACKERS)}]"])
    assert code == 0, (root / "stderr.txt").read_text()[-3000:]
    return root / "runs" / "tracked", (root / "stdout.txt").read_text(), root


def _count(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text, flags=re.M))


# -------------------------------------------------------------------------------- progress lines


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _lines(monkeypatch, every_steps, every_seconds, steps, seconds_per_step=1.0, terminal=False, **kwargs):
    monkeypatch.setattr(progress, "on_terminal", lambda: terminal)
    progress.configure(every_steps, every_seconds)
    out, clock = [], _Clock()
    p = Progress("stage 1/2 A", steps, log=out.append, clock=clock, **kwargs)
    for _ in range(steps):
        clock.now += seconds_per_step
        p.update(loss=0.5)
    p.close()
    return out


def test_a_line_every_n_steps_and_a_last_one_at_the_end(monkeypatch):
    out = _lines(monkeypatch, every_steps=2, every_seconds=0, steps=5, samples_per_unit=16)
    assert [re.match(r"stage 1/2 A: (\d)/5 steps", line).group(1) for line in out] == ["2", "4", "5"]
    # 2 steps in 2 s of 16 samples: 16 samples/s; 3 steps left at 1 step/s
    assert out[0] == "stage 1/2 A: 2/5 steps (40%)  loss 0.500  16.0 samples/s  ETA 3s"
    assert out[-1].endswith("took 5s")


def test_a_line_every_s_seconds(monkeypatch):
    out = _lines(monkeypatch, every_steps=0, every_seconds=10, steps=12, seconds_per_step=4)
    assert [line.split(":")[1].split()[0] for line in out] == ["3/12", "6/12", "9/12", "12/12"]


def test_no_lines_on_a_terminal_nor_on_other_processes_nor_for_a_short_phase(monkeypatch):
    assert _lines(monkeypatch, 1, 0, 3, terminal=True) == []
    assert _lines(monkeypatch, 1, 0, 3, enabled=False) == []
    assert _lines(monkeypatch, 10, 0, 3) == []  # shorter than the cadence: the stage's summary line says it


def test_resumed_phase_counts_from_where_it_was(monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    progress.configure(2, 0)
    out, clock = [], _Clock()
    p = Progress("x", 10, initial=6, log=out.append, clock=clock)
    clock.now = 2.0
    p.update(), p.update()
    assert out == ["x: 8/10 steps (80%)  1.00 steps/s  ETA 2s"]  # the rate of this leg's 2 steps only


def test_duration_format():
    assert [duration(s) for s in (4.4, 65, 3600 + 7 * 60 + 5)] == ["4s", "1m05s", "1h07m"]


def test_judge_reporter_prints_at_the_cadence_whatever_the_terminal(monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    progress.configure(50, 0)
    out = []
    report = reporter("GK judge", "sample", out.append)
    for done in (32, 64, 96, 100):
        report(done, 100)
    assert [line.split(":")[1].split()[0] for line in out] == ["64/100", "100/100"]


def test_run_with_stdout_to_a_file_prints_every_phase(tracked):
    _, out, _ = tracked
    assert _count(out, r"^building the base model \(once: cached afterwards in ") == 1
    for k in (1, 2):
        assert _count(out, rf"^base model, vision encoder: {k}/2 steps") == 1
    for k in (1, 2, 3):
        assert _count(out, rf"^base model, alignment: {k}/3 steps") == 1
        for t, task in enumerate(TASKS, 1):
            line = re.findall(rf"^stage {t}/2 {task}: {k}/3 steps .*$", out, flags=re.M)
            assert len(line) == 1 and "loss " in line[0] and "lr " in line[0] and " samples/s" in line[0]
    # 6 test samples per task in batches of 4: 2 batches per evaluation
    assert _count(out, r"^eval base on ImageNet: 2/2 batches") == 1
    assert _count(out, r"^eval stage 2 on VQAv2: [12]/2 batches") == 2
    assert _count(out, r"^GK judge: new samples judged: 30/30 samples") == 1  # 2 x 6 base, 6, 2 x 6


# -------------------------------------------------------------------------------- train_log.jsonl


def test_train_log_has_one_record_per_step(tracked):
    run, _, _ = tracked
    for t, task in enumerate(TASKS, 1):
        stage = run / "stages" / f"0{t}-{task}"
        records = read_train_log(stage / "train_log.jsonl")
        assert [r["step"] for r in records] == [1, 2, 3]
        assert [r["lr"] for r in records] == pytest.approx(LR)
        for r in records:
            assert r["loss"] == pytest.approx(r["task_loss"] + r["method_loss"]) and r["method_loss"] == 0.0
            assert r["grad_norm"] > 0
        assert records[0]["seconds"] < records[1]["seconds"] < records[2]["seconds"]
        done = json.loads((stage / "done.json").read_text())["train"]  # k = 1 of 3 steps: first and last
        assert done["loss_first"] == records[0]["task_loss"] and done["loss_last"] == records[-1]["task_loss"]
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_log_method_loss_is_the_methods_extra_term(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(cache))
    args = [*SMALL, "data.tasks=[ImageNet,VQAv2]", "method.name=olora", "eval.zero_shot=false",
            f"output_dir={tmp_path}", "name=o"]
    assert main(["run", *args]) == 0
    second = read_train_log(tmp_path / "o" / "stages" / "02-VQAv2" / "train_log.jsonl")
    assert all(r["method_loss"] > 0 for r in second)  # O-LoRA's orthogonality to the first task's adapter
    assert [r["loss"] for r in second] == pytest.approx([r["task_loss"] + r["method_loss"] for r in second])


class _Killed(BaseException):
    """Stands for a SIGKILL between two steps (in-process, so the test can read what was written)."""


def test_resume_from_an_in_task_checkpoint_continues_the_log(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(cache))
    args = [*SMALL, "data.tasks=[ImageNet]", "train.steps_per_task=6", "train.checkpoint_every=2",
            "eval.zero_shot=false", "log.every_steps=1", f"output_dir={tmp_path}", "name=cut"]
    add = TrainLog.add

    def killed_after_step_5(self, step, *a):
        add(self, step, *a)
        if step == 5:
            raise _Killed

    monkeypatch.setattr(TrainLog, "add", killed_after_step_5)
    with pytest.raises(_Killed):
        main(["run", *args])
    log = tmp_path / "cut" / "stages" / "01-ImageNet" / "train_log.jsonl"
    before = read_train_log(log)
    assert [r["step"] for r in before] == [1, 2, 3, 4, 5]  # written at each step; the checkpoint is at 4
    monkeypatch.setattr(TrainLog, "add", add)

    assert main(["run", "--resume", str(tmp_path / "cut")]) == 0
    after = read_train_log(log)
    assert [r["step"] for r in after] == [1, 2, 3, 4, 5, 6]
    assert after[:4] == before[:4]
    # step 5 is redone from the step-4 checkpoint: the same batch, weights and rate
    same = ("loss", "task_loss", "lr", "grad_norm")
    assert {k: after[4][k] for k in same} == pytest.approx({k: before[4][k] for k in same})
    assert after[3]["seconds"] <= after[4]["seconds"] <= after[5]["seconds"]  # time continues


def test_train_log_begin_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text("".join(json.dumps({"step": s, "seconds": float(s)}) + "\n" for s in (1, 2, 3))
                    + '{"step": 4, "seco')  # a line cut mid-write
    log = TrainLog(path, flush_every=10)
    log.begin(2)
    assert read_train_log(path) == [{"step": 1, "seconds": 1.0}, {"step": 2, "seconds": 2.0}]
    log.add(3, 1.0, 0.25, 1e-3, None)
    log.flush()
    third = read_train_log(path)[-1]
    assert third["step"] == 3 and third["loss"] == 1.25 and third["grad_norm"] is None and third["seconds"] >= 2.0
    TrainLog(path).begin(0)  # the stage redone from its start
    assert path.read_text() == ""


# -------------------------------------------------------------------------------- trackers


def _expected_rows(run: Path, name: str) -> dict[str, list[tuple[int, float]]]:
    """matrix/<view>/<task> -> [(stage, score)] as the run's matrix file has them (0 = base)."""
    tasks, matrix, zero_shot, _ = load_matrix(run / f"{name}.json")
    rows = [zero_shot] + matrix
    return {task: [(s, row[i]) for s, row in enumerate(rows) if row[i] is not None] for i, task in enumerate(tasks)}


def _train_losses(run: Path) -> list[tuple[int, float]]:
    records = [r for task in (1, 2) for r in read_train_log(run / "stages" / f"0{task}-{TASKS[task - 1]}" /
                                                            "train_log.jsonl")]
    return [(n, r["loss"]) for n, r in enumerate(records, 1)]  # the run's step: 1-3, then 4-6


def _approx_pairs(got, want):
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-6)


def test_tensorboard_event_files_read_back(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = tracked
    events = EventAccumulator(str(run / "trackers" / "mcit"))
    events.Reload()

    def series(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    _approx_pairs(series("train/loss"), _train_losses(run))
    assert [v for _, v in series("train/lr")] == pytest.approx(LR + LR)
    for view, name in (("if", "matrix"), ("gk", "matrix_gk")):
        for task, want in _expected_rows(run, name).items():
            _approx_pairs(series(f"matrix/{view}/{task}"), want)
    metrics = json.loads((run / "metrics.json").read_text())
    assert series("metrics/if/MFN") == [(2, pytest.approx(metrics["MFN"]))]
    gk = json.loads((run / "metrics_gk.json").read_text())
    assert series("metrics/gk/MFT") == [(2, pytest.approx(gk["MFT"]))]
    assert "lr: 0.001" in next((run / "trackers" / "mcit").rglob("hparams.yml")).read_text()  # the config


@pytest.mark.skipif("mlflow" not in TRACKERS, reason="mlflow is not installed (pip install 'mcit[mlflow]')")
def test_mlflow_file_store_reads_back(tracked):
    from mlflow.tracking import MlflowClient

    run, _, root = tracked
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient((root / "mlruns").as_uri())
        (found,) = client.search_runs([client.get_experiment_by_name("mcit").experiment_id])
        assert found.info.run_name == "tracked"
        assert found.data.params["train.lr"] == "0.001" and found.data.params["method.name"] == "lora"

        def series(key):
            return [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, key)]

        _approx_pairs(series("train/loss"), _train_losses(run))
        for view, name in (("if", "matrix"), ("gk", "matrix_gk")):
            for task, want in _expected_rows(run, name).items():
                _approx_pairs(series(f"matrix/{view}/{task}"), want)


def _wandb_records(path: Path):
    """The records of a W&B offline run file. wandb 0.31 ships no reader for it (its sync is in
    Go), so the file's framing is read here: a 7-byte header, then LevelDB-log blocks of 32 KiB
    whose chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) hold protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # block padding
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


@pytest.mark.skipif("wandb" not in TRACKERS, reason="wandb is not installed (pip install 'mcit[wandb]')")
def test_wandb_offline_run_reads_back(tracked):
    run, _, _ = tracked
    (path,) = (run / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = [], {}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
    assert config["train.lr"] == 0.001
    steps = [(h["train/step"], h["train/loss"]) for h in history if "train/loss" in h]
    _approx_pairs(steps, _train_losses(run))
    for view, name in (("if", "matrix"), ("gk", "matrix_gk")):
        for task, want in _expected_rows(run, name).items():
            got = [(h["stage"], h[f"matrix/{view}/{task}"]) for h in history if f"matrix/{view}/{task}" in h]
            _approx_pairs(got, want)
