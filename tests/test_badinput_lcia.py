"""The bad-input catalogue, LCIA (issue 16, part 2): its new settings, the `lcia-ema` ablation row
and the shipped ablation configs. Each case is refused before any work (exit 2, one message
naming the key), and nothing under the watched folder is created or changed."""
from __future__ import annotations

from pathlib import Path

import pytest

from badinput import assert_rejected
from test_end_to_end import SMALL

ABLATION = Path(__file__).parents[1] / "src" / "mcit" / "configs" / "lcia_ablation_diverse.yaml"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


# `mcit run` with the small settings: (id, overrides, what the message must name)
BAD_RUNS = [
    ("tfidf-fit-unknown", ["method.name=lcia", "method.lcia_tfidf=both"], ["method.lcia_tfidf", "pair", "union"]),
    ("tfidf-fit-misspelt-key", ["method.name=lcia", "method.lcia_tfdif=pair"],
     ["method.lcia_tfdif", "did you mean 'method.lcia_tfidf'"]),
    ("expand-ema-unknown", ["method.name=lcia", "method.lcia_expand_ema=all"],
     ["method.lcia_expand_ema", "none", "projector"]),
    ("expand-ema-not-a-string", ["method.name=lcia", "method.lcia_expand_ema=[projector]"],
     ["method.lcia_expand_ema"]),
    ("lcia-ema-with-ema", ["method.name=lcia-ema", "method.with=[ema]"],
     ["method.with", "lcia-ema and ema", "average the weights"]),
    ("lcia-ema-fallback-zero", ["method.name=lcia-ema", "method.lcia_fallback=0"], ["method.lcia_fallback", "(0, 1]"]),
    ("lcia-ema-misspelt", ["method.name=lcia-emma"], ["method.name", "lcia-emma", "did you mean 'lcia-ema'"]),
]


@pytest.mark.parametrize("overrides, mentions", [c[1:] for c in BAD_RUNS], ids=[c[0] for c in BAD_RUNS])
def test_bad_lcia_setting_is_refused_before_any_work(cache, overrides, mentions):
    runs = cache / "runs"
    assert_rejected(["run", *SMALL, f"output_dir={runs}", *overrides], mentions=mentions, watch=[cache], code=2)
    assert not runs.exists() and not (cache / "cache").exists()


# `mcit compare` on the shipped ablation config: (id, arguments after the config, what the message must name)
BAD_COMPARES = [
    ("ablation-unknown-method", ["--methods", "lora,lcia-emma", "--seeds", "0"], ["lcia-emma", "lcia-ema"]),
    ("ablation-repeated-method", ["--methods", "lcia,lcia", "--seeds", "0"], ["--methods", "repeat"]),
    ("ablation-unknown-instruction-set", ["data.instruction_set=Divers", "--methods", "lcia", "--seeds", "0"],
     ["instruction_set", "Divers"]),
]


@pytest.mark.parametrize("args, mentions", [c[1:] for c in BAD_COMPARES], ids=[c[0] for c in BAD_COMPARES])
def test_bad_ablation_compare_is_refused_before_any_run(cache, args, mentions):
    out = cache / "ablation"
    assert_rejected(["compare", str(ABLATION), *SMALL, *args, "--out", str(out)], mentions=mentions,
                    watch=[cache], code=2)
    assert not (out / "runs").exists()
    assert not any((cache / "cache").glob("tiny-llava-*")), "a refused comparison trained a base model"
