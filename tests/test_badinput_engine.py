"""The bad-input catalogue, train.engine: a bad engine setting is refused before any work, in one
clean message naming the key, and nothing is created (tests/badinput.py). The refusals that need
several processes (an unsupported method sharded) are in tests/test_fsdp.py."""
from __future__ import annotations

import pytest

from badinput import assert_rejected
from test_end_to_end import SMALL

BAD_ENGINE = [
    pytest.param("train.engine=zero3", ["train.engine", "zero3", "fsdp"], id="engine-unknown-name"),
    pytest.param("train.engine=FSDP2", ["train.engine", "FSDP2"], id="engine-misspelt"),
    pytest.param("train.engine=", ["train.engine"], id="engine-empty"),
    pytest.param("train.engine=[fsdp]", ["train.engine"], id="engine-a-list"),
    pytest.param("train.fsdp_cpu_offload=sometimes", ["train.fsdp_cpu_offload"], id="offload-not-a-bool"),
]


@pytest.mark.parametrize("override, mentions", BAD_ENGINE)
def test_bad_engine_setting_is_refused_before_any_work(tmp_path, monkeypatch, override, mentions):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    assert_rejected(["run", *SMALL, f"output_dir={runs}", override], mentions=mentions, watch=[tmp_path], code=2)
    assert not runs.exists() and not (tmp_path / "cache").exists()


# DeepSpeed where it cannot run, or with what it cannot follow: refused before the accelerator is
# built (it would fail on it) and before anything is written. This machine has no GPU and no
# deepspeed package; `gpu`/`installed` pretend otherwise to reach the later checks.
BAD_DEEPSPEED = [
    pytest.param(["train.engine=deepspeed-zero2"], {}, ["train.engine=deepspeed-zero2", "CUDA GPU", "fsdp"],
                 id="deepspeed-zero2-without-gpu"),
    pytest.param(["train.engine=deepspeed-zero3"], {}, ["train.engine=deepspeed-zero3", "CUDA GPU"],
                 id="deepspeed-zero3-without-gpu"),
    pytest.param(["train.engine=deepspeed-zero2"], {"gpu"}, ["train.engine=deepspeed-zero2", "deepspeed package",
                                                            "pip install deepspeed"],
                 id="deepspeed-not-installed"),
    pytest.param(["train.engine=deepspeed-zero3", "method.name=lcia"], {"gpu", "installed"},
                 ["train.engine=deepspeed-zero3", "method 'lcia'", "lora, full"],
                 id="deepspeed-method-reads-gradients"),
    pytest.param(["train.engine=deepspeed-zero2", "method.name=lora", "method.with=[ema]"], {"gpu", "installed"},
                 ["method 'ema'"], id="deepspeed-addition-reads-weights"),
    pytest.param(["train.engine=deepspeed-zero2", "emt.every_steps=5", "emt.datasets=[digits]"], {"gpu", "installed"},
                 ["emt.every_steps", "train.engine=deepspeed-zero2"], id="deepspeed-with-emt-tracking"),
]


@pytest.mark.parametrize("overrides, pretend, mentions", BAD_DEEPSPEED)
def test_deepspeed_where_it_cannot_run_is_refused_before_any_work(tmp_path, monkeypatch, overrides, pretend,
                                                                   mentions):
    import importlib.util

    import torch

    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    if "gpu" in pretend:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if "installed" in pretend:
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: importlib.machinery.ModuleSpec(name, None) if name == "deepspeed"
                            else find_spec(name, *a))
    runs = tmp_path / "runs"
    assert_rejected(["run", *SMALL, f"output_dir={runs}", *overrides], mentions=mentions, watch=[tmp_path], code=2)
    assert not runs.exists() and not (tmp_path / "cache").exists()
