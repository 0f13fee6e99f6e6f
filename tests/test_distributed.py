"""Several processes and in-task resume.

* 1 process and 2 CPU processes (gloo; `accelerate launch --multi_gpu` and torchrun, which it
  runs underneath: `accelerate launch --cpu --num_processes 2` starts one process unless
  mpirun is set up) train the same model: train.batch_size is the global batch, split across
  processes, and the loss is the global token mean.
  Tolerance: gradients, trained weights and losses agree to a relative 1e-5 (weights 1e-4),
  not bit for bit, because the two processes sum their halves of the batch and then
  all-reduce, a different float summation order than one sum over the whole batch (and their
  padding widths differ). Those last-bit differences do not flip a greedy answer here, so the
  generated text, hence the accuracy matrix, is compared exactly.
* Evaluation shards cover every test sample exactly once and come back in order.
* A stage killed after an in-task checkpoint continues from it and ends with the matrix of an
  uninterrupted run.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
from accelerate.utils import DistributedType
from test_end_to_end import SMALL

from safetensors.torch import load_file

from mcit.cli import main
from mcit.distributed import check_engine, enable_gradient_checkpointing, merge_shards, shard
from mcit.launch import per_process_batch
from mcit.models.load import load_checkpoint
from mcit.config import ConfigError
from mcit.report.matrix import load_matrix

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], env: dict, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _accelerate_launch(args: list[str], env: dict, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), *args]
    return subprocess.run(cmd, env=env | {"HF_HOME": env["MCIT_CACHE"] + "-hf"},  # no user accelerate config
                          capture_output=True, text=True, timeout=300)


def _tensors(folder: Path) -> dict:
    return {f"{f.relative_to(folder)}:{k}": v for f in sorted(folder.rglob("*.safetensors"))
            for k, v in load_file(str(f)).items()}


def _env(cache: Path) -> dict:
    return os.environ | {"MCIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


# -- sharding ---------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_eval_shards_cover_every_sample_once_and_come_back_in_order(world):
    ids = [f"q{k}" for k in range(13)]
    gathered = []  # what gather_object returns: rank 0's records, then rank 1's, ...
    for rank in range(world):
        gathered += [{"id": i, "rank": rank} for i in shard(ids, rank, world)]
    assert sorted(r["id"] for r in gathered) == sorted(ids)  # each exactly once
    assert [r["id"] for r in merge_shards(gathered, ids)] == ids
    with pytest.raises(RuntimeError, match="exactly once"):
        merge_shards(gathered + gathered[:1], ids)
    with pytest.raises(RuntimeError, match="exactly once"):
        merge_shards(gathered[1:], ids)


def test_batch_size_is_the_global_batch():
    assert per_process_batch(8, 2) == 4 and per_process_batch(8, 1) == 8
    with pytest.raises(ConfigError, match="divisible"):
        per_process_batch(6, 4)


def test_deepspeed_and_fsdp_are_refused_clearly():
    for engine in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        with pytest.raises(ConfigError, match="ddp.yaml"):
            check_engine(SimpleNamespace(distributed_type=engine))
    check_engine(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))


def test_a_finished_command_tears_its_process_group_down(tmp_path):
    # Left to the interpreter's exit, gloo's threads can abort a process that finished its work
    # (a torchrun rank ended with SIGABRT in CI); a command that returns destroys the group itself.
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["ls", str(tmp_path)]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# -- gradients under DDP ------------------------------------------------------------------------

def test_after_step_sees_the_all_reduced_gradients_of_the_global_batch(tmp_path):
    env = _env(tmp_path)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    worker = str(HERE / "ddp_grad_worker.py")
    done = subprocess.run([sys.executable, worker, str(one)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _torchrun([worker, str(two)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = json.loads(one.read_text()), json.loads(two.read_text())
    assert one["processes"] == 1 and two["processes"] == 2
    ranks = two["ranks"]
    assert ranks[0]["grads"] == ranks[1]["grads"]  # every process sees the same, all-reduced, gradients
    flat = lambda x: [v for item in x for v in flat(item)] if isinstance(x, list) else [x]  # noqa: E731
    for g1, g2 in zip(one["ranks"][0]["grads"], ranks[0]["grads"]):  # ... equal to the global batch's
        for name in g1:
            assert flat(g1[name]) == pytest.approx(flat(g2[name]), rel=1e-5, abs=1e-7)
    for name in one["weights"]:
        assert flat(one["weights"][name]) == pytest.approx(flat(two["weights"][name]), rel=1e-5, abs=1e-7)
    assert one["stats"]["loss_last"] == pytest.approx(two["stats"]["loss_last"], rel=1e-5)


# -- the whole loop on 2 processes ----------------------------------------------------------------

# olora adds an adapter per task, lcia one per new instruction group: DDP is re-wrapped
@pytest.mark.parametrize("method", ["lora", "olora", "lcia"])
def test_two_processes_give_the_single_process_matrix(tmp_path, monkeypatch, capfd, method):
    args = [*SMALL, f"method.name={method}", "train.checkpoint_every=2", f"output_dir={tmp_path / 'runs'}"]
    if method == "lcia":  # SMALL's two tasks share their instruction line: a threshold above 1 always expands;
        # expand tasks keep the projector's balanced EMA, so the coefficients run across processes too
        args += ["method.lcia_threshold=1.5", "method.lcia_expand_ema=projector"]
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache1"))
    # One thread, as each launched process gets: CPU float sums depend on the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", *args, "name=one"]) == 0
    finally:
        torch.set_num_threads(threads)
    # A fresh cache: the 2-process run builds the base model too (main process alone, others wait).
    if method == "olora":  # mcit's own launch: `mcit run --processes 2` (torch's launcher underneath)
        capfd.readouterr()
        monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache2"))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the one-process run above (kept by --processes)
        code = main(["run", "--processes", "2", *args, "name=two"])
        done = SimpleNamespace(returncode=code, **dict(zip(("stdout", "stderr"), capfd.readouterr())))
    else:
        done = _accelerate_launch(["-m", "mcit", "run", *args, "name=two"], _env(tmp_path / "cache2"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # only the main process prints

    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    base1, base2 = (next((tmp_path / c).glob("tiny-llava-*")) / "model.safetensors" for c in ("cache1", "cache2"))
    assert base1.read_bytes() == base2.read_bytes()
    assert load_matrix(two / "matrix.json")[1] == load_matrix(one / "matrix.json")[1]
    env1, env2 = (json.loads((r / "environment.json").read_text()) for r in (one, two))
    assert env2["num_processes"] == 2 and env2["effective_batch"] == env1["effective_batch"] == 16
    assert env2["per_process_batch"] == 4
    for stage in sorted(p.name for p in (one / "stages").iterdir()):
        for f in sorted((one / "stages" / stage / "predictions").iterdir()):
            a = [json.loads(x) for x in f.read_text().splitlines()]
            b = [json.loads(x) for x in (two / "stages" / stage / "predictions" / f.name).read_text().splitlines()]
            assert [(r["id"], r["raw"]) for r in a] == [(r["id"], r["raw"]) for r in b], (stage, f.name)
        if stage != "00-base":
            s1, s2 = (json.loads((r / "stages" / stage / "done.json").read_text())["train"] for r in (one, two))
            assert s1["steps"] == s2["steps"]
            assert s2 == pytest.approx(s1, rel=1e-5)
            w1, w2 = (_tensors(r / "stages" / stage / "model") for r in (one, two))
            assert w1.keys() == w2.keys() and w1
            for k in w1:
                torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6, msg=k)
            assert not (two / "stages" / stage / "checkpoint").exists()  # removed once the stage is done
    if method == "lcia":  # a second group adapter was added, by the same decision in both runs
        decisions = [json.loads((r / "stages" / "02-VQAv2" / "done.json").read_text())["method_log"]["lcia_grouping"]
                     for r in (one, two)]
        assert decisions[0] == decisions[1] and decisions[1]["decision"] == "expand"


# -- in-task resume --------------------------------------------------------------------------------

LONG = [a for a in SMALL if not a.startswith("train.steps_per_task")] + ["train.steps_per_task=40"]


# olora: several adapters and a projector in the checkpoint; ema, lcia, ewc: in-task method state
# (EMA shadows; LCIA's shadows, last gradients and coefficient series; EWC's captured batches)
@pytest.mark.parametrize("method", ["lora", "olora", "ema", "lcia", "ewc"])
def test_sigkill_mid_stage_then_resume_from_the_checkpoint_gives_the_uninterrupted_matrix(tmp_path, monkeypatch,
                                                                                         capsys, method):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    args = [*LONG, f"method.name={method}", f"output_dir={tmp_path / 'runs'}"]
    assert main(["run", *args, "name=whole"]) == 0  # no checkpoints at all
    whole = tmp_path / "runs" / "whole"

    cut = tmp_path / "runs" / "cut"
    stage2 = cut / "stages" / "02-VQAv2"
    cmd = [sys.executable, "-m", "mcit", "run", *args, "train.checkpoint_every=4", "name=cut"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(tmp_path / "cache"))
    deadline = time.time() + 120
    while not (stage2 / "checkpoint" / "state.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (stage2 / "checkpoint" / "state.json").exists() and not (stage2 / "done.json").exists()
    step = json.loads((stage2 / "checkpoint" / "state.json").read_text())["step"]
    assert 0 < step < 40
    capsys.readouterr()

    assert main(["run", "--resume", str(cut)]) == 0
    assert "continuing 02-VQAv2 from its in-task checkpoint" in capsys.readouterr().out
    assert load_matrix(cut / "matrix.json")[1] == load_matrix(whole / "matrix.json")[1]
    s_cut, s_whole = (json.loads((r / "stages" / "02-VQAv2" / "done.json").read_text())["train"] for r in (cut, whole))
    assert s_cut == s_whole  # the losses before the kill came back from the checkpoint
    for f in ("ImageNet.jsonl", "VQAv2.jsonl"):
        assert (stage2 / "predictions" / f).read_text() == (whole / "stages" / "02-VQAv2" / "predictions" / f).read_text()
    assert not (stage2 / "checkpoint").exists()


def _accelerate_cmd(args: list[str], nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), *args]


def test_two_processes_killed_mid_stage_resume_with_two_processes(tmp_path):
    """SIGKILL to the whole launch (the launcher and both workers) after an in-task checkpoint; a
    2-process --resume continues the stage from it and ends as an uninterrupted 2-process run."""
    env = _env(tmp_path / "cache") | {"HF_HOME": str(tmp_path / "hf")}
    args = [*LONG, "method.name=lora", f"output_dir={tmp_path / 'runs'}"]
    whole = subprocess.run(_accelerate_cmd(["-m", "mcit", "run", *args, "name=whole"]), env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]

    cut = tmp_path / "runs" / "cut"
    stage2 = cut / "stages" / "02-VQAv2"
    proc = subprocess.Popen(_accelerate_cmd(["-m", "mcit", "run", *args, "train.checkpoint_every=4", "name=cut"]),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (stage2 / "checkpoint" / "state.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    # torchrun starts each worker in its own session: kill the launcher and every descendant
    for victim in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        victim.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((stage2 / "checkpoint" / "state.json").read_text())
    assert 0 < state["step"] < 40 and state["num_processes"] == 2 and not (stage2 / "done.json").exists()

    resumed = subprocess.run(_accelerate_cmd(["-m", "mcit", "run", "--resume", str(cut)]), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing 02-VQAv2 from its in-task checkpoint" in resumed.stdout
    whole_dir = tmp_path / "runs" / "whole"
    assert load_matrix(cut / "matrix.json")[1] == load_matrix(whole_dir / "matrix.json")[1]
    s_cut, s_whole = (json.loads((r / "stages" / "02-VQAv2" / "done.json").read_text())["train"] for r in (cut, whole_dir))
    assert s_cut == s_whole
    for f in ("ImageNet.jsonl", "VQAv2.jsonl"):
        assert (stage2 / "predictions" / f).read_text() == (whole_dir / "stages" / "02-VQAv2" / "predictions" / f).read_text()


def test_gradient_checkpointing_trains_the_same_model(tmp_path, monkeypatch):
    """Recomputing activations in backward changes memory, not the numbers."""
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    args = [*SMALL, "data.tasks=[VQAv2]", "eval.zero_shot=false", f"output_dir={tmp_path / 'runs'}"]
    assert main(["run", *args, "name=plain"]) == 0
    assert main(["run", *args, "train.gradient_checkpointing=true", "name=recompute"]) == 0
    plain, recompute = (tmp_path / "runs" / n / "stages" / "01-VQAv2" for n in ("plain", "recompute"))
    assert (json.loads((recompute / "done.json").read_text())["train"]
            == pytest.approx(json.loads((plain / "done.json").read_text())["train"], rel=1e-6))
    assert (recompute / "predictions" / "VQAv2.jsonl").read_text() == (plain / "predictions" / "VQAv2.jsonl").read_text()
    model, _ = load_checkpoint(next((tmp_path / "cache").glob("tiny-llava-*")))
    enable_gradient_checkpointing(model)  # what the run did: it is really on
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
