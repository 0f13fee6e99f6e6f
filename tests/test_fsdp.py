"""train.engine=fsdp: PyTorch FSDP2 (`fully_shard`) on 2 CPU processes (gloo, torchrun).

* Each process holds only its shard of every sharded parameter (DTensor local shapes); the L1
  norm LCIA reads is the sum of the per-shard norms; the gathered weights are the whole ones.
* The whole loop sharded against one process, for `lora`, `full` and `lcia` (with an expand
  decision, so an adapter is added between stages): the same generated answers, hence the same
  accuracy matrix (compared exactly), the same losses to a relative 1e-5 and the same saved
  weights (PEFT adapters, or the full model) to a relative 1e-4. Not bit for bit, for the
  reason tests/test_distributed.py gives for DDP: two processes sum their halves of the batch
  and reduce-scatter, a different float summation order than one sum over the whole batch.
* A 2-process fsdp run killed mid-stage and resumed continues from its in-task checkpoint (whole
  tensors in ordinary safetensors files) and ends with the uninterrupted run's matrix, bit for bit.
"""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from test_distributed import _env, _free_port, _tensors, _torchrun
from test_end_to_end import SMALL

from mcit import checkpoint as ckpt
from mcit.cli import main
from mcit.report.matrix import load_matrix

HERE = Path(__file__).parent


def _run_env(tmp_path: Path, cache: str) -> dict:
    return _env(tmp_path / cache) | {"PYTHONPATH": str(HERE.parent / "src")}


# -- what each process holds ---------------------------------------------------------------------

def test_each_process_holds_only_its_shard_and_norms_are_summed_over_shards(tmp_path):
    done = _torchrun([str(HERE / "fsdp_shard_worker.py"), str(tmp_path / "rank")], _run_env(tmp_path, "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["layers"] == ["LlamaDecoderLayer"] * 2
    assert sorted(ranks[0]["wrapped"]) == ["FSDPLlamaDecoderLayer"] * 2 + ["FSDPLlamaForCausalLM"]
    full = ranks[0]["full"]
    for name, shape in full.items():  # dim 0 split in two: 10 rows -> 5 + 5, the 33 embeddings -> 17 + 16
        rows = [r["local"][name][0] for r in ranks]
        assert rows == [(shape[0] + 1) // 2, shape[0] // 2], name
        assert all(r["local"][name][1:] == shape[1:] for r in ranks), name
    assert full["model.layers.0.self_attn.q_proj.weight"] == [10, 10]
    assert [r["local"]["model.layers.0.self_attn.q_proj.weight"] for r in ranks] == [[5, 10], [5, 10]]
    # each process's L1 norm is part of the whole; their sum is the whole tensor's norm
    for r in ranks:
        assert r["summed_l1"] == pytest.approx(r["whole_l1"], rel=1e-6)
    parts = [a + b for a, b in zip(ranks[0]["local_l1"], ranks[1]["local_l1"])]
    assert parts == pytest.approx(ranks[0]["whole_l1"], rel=1e-6)
    assert all(a < w for a, w in zip(ranks[0]["local_l1"], ranks[0]["whole_l1"]) if w > 0)
    # whole tensors split as the parameters are (in-task checkpoints): the same local shapes, and
    # whole weights scattered into the shards give the whole weights again
    assert all(r["shard_like_local"] == r["local"] for r in ranks)
    assert all(r["scattered_back"] for r in ranks)
    # gathered back: every process has the whole, changed weights
    assert ranks[0]["gathered"] == ranks[1]["gathered"]
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    plain = LlamaForCausalLM(LlamaConfig(vocab_size=33, hidden_size=10, intermediate_size=14, num_hidden_layers=2,
                                         num_attention_heads=5, num_key_value_heads=5))
    for name, p in plain.named_parameters():
        torch.testing.assert_close(torch.tensor(ranks[0]["gathered"][name]), p.detach() + 1.0, msg=name)


# -- the whole loop ----------------------------------------------------------------------------------

def _one_process(args: list[str], name: str, monkeypatch, cache: Path) -> None:
    monkeypatch.setenv("MCIT_CACHE", str(cache))
    threads = torch.get_num_threads()  # one thread, as each launched process gets
    torch.set_num_threads(1)
    try:
        assert main(["run", *args, f"name={name}"]) == 0
    finally:
        torch.set_num_threads(threads)


def _predictions(run: Path, stage: str) -> dict:
    folder = run / "stages" / stage / "predictions"
    return {f.name: [(r["id"], r["raw"]) for r in map(json.loads, f.read_text().splitlines())]
            for f in sorted(folder.iterdir())}


@pytest.mark.parametrize("method", ["lora", "full", "lcia"])
def test_fsdp_on_two_processes_gives_the_single_process_matrix_and_weights(tmp_path, monkeypatch, method):
    args = [*SMALL, f"method.name={method}", f"output_dir={tmp_path / 'runs'}"]
    if method == "lcia":  # SMALL's two tasks share their instruction line: a threshold above 1 always expands;
        # expand tasks keep the projector's balanced EMA, so the coefficients run across processes too
        args += ["method.lcia_threshold=1.5", "method.lcia_expand_ema=projector"]
    _one_process(args, "one", monkeypatch, tmp_path / "cache")
    done = _torchrun(["-m", "mcit", "run", *args, "train.engine=fsdp", "name=two"], _run_env(tmp_path, "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # only the main process prints

    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    assert load_matrix(two / "matrix.json")[1] == load_matrix(one / "matrix.json")[1]
    env2 = json.loads((two / "environment.json").read_text())
    assert env2["num_processes"] == 2 and env2["engine"] == "fsdp"
    stages = sorted(p.name for p in (one / "stages").iterdir())
    assert stages == ["00-base", "01-ImageNet", "02-VQAv2"]
    for stage in stages:
        assert _predictions(two, stage) == _predictions(one, stage), stage
        if stage == "00-base":
            continue
        s1, s2 = (json.loads((r / "stages" / stage / "done.json").read_text()) for r in (one, two))
        assert s2["train"] == pytest.approx(s1["train"], rel=1e-5)
        w1, w2 = (_tensors(r / "stages" / stage / "model") for r in (one, two))
        assert w1.keys() == w2.keys() and w1
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6, msg=k)
        if method == "lora":  # ordinary PEFT adapter folders
            assert (two / "stages" / stage / "model" / "adapter_config.json").is_file()
        if method == "lcia":  # the same grouping decisions and the same coefficient series
            assert s2["method_log"]["lcia"] == s1["method_log"]["lcia"]
    if method == "lcia":
        assert (two / "stages" / "02-VQAv2" / "model" / "group1" / "adapter_model.safetensors").is_file()


# -- kill and resume ---------------------------------------------------------------------------------

def _torchrun_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), *args]


def test_fsdp_run_killed_mid_stage_resumes_from_its_checkpoint_to_the_uninterrupted_matrix(tmp_path):
    """SIGKILL to torchrun and both workers while stage 2 trains, once its first in-task checkpoint
    (train.checkpoint_every=4) is written; `--resume` with 2 fsdp processes continues the stage
    from the checkpoint's step and ends as the uninterrupted run, bit for bit. EMA on LoRA: its
    shadows are per-process shards, kept per process in the checkpoint."""
    env = _run_env(tmp_path, "cache")
    args = [*[a for a in SMALL if not a.startswith("train.steps_per_task")], "train.steps_per_task=12",
            "train.checkpoint_every=4", "log.every_steps=2", "method.name=ema", "train.engine=fsdp",
            f"output_dir={tmp_path / 'runs'}"]
    whole = subprocess.run(_torchrun_cmd(["-m", "mcit", "run", *args, "name=whole"]), env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]

    cut = tmp_path / "runs" / "cut"
    stage2 = cut / "stages" / "02-VQAv2"
    proc = subprocess.Popen(_torchrun_cmd(["-m", "mcit", "run", *args, "name=cut"]), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (stage2 / "checkpoint" / "state.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    for victim in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        victim.send_signal(signal.SIGKILL)
    proc.wait()
    assert (cut / "stages" / "01-ImageNet" / "done.json").is_file()
    assert not (stage2 / "done.json").exists()  # cut mid-stage
    found = ckpt.find(stage2)
    step = ckpt.saved_step(found)
    assert step in (4, 8)
    _assert_whole_tensors(found)
    # EMA's shadows: each process's part of each trainable weight, together the whole weight's shape
    state = load_file(str(found / "method_state.safetensors"))
    names = [k.removeprefix("task/0/") for k in state if k.startswith("task/0/shadow/")]
    assert names and all(k.startswith(("task/0/", "task/1/")) for k in state)
    whole_shapes = [tuple(torch.cat([state[f"task/{r}/{n}"] for r in (0, 1)]).shape) for n in names]
    assert sorted(whole_shapes) == _weight_shapes(found)
    assert any(state[f"task/1/{n}"].shape[0] < whole[0] for n, whole in zip(names, whole_shapes))

    resumed = subprocess.run(_torchrun_cmd(["-m", "mcit", "run", "--resume", str(cut)]), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after stage 1/2" in resumed.stdout
    assert f"continuing 02-VQAv2 from its in-task checkpoint (step {step})" in resumed.stdout
    # the progress lines (every 2 steps) of the resumed leg's stage 2 start after the checkpoint's step
    shown = [int(n) for n in re.findall(r"stage 2/2 VQAv2: (\d+)/12 steps", resumed.stdout)]
    assert shown and shown[0] == step + 2 and shown[-1] == 12, shown
    whole_dir = tmp_path / "runs" / "whole"
    assert load_matrix(cut / "matrix.json")[1] == load_matrix(whole_dir / "matrix.json")[1]
    s_cut, s_whole = (json.loads((r / "stages" / "02-VQAv2" / "done.json").read_text())["train"]
                      for r in (cut, whole_dir))
    assert s_cut == s_whole  # the same sharded run: bit for bit
    for f in ("ImageNet.jsonl", "VQAv2.jsonl"):
        assert (stage2 / "predictions" / f).read_text() == (whole_dir / "stages" / "02-VQAv2" / "predictions" / f).read_text()
    w_cut, w_whole = (_tensors(r / "stages" / "02-VQAv2" / "model") for r in (cut, whole_dir))
    assert w_cut.keys() == w_whole.keys() and all(torch.equal(w_cut[k], w_whole[k]) for k in w_cut)
    assert ckpt.find(stage2) is None  # a completed stage drops its checkpoint


def _weight_shapes(checkpoint: Path) -> list[tuple]:
    weights = load_file(str(checkpoint / "model" / "adapter_model.safetensors"))
    return sorted(tuple(v.shape) for v in weights.values())


def _assert_whole_tensors(checkpoint: Path) -> None:
    """The checkpoint holds whole tensors, not one process's shards: each trainable weight's AdamW
    moments have the weight's full shape (the adapter file lists the trainable weights)."""
    moments = load_file(str(checkpoint / "optimizer.safetensors"))
    assert sorted(tuple(v.shape) for k, v in moments.items() if k.endswith("/exp_avg")) == _weight_shapes(checkpoint)
    assert all(v.numel() == 1 for k, v in moments.items() if k.endswith("/step"))


def test_fsdp_refuses_a_method_it_does_not_support_before_any_work(tmp_path):
    runs = tmp_path / "runs"
    done = _torchrun(["-m", "mcit", "run", *SMALL, "method.name=ewc", "train.engine=fsdp", f"output_dir={runs}"],
                     _run_env(tmp_path, "cache"))
    assert done.returncode != 0
    assert "mcit: error: train.engine=fsdp: method 'ewc' is not supported sharded yet" in done.stderr
    # no traceback through mcit's code (torchrun adds its own about the failed child)
    assert "/mcit/" not in done.stderr.replace(str(tmp_path), "")
    assert not runs.exists() and not (tmp_path / "cache").exists()
