"""Hand-computed cases for the corrected CoIN scorers."""
from __future__ import annotations

import pytest

from mcit.data.benchmark import SCORER_NAMES, load_benchmark

from mcit.data.schema import Sample
from mcit.eval.scorers import (
    SCORERS,
    box_iou,
    clean_generation,
    normalize_answer,
    parse_box,
    parse_option_letter,
    score,
    score_bbox,
    score_class,
    score_exact,
    score_letter,
    score_vqa_soft,
)


def make(answers, task="T", extra=None, text="q\ninstr"):
    if isinstance(answers, str):
        answers = (answers,)
    return Sample(id="s1", task=task, image=None, text=text, answers=tuple(answers),
                  extra=extra or {})


# ------------------------------------------------------------------ normalize_answer


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yes", "yes"),
        ("  Yes.  ", "yes"),
        ("The cat", "cat"),
        ("a dog", "dog"),
        ("An apple", "apple"),
        ("theater", "theater"),  # "the" only removed as a whole word
        ("two", "2"),
        ("Ten", "10"),
        ("zero", "0"),
        ("two dogs", "2 dogs"),
        ("Don't", "don't"),
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("1,000", "1000"),
        ("3.14", "3.14"),
        ("3.5 meters.", "3.5 meters"),
        ("yes!", "yes"),
        ("what?", "what"),
        ("black/white", "black white"),
        ("black / white", "black white"),
        ("(left)", "left"),
        ("red,  blue", "red blue"),
        ("multi\nline\ttext", "multi line text"),
        ("", ""),
        # The rest of the standard contraction table.
        ("oclock", "o'clock"),
        ("yall", "y'all"),
        ("maam", "ma'am"),
        ("twas", "'twas"),
        ("weve", "we've"),
        ("shouldnt've", "shouldn't've"),
        ("wouldn'tve", "wouldn't've"),
        ("y'allll", "y'all'll"),
        ("somebodyd", "somebody'd"),
        # The possessive split, also applied to a restored "'s".
        ("the dog's ball", "dog 's ball"),
        ("Whats", "what 's"),
        ("what's", "what 's"),
        # Words that only look like table keys stay.
        ("shed", "shed"),
        ("well", "well"),
        ("its", "its"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_none_is_empty():
    assert normalize_answer(None) == ""


# ------------------------------------------------------------------ parse_option_letter


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        ("b", "B"),  # whole output a letter: case-insensitive
        (" C ", "C"),
        ("D.", "D"),
        ("E)", "E"),
        ("(B)", "B"),
        ("B. The mitochondria", "B"),
        ("C) because of gravity", "C"),
        ("(A) iron", "A"),
        ("The answer is B.", "B"),
        ("I think (C) is right", "C"),
        ("Answer: D", "D"),
    ],
)
def test_parse_option_letter(text, expected):
    assert parse_option_letter(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "F", "The mitochondria", "a cat on a mat", "ABC", "B-cell", None],
)
def test_parse_option_letter_failures(text):
    assert parse_option_letter(text) is None


def test_score_letter():
    s = make("B")
    assert score_letter("B", s) == 1.0
    assert score_letter("The answer is B.", s) == 1.0
    assert score_letter("A", s) == 0.0
    assert score_letter("no idea", s) == 0.0  # unparsable counts as wrong
    assert score_letter("b", make("b")) == 1.0  # reference upper-cased


# ------------------------------------------------------------------ score_vqa_soft

OTHER = ["cat"] * 10


def ten_answers(k):
    """10 reference answers, k of them 'dog' (in assorted raw forms), the rest 'cat'."""
    dogs = ["dog", "Dog", "a dog", "dog."][:k] if k <= 4 else ["dog"] * k
    return tuple(dogs + OTHER[: 10 - k])


@pytest.mark.parametrize(
    "k, expected",
    [
        # k matches among 10. Leaving out a matching answer leaves k-1 matches (k subsets);
        # leaving out a non-matching one leaves k matches (10-k subsets).
        (0, 0.0),
        # k=1: 1 subset with 0 matches (0) + 9 subsets with 1 match (1/3) -> 9 * 1/3 / 10 = 0.3
        (1, 0.3),
        # k=2: 2 subsets * 1/3 + 8 subsets * 2/3 = 2/3 + 16/3 = 6 -> 6 / 10 = 0.6
        (2, 0.6),
        # k=3: 3 subsets * 2/3 + 7 subsets * 1 = 2 + 7 = 9 -> 0.9
        (3, 0.9),
        # k=4: 4 subsets * min(1, 3/3) + 6 subsets * min(1, 4/3) = 4 + 6 = 10 -> 1.0
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_soft_ten_answers(k, expected):
    assert score_vqa_soft("dog", make(ten_answers(k))) == pytest.approx(expected)


def test_vqa_soft_normalizes_prediction():
    answers = ("2",) * 3 + ("3",) * 7
    # 3 matches -> 0.9 (see above)
    assert score_vqa_soft("Two.", make(answers)) == pytest.approx(0.9)


def test_vqa_soft_single_answer_is_exact_match():
    assert score_vqa_soft("The Dog", make("dog")) == 1.0
    assert score_vqa_soft("dogs", make("dog")) == 0.0


def test_vqa_soft_no_match_and_empty():
    assert score_vqa_soft("", make(ten_answers(3))) == 0.0


# ------------------------------------------------------------------ score_exact


def test_score_exact():
    s = make(("Unanswerable",))
    assert score_exact("unanswerable", s) == 1.0
    assert score_exact("Unanswerable.", s) == 1.0
    assert score_exact("answerable", s) == 0.0
    multi = make(("blue", "navy"))
    assert score_exact("Navy", multi) == 1.0  # any reference answer
    assert score_exact("the blue", multi) == 1.0
    assert score_exact("blue sky", multi) == 0.0
    assert score_exact("", multi) == 0.0
    assert score_exact("two", make("2")) == 1.0


# ------------------------------------------------------------------ score_class


def test_score_class():
    s = make("goldfish")
    assert score_class("goldfish", s) == 1.0
    assert score_class("Goldfish.", s) == 1.0
    assert score_class("It is a goldfish swimming", s) == 1.0
    assert score_class("goldfishes", s) == 1.0  # plural tolerated
    assert score_class("goldfishbowl", s) == 0.0  # not a whole word
    assert score_class("fish", s) == 0.0  # prediction in class name is not enough
    assert score_class("", s) == 0.0  # the official defect counted this correct
    assert score_class("   ", s) == 0.0


def test_score_class_multiword_and_plural():
    s = make("tiger shark")
    assert score_class("two tiger sharks", s) == 1.0
    assert score_class("a tiger", s) == 0.0
    assert score_class("shark", s) == 0.0
    assert score_class("Tiger-shark", s) == 1.0  # hyphen normalized to a space
    assert score_class("cats", make("cat")) == 1.0
    assert score_class("boxes", make("box")) == 1.0


# ------------------------------------------------------------------ parse_box / box_iou


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[0.12, 0.3, 0.5, 0.77]", [0.12, 0.3, 0.5, 0.77]),
        ("0.12, 0.3, 0.5, 0.77", [0.12, 0.3, 0.5, 0.77]),
        ("0.12 0.3 0.5 0.77", [0.12, 0.3, 0.5, 0.77]),
        ("[ 0.12 ,0.3,  0.5 , 0.77 ]", [0.12, 0.3, 0.5, 0.77]),
        ("[10, 20, 30, 40]", [10.0, 20.0, 30.0, 40.0]),
        ("The box is [0, 0.5, 1, 1].", [0.0, 0.5, 1.0, 1.0]),
        ("[0.1, 0.2, 0.3, 0.4, 0.9]", [0.1, 0.2, 0.3, 0.4]),  # first four only
        ("[0.5, 0.77, 0.12, 0.3]", [0.12, 0.3, 0.5, 0.77]),  # reordered
        ("[.25, 0.3, 0.5, 0.77]", [0.25, 0.3, 0.5, 0.77]),
    ],
)
def test_parse_box(text, expected):
    assert parse_box(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "no box here", "[0.1, 0.2, 0.3]", "[a, b, c, d]", None])
def test_parse_box_failures(text):
    assert parse_box(text) is None


def test_box_iou():
    assert box_iou([0, 0, 1, 1], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([0, 0, 1, 1], [1, 0, 2, 1]) == 0.0  # touching edges only
    # [0,0,2,2] vs [1,1,3,3]: intersection 1x1 = 1, union 4 + 4 - 1 = 7 -> 1/7
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    # [0,0,0.4,0.5] vs [0.2,0,0.6,0.5]: inter 0.2*0.5 = 0.1, union 0.2 + 0.2 - 0.1 = 0.3 -> 1/3
    assert box_iou([0, 0, 0.4, 0.5], [0.2, 0, 0.6, 0.5]) == pytest.approx(1 / 3)
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # empty union


def test_score_bbox_threshold():
    ref = make("[0, 0, 1, 1]", extra={"bbox": [0.0, 0.0, 1.0, 1.0]})
    # Prediction [0,0,1,w] contains the unit square: IoU = 1 / w.
    assert score_bbox("[0, 0, 1, 1.98]", ref) == 1.0  # 1/1.98 = 0.505 > 0.5
    assert score_bbox("[0, 0, 1, 2.02]", ref) == 0.0  # 1/2.02 = 0.495
    assert score_bbox("[0, 0, 1, 2]", ref) == 0.0  # exactly 0.5 is not > 0.5
    assert score_bbox("[0, 0, 1, 1.9999]", ref) == 1.0  # 0.500025
    assert score_bbox("[0, 0, 1, 1]", ref) == 1.0
    assert score_bbox("I cannot find it", ref) == 0.0


def test_score_bbox_exact_half_despite_rounding():
    # IoU exactly 1/2: intersection 0.36 * 0.28 = 0.1008, union 0.63 * 0.32 = 0.2016; the float
    # computation gives 0.5000000000000001, which must not pass.
    ref = make("[0.43, 0.21, 0.79, 0.49]", extra={"bbox": [0.43, 0.21, 0.79, 0.49]})
    assert box_iou([0.19, 0.21, 0.82, 0.53], [0.43, 0.21, 0.79, 0.49]) > 0.5
    assert score_bbox("[0.19, 0.21, 0.82, 0.53]", ref) == 0.0


def test_score_bbox_reference_sources():
    # No extra["bbox"]: reference parsed from the answer string.
    s = make("[0.1, 0.1, 0.5, 0.5]")
    assert score_bbox("[0.1, 0.1, 0.5, 0.5]", s) == 1.0
    assert score_bbox("[0.6, 0.6, 0.9, 0.9]", s) == 0.0
    # extra["bbox"] takes precedence over the answer; a string value is parsed too.
    s2 = make("[0.6, 0.6, 0.9, 0.9]", extra={"bbox": "[0.1, 0.1, 0.5, 0.5]"})
    assert score_bbox("[0.1, 0.1, 0.5, 0.5]", s2) == 1.0
    # Unparsable reference -> 0.
    assert score_bbox("[0.1, 0.1, 0.5, 0.5]", make("none")) == 0.0


# ------------------------------------------------------------------ clean_generation


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  B  ", "B"),
        ("B</s>", "B"),
        ("dog </s>", "dog"),
        ("B\n\nExplanation: because", "B"),
        ("\n  yes\nno", "yes"),
        ("cat<|im_end|>\nmore", "cat"),
        ("", ""),
    ],
)
def test_clean_generation(raw, expected):
    assert clean_generation(raw) == expected


# ------------------------------------------------------------------ registry


def test_registry_and_dispatch():
    assert set(SCORERS) == {"letter", "vqa_soft", "exact", "class", "bbox"}
    assert score("letter", "A", make("A")) == 1.0
    assert score("exact", "Yes", make("yes")) == 1.0
    assert score("bbox", "[0,0,1,1]", make("[0, 0, 1, 1]")) == 1.0


def test_unknown_scorer_kind():
    with pytest.raises(ValueError) as err:
        score("bleu", "x", make("x"))
    msg = str(err.value)
    assert "bleu" in msg
    for kind in SCORERS:
        assert kind in msg


def test_default_task_scorer():
    expected = {
        "ScienceQA": "letter",
        "TextVQA": "vqa_soft",
        "ImageNet": "class",
        "GQA": "exact",
        "VizWiz": "exact",
        "Grounding": "bbox",
        "VQAv2": "exact",
        "OCRVQA": "exact",
    }
    for name in ("coin", "coin-mini"):  # the benchmark files name CoIN's scorers
        assert {t.name: t.scorer for t in load_benchmark(name).tasks} == expected
    assert tuple(SCORERS) == SCORER_NAMES


def test_scores_in_unit_interval():
    s = make(ten_answers(2), extra={"bbox": [0, 0, 1, 1]})
    for kind, fn in SCORERS.items():
        for pred in ["", "dog", "A", "[0, 0, 1, 1]", "garbage ### text"]:
            v = fn(pred, s)
            assert 0.0 <= v <= 1.0, (kind, pred, v)


def test_trivial_baseline_majority_answer_and_mean_box():
    from mcit.eval.evaluate import trivial_baseline

    def s(ans, task="VQAv2"):
        return Sample(id=ans, task=task, image=None, text="q", answers=(ans,))

    train = [s("yes"), s("no"), s("yes")]
    test = [s("yes"), s("no"), s("no"), s("yes")]
    assert trivial_baseline(train, test, "exact") == ("yes", 50.0)
    # mean of [0,0,.4,.4] and [.2,.2,.6,.6] is [.1,.1,.5,.5]; IoU with [.1,.1,.5,.5] is 1, with [.6,.6,.9,.9] is 0
    boxes = [s("[0.0, 0.0, 0.4, 0.4]", "Grounding"), s("[0.2, 0.2, 0.6, 0.6]", "Grounding")]
    test_boxes = [s("[0.1, 0.1, 0.5, 0.5]", "Grounding"), s("[0.6, 0.6, 0.9, 0.9]", "Grounding")]
    assert trivial_baseline(boxes, test_boxes, "bbox") == ("[0.10, 0.10, 0.50, 0.50]", 50.0)
