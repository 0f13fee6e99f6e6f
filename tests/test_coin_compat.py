"""Hand-computed cases for the coin-compat mode (official CoIN behaviour, defects included).

Where the two modes disagree, the corrected scorer's verdict is asserted next to the compat one.
The case-by-case comparison with the official scripts is tests/test_official_differential.py.
"""
from __future__ import annotations

import inspect

import pytest

from mcit.data.benchmark import load_benchmark

from mcit.data.schema import Sample
from mcit.eval import coin_compat
from mcit.eval.coin_compat import (
    COMPAT_SCORERS,
    DEFECTS,
    MODES,
    official_vqa_process,
    parse_box_official,
    parse_option_letter_official,
    score_bbox_compat,
    score_class_compat,
    score_exact_compat,
    score_letter_compat,
    score_mode,
    score_vqa_soft_compat,
    scored_text,
)
from mcit.eval.scorers import (
    SCORERS,
    score_bbox,
    score_class,
    score_exact,
    score_letter,
    score_vqa_soft,
)

COIN_SCORERS = {t.name: t.scorer for t in load_benchmark("coin").tasks}


def make(answers, task="T", extra=None):
    if isinstance(answers, str):
        answers = (answers,)
    return Sample(id="s1", task=task, image=None, text="q\ninstr", answers=tuple(answers),
                  extra=extra or {})


# ------------------------------------------------------------------ registry and dispatcher


def test_registry_mirrors_corrected_keys():
    assert set(COMPAT_SCORERS) == set(SCORERS) == {"letter", "vqa_soft", "exact", "class", "bbox"}


def test_every_defect_is_one_sentence_and_commented_in_the_source():
    source = inspect.getsource(coin_compat)
    assert DEFECTS
    for key, text in DEFECTS.items():
        assert text.endswith(".") and ". " not in text.rstrip(".")
        # Referenced again (besides the DEFECTS entry) where it is reproduced.
        assert source.count(f'"{key}"') >= 2, key


def test_score_mode_switches_between_corrected_and_compat():
    s = make("goldfish", task="ImageNet")
    assert score_mode("coin-compat", "class", "", s) == 1.0
    assert score_mode("corrected", "class", "", s) == 0.0
    assert MODES == ("corrected", "coin-compat")


def test_score_mode_rejects_unknown_mode_listing_valid_ones():
    with pytest.raises(ValueError) as err:
        score_mode("official", "class", "x", make("x"))
    assert "corrected" in str(err.value) and "coin-compat" in str(err.value)


def test_score_mode_rejects_unknown_kind():
    with pytest.raises(ValueError, match="valid kinds"):
        score_mode("coin-compat", "bleu", "x", make("x"))


# ------------------------------------------------------------------ the text that is scored


@pytest.mark.parametrize(
    "task, raw, expected",
    [
        ("VQAv2", " yes </s> ", "yes"),  # model_vqa.py: strip, cut a trailing "</s>", strip
        ("ScienceQA", "B</s>", "B"),
        ("ImageNet", "goldfish\n</s>", "goldfish"),
        ("Grounding", "[0.1, 0.2, 0.3, 0.4]</s></s>", "[0.1, 0.2, 0.3, 0.4]</s>"),  # cut once
        ("GQA", " yes </s> ", "yes </s>"),  # the other scripts only strip
        ("VizWiz", "unanswerable</s>", "unanswerable</s>"),
        ("OCR-VQA", "Yes</s>", "Yes</s>"),
        ("TextVQA", "sony\nTV", "sony\nTV"),  # the whole output, every line
        ("VQAv2", "</s>yes", "</s>yes"),  # only a trailing stop string goes
        ("Other", " x </s> ", "x </s>"),  # unknown task: stripped only
    ],
)
def test_scored_text_coin_compat(task, raw, expected):
    assert scored_text("coin-compat", task, raw) == expected


def test_scored_text_corrected_is_clean_generation():
    assert scored_text("corrected", "GQA", " yes </s> ") == "yes"
    assert scored_text("corrected", "TextVQA", "sony\nTV") == "sony"


def test_scored_text_rejects_unknown_mode():
    with pytest.raises(ValueError, match="valid modes"):
        scored_text("official", "GQA", "yes")


def _sample(task, answers, extra=None):
    return make(answers, task=task, extra=extra)


_BOX = {"bbox": [0.10, 0.20, 0.50, 0.40], "size": [640, 480]}
_BOX1 = {"bbox": [0.1, 0.1, 0.5, 0.5], "size": [640, 480]}

# The examples of the module docstring's "Corrected vs official scoring" list (and of the
# README's): (task, raw output, answers, extra, corrected score, official score).
DOCUMENTED_DIFFERENCES = [
    ("GQA", "yes\nThe table is wooden.", "yes", None, 1.0, 0.0),
    ("VizWiz", "unanswerable</s>", "unanswerable", None, 1.0, 0.0),
    ("ScienceQA", "a dog", "A", None, 0.0, 1.0),
    ("ScienceQA", "I think C", "C", None, 1.0, 0.0),
    ("TextVQA", "red,blue", ["red blue"] * 10, None, 1.0, 0.0),
    ("TextVQA", "Im", ["i'm"] * 10, None, 1.0, 0.0),
    ("TextVQA", "hes", ["he's"] * 10, None, 1.0, 0.0),
    ("ImageNet", "", "goldfish", None, 0.0, 1.0),
    ("ImageNet", "Goldfish", "goldfish", None, 1.0, 0.0),
    ("GQA", "yes!", "yes", None, 1.0, 0.0),
    ("GQA", "the table", "table", None, 1.0, 0.0),
    ("VizWiz", "Yes.", "yes", None, 1.0, 0.0),
    ("VQAv2", "two", "2", None, 1.0, 0.0),
    ("Grounding", "[0.10, 0.22, 0.50, 0.39]", "[0.10, 0.20, 0.50, 0.40]", _BOX, 1.0, 0.0),
    ("Grounding", "0.1 0.1 0.5 0.5", "[0.1, 0.1, 0.5, 0.5]", _BOX1, 1.0, 0.0),
    ("Grounding", "[0.50, 0.50, 0.10, 0.100]", "[0.1, 0.1, 0.5, 0.5]", _BOX1, 1.0, 0.0),
    ("Grounding", "[0.19, 0.21, 0.82, 0.530]", "[0.43, 0.21, 0.79, 0.49]",
     {"bbox": [0.43, 0.21, 0.79, 0.49], "size": [640, 480]}, 0.0, 1.0),
    ("OCRVQA", "Unanswerable Questions", "Unanswerable Questions", None, 1.0, 0.0),
    ("OCRVQA", "Hobbit", "The Hobbit", None, 1.0, 0.0),
]


@pytest.mark.parametrize("task, raw, answers, extra, corrected, official", DOCUMENTED_DIFFERENCES)
def test_documented_differences_end_to_end(task, raw, answers, extra, corrected, official):
    s = _sample(task, answers, extra)
    kind = COIN_SCORERS[task]
    assert score_mode("corrected", kind, scored_text("corrected", task, raw), s) == corrected
    assert score_mode("coin-compat", kind, scored_text("coin-compat", task, raw), s) == official


def test_documented_differences_are_in_the_docstring():
    doc = coin_compat.__doc__
    for _, raw, *_ in DOCUMENTED_DIFFERENCES:
        assert raw.replace("\n", "\\n") in doc, raw


# ------------------------------------------------------------------ ScienceQA (letter)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),  # step 1: the whole output is an option letter
        ("C. Paris", "C"),  # step 2: leading "X. "
        ("b", "B"),  # step 3: single-character word, upper-cased
        ("A)", "A"),  # step 3: \b splits "A" from ")"
        ("(D)", "D"),
        ("B.", "B"),  # too short for step 2, step 3 reads it
        ("The answer is D.", "D"),
        ("a dog", "A"),  # the article read as option A
        ("I think C", "I"),  # first single-character word only
        ("It's B", "S"),  # the "s" after the apostrophe is a word
        ("Answer: 2", "2"),
        ("", None),
        ("none", None),
    ],
)
def test_official_letter_parse(text, expected):
    assert parse_option_letter_official(text) == expected


def test_letter_agrees_on_plain_forms():
    s = make("B", task="ScienceQA")
    for pred in ("B", "b", "B.", "(B)", "B) cat", "B. cat", "The answer is B"):
        assert score_letter_compat(pred, s) == 1.0 == score_letter(pred, s), pred
    assert score_letter_compat("", s) == 0.0 == score_letter("", s)


def test_letter_article_read_as_option_a():
    s = make("A", task="ScienceQA")
    assert score_letter_compat("a dog", s) == 1.0
    assert score_letter("a dog", s) == 0.0  # corrected: lower-case only accepted alone


def test_letter_first_single_char_word_only():
    s = make("C", task="ScienceQA")
    assert score_letter_compat("I think C", s) == 0.0  # parsed "I"
    assert score_letter("I think C", s) == 1.0
    s = make("B", task="ScienceQA")
    assert score_letter_compat("It's B", s) == 0.0  # parsed "S"
    assert score_letter("It's B", s) == 1.0


def test_letter_non_option_parse_is_wrong():
    assert score_letter_compat("Answer: 2", make("B")) == 0.0


# ------------------------------------------------------------------ TextVQA (vqa_soft)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two dogs.", "2 dogs"),
        ("The Sony", "sony"),
        ("red,blue", "redblue"),  # commas deleted, not spaced
        ("it's", "it 's"),  # "'s" split off
        ("black/white", "black white"),  # mark never touches a space -> spaced
        ("x-ray - film", "xray film"),  # "-" touches a space somewhere -> every "-" deleted
        ("3.5 m.", "3.5 m"),
        ("dont", "don't"),
        ("im", "im"),  # no usable "im" entry in the official table
        ("oclock", "o'clock"),
        ("couldnt've", "couldn't've"),  # double contractions, both half-apostrophed forms
        ("couldn'tve", "couldn't've"),
        ("yall'd've", "y'all'd've"),
        ("somebody'd", "somebodyd"),  # the official table's backwards entry
        ("somebodyd", "somebodyd"),
        ("hes", "he's"),  # restored, but not split like a written "he's"
        ("he's", "he 's"),
        ("x" + ". x" * 40, "x" + " x" * 32 + ". x" * 8),  # only the first 32 periods go
    ],
)
def test_official_vqa_process(raw, expected):
    assert official_vqa_process(raw) == expected


@pytest.mark.parametrize(
    "k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_soft_standard_values(k, expected):
    # With 10 answers and k matches: hits see k-1 others, misses see k;
    # k=1: (1*0 + 9*1/3)/10 = 0.3; k=2: (2*1/3 + 8*2/3)/10 = 0.6; k=3: (3*2/3 + 7*1)/10 = 0.9.
    s = make(["sony"] * k + ["panasonic"] * (10 - k), task="TextVQA")
    assert score_vqa_soft_compat("Sony.", s) == pytest.approx(expected)
    assert score_vqa_soft("Sony.", s) == pytest.approx(expected)  # same formula


def test_vqa_soft_comma_deleted():
    s = make(["red blue"] * 10, task="TextVQA")
    assert score_vqa_soft_compat("red,blue", s) == 0.0  # "redblue" != "red blue"
    assert score_vqa_soft("red,blue", s) == 1.0


def test_vqa_soft_possessive_split_in_both_modes():
    s = make(["McDonald's"] * 10, task="TextVQA")
    assert score_vqa_soft_compat("mcdonald 's", s) == 1.0  # both sides become "mcdonald 's"
    assert score_vqa_soft("mcdonald 's", s) == 1.0


def test_vqa_soft_im_contraction():
    s = make(["i'm"] * 10, task="TextVQA")
    assert score_vqa_soft_compat("Im", s) == 0.0
    assert score_vqa_soft("Im", s) == 1.0


def test_vqa_soft_single_reference_is_exact_match():
    assert score_vqa_soft_compat("Sony", make("sony")) == 1.0
    assert score_vqa_soft_compat("LG", make("sony")) == 0.0


# ------------------------------------------------------------------ ImageNet (class)


def test_class_empty_prediction_counts_as_correct():
    s = make("goldfish", task="ImageNet")
    assert score_class_compat("", s) == 1.0  # "" in "goldfish"
    assert score_class_compat("   ", s) == 1.0  # stripped to ""
    assert score_class("", s) == 0.0


def test_class_fragment_of_ground_truth_counts():
    s = make("goldfish", task="ImageNet")
    assert score_class_compat("fish", s) == 1.0
    assert score_class("fish", s) == 0.0


def test_class_case_sensitive():
    s = make("goldfish", task="ImageNet")
    assert score_class_compat("Goldfish", s) == 0.0
    assert score_class("Goldfish", s) == 1.0


def test_class_agrees_on_plain_forms():
    s = make("goldfish", task="ImageNet")
    pred = "a goldfish swimming"
    assert score_class_compat(pred, s) == 1.0 == score_class(pred, s)
    assert score_class_compat("shark", s) == 0.0 == score_class("shark", s)


# ------------------------------------------------------------------ GQA (exact)


def test_gqa_trailing_periods_and_case():
    s = make("yes", task="GQA")
    assert score_exact_compat("Yes.", s) == 1.0 == score_exact("Yes.", s)
    assert score_exact_compat("yes...", s) == 1.0  # rstrip removes every trailing period
    assert score_exact_compat(" yes ", s) == 1.0


def test_gqa_no_other_normalization():
    s = make("yes", task="GQA")
    assert score_exact_compat("yes!", s) == 0.0
    assert score_exact("yes!", s) == 1.0
    s = make("table", task="GQA")
    assert score_exact_compat("the table", s) == 0.0
    assert score_exact("the table", s) == 1.0


def test_gqa_gold_compared_as_stored():
    s = make("Yes", task="GQA")
    assert score_exact_compat("Yes", s) == 0.0  # prediction lower-cased, gold not
    assert score_exact("Yes", s) == 1.0


# ------------------------------------------------------------------ VizWiz / VQAv2 (exact)


def test_vizwiz_matches_only_the_first_answer():
    s = make(("unanswerable", "blue", "blue"), task="VizWiz")
    assert score_exact_compat("Blue", s) == 0.0
    assert score_exact("Blue", s) == 1.0
    assert score_exact_compat("UNANSWERABLE", s) == 1.0 == score_exact("UNANSWERABLE", s)


def test_vizwiz_no_punctuation_normalization():
    s = make("yes", task="VizWiz")
    assert score_exact_compat("Yes.", s) == 0.0
    assert score_exact("Yes.", s) == 1.0


def test_vqav2_first_answer_no_number_mapping():
    s = make(("2", "two"), task="VQAv2")
    assert score_exact_compat("two", s) == 0.0
    assert score_exact("two", s) == 1.0
    assert score_exact_compat("2", s) == 1.0 == score_exact("2", s)


def test_unknown_task_uses_first_answer_rule():
    s = make(("cat", "kitten"), task="Other")
    assert score_exact_compat("CAT", s) == 1.0
    assert score_exact_compat("kitten", s) == 0.0


# ------------------------------------------------------------------ OCR-VQA (exact)


def test_ocrvqa_unanswerable_in_prediction_is_wrong():
    s = make("Unanswerable Questions", task="OCRVQA")
    assert score_exact_compat("Unanswerable Questions", s) == 0.0  # even when it is the answer
    assert score_exact("Unanswerable Questions", s) == 1.0


def test_ocrvqa_unanswerable_check_is_case_sensitive():
    s = make("unanswerable", task="OCR-VQA")
    assert score_exact_compat("unanswerable", s) == 1.0
    assert score_exact_compat("Unanswerable", s) == 0.0
    assert score_exact("Unanswerable", s) == 1.0


def test_ocrvqa_case_insensitive_exact():
    s = make("The Hobbit", task="OCRVQA")
    assert score_exact_compat("the hobbit", s) == 1.0 == score_exact("the hobbit", s)
    assert score_exact_compat("Hobbit", s) == 0.0
    assert score_exact("Hobbit", s) == 1.0  # corrected drops the article


# ------------------------------------------------------------------ Grounding (bbox)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[0.12, 0.34, 0.56, 0.78]", [0.12, 0.34, 0.56, 0.7]),  # last digit dropped
        ("[1.0, 0.2, 0.3, 0.45]", [0.0, 0.2, 0.3, 0.4]),  # "1.0" loses its "1"
        ("[0.1, 0.2, 0.3, 0.45].", [0.1, 0.2, 0.3, 0.45]),  # the "." is cut instead
        (" [0.1, 0.2, 0.3, 0.45]", [0.1, 0.2, 0.3, 0.4]),  # no strip: the space is cut, not the 0
        ("[0.5, 0.5, 0.1, 0.15]", [0.5, 0.5, 0.1, 0.1]),  # corners not re-ordered
        ("0.1 0.2 0.3 0.4", None),
        ("[0.1, 0.2, 0.3]", None),
        ("", None),
    ],
)
def test_official_box_parse(text, expected):
    got = parse_box_official(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_bbox_truncated_last_coordinate_flips_verdict():
    s = make("[0.10, 0.20, 0.50, 0.40]", task="Grounding",
             extra={"bbox": [0.10, 0.20, 0.50, 0.40], "size": [640, 480]})
    pred = "[0.10, 0.22, 0.50, 0.39]"
    # Ground truth area 0.40 * 0.20 = 0.08; the prediction lies inside it.
    # Full read (corrected): y 0.22..0.39 -> 0.40 * 0.17 = 0.068, IoU = 0.068 / 0.08 = 0.85 > 0.5.
    # Official read: y2 "0.39" -> "0.3", y 0.22..0.30 -> 0.40 * 0.08 = 0.032,
    # IoU = 0.032 / 0.08 = 0.40 <= 0.5.
    assert score_bbox_compat(pred, s) == 0.0
    assert score_bbox(pred, s) == 1.0


def test_bbox_agrees_when_truncation_is_harmless():
    s = make("[0.10, 0.20, 0.50, 0.40]", task="Grounding")  # ground truth from the answer string
    assert score_bbox_compat("[0.10, 0.20, 0.50, 0.40]", s) == 1.0 == score_bbox(
        "[0.10, 0.20, 0.50, 0.40]", s)
    # Official: y2 0.4 -> IoU 1; corrected: y2 0.45 -> 0.08 / (0.4 * 0.25) = 0.8.
    assert score_bbox_compat("[0.10, 0.20, 0.50, 0.45]", s) == 1.0 == score_bbox(
        "[0.10, 0.20, 0.50, 0.45]", s)


def test_bbox_threshold_is_strict():
    s = make("[0.0, 0.0, 0.5, 0.5]", task="Grounding", extra={"bbox": [0.0, 0.0, 0.5, 0.5]})
    # "0.250" is read as 0.25: inter = 0.5 * 0.25 = 0.125, union = 0.25, IoU = 0.5 exactly.
    assert score_bbox_compat("[0.0, 0.0, 0.5, 0.250]", s) == 0.0
    assert score_bbox("[0.0, 0.0, 0.5, 0.250]", s) == 0.0


def test_bbox_swapped_corners_get_zero():
    s = make("[0.1, 0.1, 0.5, 0.5]", task="Grounding", extra={"bbox": [0.1, 0.1, 0.5, 0.5]})
    pred = "[0.50, 0.50, 0.10, 0.100]"  # read as [0.5, 0.5, 0.1, 0.1]
    # Signed: intersection 0, union 0.16 + (-0.4)(-0.4) = 0.32 -> IoU 0. Corrected re-orders: 1.
    assert score_bbox_compat(pred, s) == 0.0
    assert score_bbox(pred, s) == 1.0


def test_bbox_unreadable_prediction():
    s = make("[0.1, 0.1, 0.5, 0.5]", task="Grounding", extra={"bbox": [0.1, 0.1, 0.5, 0.5]})
    assert score_bbox_compat("no box here", s) == 0.0 == score_bbox("no box here", s)
    assert score_bbox_compat("0.1 0.1 0.5 0.5", s) == 0.0  # no commas
    assert score_bbox("0.1 0.1 0.5 0.5", s) == 1.0
