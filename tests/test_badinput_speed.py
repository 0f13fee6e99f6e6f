"""Bad-input catalogue: issue 15's training speed settings (train.threads, train.compile)."""
import pytest
from badinput import assert_rejected
from test_end_to_end import SMALL


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("override, mention", [
    ("train.threads=-1", "must be >= 0"),
    ("train.threads=two", "expected int"),
    ("train.threads=1.5", "train.threads"),
    ("train.compile=maybe", "true or false"),
], ids=["threads-negative", "threads-word", "threads-fraction", "compile-not-bool"])
def test_bad_speed_setting_is_refused(cache, override, mention):
    assert_rejected(["run", *SMALL, override, f"output_dir={cache / 'runs'}"], mentions=["train.", mention],
                    watch=[cache])
