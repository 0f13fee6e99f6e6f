"""Bad-input catalogue: issue 15's evaluation settings (eval.dtype, eval.kv_cache, eval.prompt_cache_mb)."""
import pytest
from badinput import assert_rejected
from test_end_to_end import SMALL


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("override, mentions", [
    ("eval.dtype=float16", ["eval.dtype", "must be one of float32, bfloat16"]),
    ("eval.dtype=bf16", ["eval.dtype", "must be one of float32, bfloat16"]),
    ("eval.dtype=3", ["eval.dtype"]),
    ("eval.kv_cache=paged", ["eval.kv_cache", "must be one of dynamic, static"]),
    ("eval.kv_cache=true", ["eval.kv_cache"]),
    ("eval.prompt_cache_mb=-1", ["eval.prompt_cache_mb", "must be >= 0"]),
    ("eval.prompt_cache_mb=lots", ["eval.prompt_cache_mb", "expected int"]),
    ("eval.prompt_cache_mb=0.5", ["eval.prompt_cache_mb"]),
], ids=["dtype-float16", "dtype-abbreviated", "dtype-number", "kv-cache-unknown", "kv-cache-bool",
        "prompt-cache-negative", "prompt-cache-word", "prompt-cache-fraction"])
def test_bad_eval_speed_setting_is_refused(cache, override, mentions):
    assert_rejected(["run", *SMALL, override, f"output_dir={cache / 'runs'}"], mentions=mentions, watch=[cache])
