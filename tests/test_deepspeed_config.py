"""train.engine=deepspeed-zero2 | deepspeed-zero3: the DeepSpeed config mcit hands to Accelerate,
written out by hand for given settings, Accelerate's plugin reading the same values back, and the
refusals on a machine that cannot run DeepSpeed (this one: no GPU, deepspeed not installed; the
catalogue cases are in tests/test_badinput_engine.py). The training path itself needs a GPU:
bench/gpu_check.py runs it there."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from accelerate.utils import DeepSpeedPlugin, DistributedType

from mcit.config import ENGINES, ConfigError, load_config
from mcit.distributed import DEEPSPEED_ENGINES, check_engine, deepspeed_config


def _cfg(*overrides: str):
    return load_config(None, list(overrides))


def test_zero2_config_from_hand_written_settings():
    cfg = _cfg("train.engine=deepspeed-zero2", "train.batch_size=16", "train.grad_accum=4",
               "train.max_grad_norm=0.5", "model.dtype=float32")
    assert deepspeed_config(cfg, num_processes=2, bf16=True) == {
        "train_batch_size": 64,  # the global batch 16 x 4 accumulation steps
        "train_micro_batch_size_per_gpu": 8,  # 16 split over 2 processes
        "gradient_accumulation_steps": 4,
        "gradient_clipping": 0.5,
        "bf16": {"enabled": True},
        "fp16": {"enabled": False},
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "none"}},
        "zero_allow_untested_optimizer": True,
    }


def test_zero3_with_offload_on_a_gpu_without_bf16():
    cfg = _cfg("train.engine=deepspeed-zero3", "train.batch_size=24", "train.grad_accum=1",
               "train.max_grad_norm=1.0", "train.fsdp_cpu_offload=true")
    cpu = {"device": "cpu", "pin_memory": True}
    assert deepspeed_config(cfg, num_processes=8, bf16=False) == {
        "train_batch_size": 24,
        "train_micro_batch_size_per_gpu": 3,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "zero_optimization": {"stage": 3, "offload_optimizer": cpu, "offload_param": cpu},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # mcit's torch AdamW on the offloaded state
    }


def test_a_float16_model_trains_in_fp16_not_bf16():
    cfg = _cfg("train.engine=deepspeed-zero2", "model.dtype=float16", "train.batch_size=4")
    config = deepspeed_config(cfg, num_processes=1, bf16=True)
    assert config["fp16"] == {"enabled": True} and config["bf16"] == {"enabled": False}


def test_a_batch_the_processes_cannot_share_is_refused():
    cfg = _cfg("train.engine=deepspeed-zero2", "train.batch_size=6")
    with pytest.raises(ConfigError, match="train.batch_size=6 .* divisible by the 4 processes"):
        deepspeed_config(cfg, num_processes=4, bf16=True)


def test_accelerates_plugin_reads_the_same_settings_back():
    cfg = _cfg("train.engine=deepspeed-zero3", "train.batch_size=16", "train.grad_accum=2",
               "train.max_grad_norm=0.25", "train.fsdp_cpu_offload=true")
    config = deepspeed_config(cfg, num_processes=2, bf16=True)
    plugin = DeepSpeedPlugin(hf_ds_config=config, zero3_init_flag=False)
    assert plugin.zero_stage == 3 and plugin.gradient_accumulation_steps == 2
    assert plugin.gradient_clipping == 0.25
    assert plugin.offload_optimizer_device == "cpu" and plugin.offload_param_device == "cpu"
    assert not plugin.zero3_init_flag  # the loop keeps the whole model between stages
    # nothing left "auto" for Accelerate to fill in: what ran is what config.yaml says
    assert plugin.deepspeed_config == config | {"steps_per_print": float("inf")}
    assert not any(plugin.is_auto(k) for k in ("train_batch_size", "train_micro_batch_size_per_gpu",
                                               "gradient_accumulation_steps", "gradient_clipping"))


def test_the_engine_names_are_the_config_choices():
    assert set(DEEPSPEED_ENGINES) == {e for e in ENGINES if e.startswith("deepspeed")}
    assert DEEPSPEED_ENGINES == {"deepspeed-zero2": 2, "deepspeed-zero3": 3}


def test_accelerates_deepspeed_type_is_accepted_only_with_the_deepspeed_engine():
    acc = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)
    check_engine(acc, "deepspeed-zero2")
    check_engine(acc, "deepspeed-zero3")
    for engine in ("ddp", "fsdp"):  # a DeepSpeed plugin from an Accelerate config file
        with pytest.raises(ConfigError, match="train.engine=deepspeed-zero2"):
            check_engine(acc, engine)


# -- bench/gpu_check.py: the DeepSpeed runs it adds where the package is installed ------------------

def _gpu_check():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_both_zero_stages_when_deepspeed_is_installed(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    check = _gpu_check()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else find_spec(name, *a))
    assert sorted(check._commands(tmp_path)) == ["ddp", "fsdp", "single"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: importlib.machinery.ModuleSpec(name, None)
                        if name == "deepspeed" else find_spec(name, *a))
    commands = check._commands(tmp_path)
    assert sorted(commands) == ["ddp", "deepspeed-zero2", "deepspeed-zero3", "fsdp", "single"]
    for engine in ("deepspeed-zero2", "deepspeed-zero3"):
        cmd = commands[engine]
        assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[cmd.index("--nproc_per_node") + 1] == "1"
        assert f"train.engine={engine}" in cmd and f"name={engine}" in cmd and "model.dtype=bfloat16" in cmd


def test_gpu_check_without_a_gpu_prints_a_skipped_verdict(monkeypatch, capsys):
    import json

    import torch

    check = _gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["gpu_check.py"])
    assert check.main() == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "skipped"
