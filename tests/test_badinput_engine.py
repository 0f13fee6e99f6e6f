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
