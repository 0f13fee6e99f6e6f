"""coin-compat end to end against the official CoIN scripts, case by case.

``tests/data/official_differential.json`` holds, per task, cases of (decoded generation,
ground truth) with the text the official generation script writes for it and the score the
official evaluation script gives that text. They were computed by running the official CoIN code
unmodified on one-case files, outside this repository (none of its code is kept here). mcit must
agree on every case: ``scored_text`` reproduces the written text, the compat scorer the score.

A few hand-computed corrected-mode cases follow, for the standard VQA normalization and the IoU
boundary.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcit.data.benchmark import load_benchmark

from mcit.data.coin_format import parse_bbox
from mcit.data.schema import Sample
from mcit.eval.coin_compat import OFFICIAL_MAX_NEW_TOKENS, score_mode, scored_text
from mcit.eval.scorers import normalize_answer, score_bbox

COIN_SCORERS = {t.name: t.scorer for t in load_benchmark("coin").tasks}

DATA = json.loads((Path(__file__).parent / "data" / "official_differential.json").read_text())
CASES = DATA["cases"]
TASKS = ["ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCRVQA"]


def sample_of(task: str, case: dict) -> Sample:
    """The sample mcit's readers build for the case's ground truth."""
    extra = {}
    if task == "Grounding":
        extra = {"bbox": parse_bbox(case["answers"][0]), "size": case["size"]}
    return Sample(id="c", task=task, image=None, text="q\ninstr", answers=tuple(case["answers"]),
                  extra=extra)


def test_every_task_has_at_least_50_cases_with_both_verdicts():
    assert sorted(CASES) == sorted(TASKS)
    for task in TASKS:
        scores = [c["official_score"] for c in CASES[task]]
        assert len(scores) >= 50, task
        assert 0.0 in scores and 1.0 in scores, task


@pytest.mark.parametrize("task", TASKS)
def test_scored_text_is_what_the_official_generation_script_writes(task):
    wrong = [(c["raw"], scored_text("coin-compat", task, c["raw"]), c["official_text"])
             for c in CASES[task] if scored_text("coin-compat", task, c["raw"]) != c["official_text"]]
    assert not wrong


@pytest.mark.parametrize("task", TASKS)
def test_coin_compat_end_to_end_equals_the_official_score(task):
    kind = COIN_SCORERS[task]
    wrong = []
    for c in CASES[task]:
        text = scored_text("coin-compat", task, c["raw"])
        got = score_mode("coin-compat", kind, text, sample_of(task, c))
        if got != c["official_score"]:  # exact: same float operations in the same order
            wrong.append((c["raw"], c["answers"], got, c["official_score"]))
    assert not wrong


def test_official_generation_budgets():
    assert OFFICIAL_MAX_NEW_TOKENS == {
        "ScienceQA": 1024, "TextVQA": 128, "ImageNet": 1024, "GQA": 128,
        "VizWiz": 128, "Grounding": 1024, "VQAv2": 1024, "OCRVQA": 128,
    }


# ------------------------------------------------------------------ corrected mode


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("oclock", "o'clock"),
        ("5 oclock", "5 o'clock"),
        ("yall", "y'all"),
        ("maam", "ma'am"),
        ("twas", "'twas"),
        ("weve", "we've"),
        ("couldnt've", "couldn't've"),  # double contractions, both half-apostrophed forms
        ("couldn'tve", "couldn't've"),
        ("yall'd've", "y'all'd've"),
        ("somebodyd", "somebody'd"),  # the standard table's backwards entry, turned round
        ("somebody'd", "somebody'd"),
        ("Im", "i'm"),
        ("McDonald's", "mcdonald 's"),  # possessive split
        ("mcdonald 's", "mcdonald 's"),
        ("hes", "he 's"),  # a restored "'s" is split like a written one
        ("He's", "he 's"),
        ("whats up", "what 's up"),
    ],
)
def test_corrected_normalization_completes_the_standard_table(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        # IoU exactly 1/2, float 0.5000000000000001: inter 0.36 * 0.28 = 0.1008,
        # union 0.63 * 0.32 + 0.1008 - 0.1008 = 0.2016.
        ("[0.19, 0.21, 0.82, 0.53]", [0.43, 0.21, 0.79, 0.49], 0.0),
        # Exactly 1/2 in binary too: inter 0.5 * 0.25, union 0.25.
        ("[0.0, 0.0, 0.5, 0.25]", [0.0, 0.0, 0.5, 0.5], 0.0),
        # Just above: 0.5 * 0.26 / 0.25 = 0.52.
        ("[0.0, 0.0, 0.5, 0.26]", [0.0, 0.0, 0.5, 0.5], 1.0),
        # Four decimals, 0.0001 above one half: 0.5 * 0.2501 / 0.25 = 0.5002.
        ("[0.0, 0.0, 0.5, 0.2501]", [0.0, 0.0, 0.5, 0.5], 1.0),
    ],
)
def test_corrected_iou_boundary(pred, gold, expected):
    s = Sample(id="c", task="Grounding", image=None, text="q", answers=(str(gold),),
               extra={"bbox": gold})
    assert score_bbox(pred, s) == expected


def test_official_passes_the_float_rounded_half():
    gold = "[0.43, 0.21, 0.79, 0.49]"
    s = Sample(id="c", task="Grounding", image=None, text="q", answers=(gold,),
               extra={"bbox": parse_bbox(gold), "size": [640, 480]})
    # The official slice drops the last character, hence the extra 0.
    assert score_mode("coin-compat", "bbox", "[0.19, 0.21, 0.82, 0.530]", s) == 1.0
    assert score_mode("corrected", "bbox", "[0.19, 0.21, 0.82, 0.530]", s) == 0.0
