"""The ``coin-compat`` scoring mode: the official CoIN evaluation scripts, defects included.

The corrected scorers in :mod:`mcit.eval.scorers` are the default. This module reproduces what
the scripts shipped with the CoIN paper compute (LLaVA variants, ``ETrain/Eval/LLaVA/CoIN/`` of
the CoIN repository), so that numbers can be set next to published ones. Every reproduced defect
is listed in :data:`DEFECTS` and commented where it is reproduced.

Same signature as the corrected scorers: ``fn(prediction: str, sample: Sample) -> float`` in
``[0, 1]``. Like the official pipeline, which only ``strip()``-s the decoded text before writing
it out, the scorers strip surrounding whitespace and do nothing else; the evaluation loop's
:func:`~mcit.eval.scorers.clean_generation` (first line only) is applied before either mode.

The official "exact match" rule differs per task, so the ``exact`` compat scorer dispatches on
``sample.task``: GQA, VizWiz/VQAv2 and OCR-VQA each have their own function (see
:data:`COMPAT_TASK_SCORERS`); an unknown task gets the VizWiz/VQAv2 rule.

Not reproduced (whole-file behaviour, not per-sample): the ImageNet script pairs predictions with
ground truths by line order rather than by ``question_id``; the OCR-VQA script prints
``Samples: 0``; the TextVQA evaluator asserts exactly 10 reference answers (here any number is
accepted, and a single reference degenerates to exact match as in the corrected scorer); a
grounding record without ``size`` would crash the official script (here the scaling is skipped).

Public API: :data:`COMPAT_SCORERS`, :data:`COMPAT_TASK_SCORERS`, :data:`DEFECTS`, :data:`MODES`,
:func:`score_mode`, the scorers ``score_*_compat`` and the official parsers
:func:`parse_option_letter_official`, :func:`parse_box_official` and
:func:`official_vqa_process`.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

from mcit.data.schema import Sample
from mcit.eval import scorers as _corrected
from mcit.eval.scorers import IOU_THRESHOLD, OPTION_LETTERS, SCORERS

__all__ = [
    "COMPAT_SCORERS",
    "COMPAT_TASK_SCORERS",
    "DEFECTS",
    "MODES",
    "score_mode",
    "parse_option_letter_official",
    "parse_box_official",
    "official_vqa_process",
    "score_letter_compat",
    "score_vqa_soft_compat",
    "score_class_compat",
    "score_gqa_compat",
    "score_vqa_first_compat",
    "score_ocrvqa_compat",
    "score_exact_compat",
    "score_bbox_compat",
]

Scorer = Callable[[str, Sample], float]

MODES = ("corrected", "coin-compat")

DEFECTS: dict[str, str] = {
    "letter/lowercase-word": (
        "ScienceQA: the fallback takes the first single-character word of any case and upper-cases "
        "it, so the article in 'a dog' is read as option A."
    ),
    "letter/first-word-only": (
        "ScienceQA: only the first single-character word is tried, so 'I think C' parses as 'I' "
        "and \"It's B\" as 'S' (the 's' after the apostrophe), both wrong."
    ),
    "class/empty-prediction": (
        "ImageNet: 'prediction in ground truth' is accepted, so an empty prediction (a substring "
        "of everything) counts as correct, as does any fragment such as 'fish' for 'goldfish'."
    ),
    "class/case-sensitive": (
        "ImageNet: the LLaVA script compares without lower-casing, so 'Goldfish' does not match "
        "'goldfish' (the Qwen-VL variant lower-cases both)."
    ),
    "exact/gqa-gold-as-is": (
        "GQA: only the prediction is cleaned (all trailing periods stripped, lower-cased), the "
        "gold answer is compared as stored, with no other normalization."
    ),
    "exact/one-answer": (
        "VizWiz/VQAv2: case-insensitive exact match against the single stored answer only, no "
        "punctuation or article normalization and no credit for other annotators' answers."
    ),
    "exact/ocrvqa-unanswerable": (
        "OCR-VQA: any prediction containing the case-sensitive substring 'Unanswerable' is wrong "
        "before comparison, while 'unanswerable' in lower case is compared normally."
    ),
    "vqa_soft/evalai-normalization": (
        "TextVQA: the EvalAI answer processor deletes commas outright ('red,blue' -> "
        "'redblue'), splits \"'s\" off words, decides per punctuation mark for the whole string "
        "whether to delete or space it, and has no 'im'/'ive'/'id'/'lets' contraction entries."
    ),
    "bbox/slice-after-unbracket": (
        "Grounding: the text is sliced [1:-1] after the brackets were already removed, dropping "
        "the first character of the first coordinate and the last digit of the last one."
    ),
    "bbox/unordered-iou": (
        "Grounding: IoU uses signed widths and heights, so a box with swapped corners gets IoU 0 "
        "instead of being re-ordered."
    ),
}


def _text(prediction: object) -> str:
    # The official generation script writes ``outputs.strip()``; nothing else is cleaned.
    return "" if prediction is None else str(prediction).strip()


# --------------------------------------------------------------------------------------------
# ScienceQA (letter)
# --------------------------------------------------------------------------------------------

_SINGLE_CHAR_WORD = re.compile(r"\b(\w)\b")


def parse_option_letter_official(text: str) -> str | None:
    """The official ScienceQA parse, or None when it yields nothing ("FAILED").

    (1) the whole output is one of "A".."E" (upper case only); (2) the output is at least three
    characters, starts with an upper-case option letter and continues with ". "; (3) otherwise the
    first single-character word (regex ``\\b(\\w)\\b``: letters of any case, digits, '_'),
    upper-cased. Step 3 may return a non-option such as "I", "S" or "2"; that is wrong, not
    unparsable, and :func:`score_letter_compat` scores it 0 either way.
    """
    t = _text(text)
    if t in OPTION_LETTERS and len(t) == 1:
        return t
    if len(t) >= 3 and t[0] in OPTION_LETTERS and t[1:3] == ". ":
        return t[0]
    # Defects "letter/lowercase-word" and "letter/first-word-only": any-case single-character
    # word, first one only, upper-cased. "A)", "(B)" and "B." land here and are read correctly.
    m = _SINGLE_CHAR_WORD.search(t)
    return m.group(1).upper() if m else None


def score_letter_compat(prediction: str, sample: Sample) -> float:
    """ScienceQA the official way: parsed letter equals the ground-truth letter."""
    letter = parse_option_letter_official(prediction)
    if letter is None or letter not in OPTION_LETTERS:
        return 0.0
    return 1.0 if letter == sample.answer.strip().upper() else 0.0


# --------------------------------------------------------------------------------------------
# TextVQA (soft VQA accuracy with the EvalAI answer processor)
# --------------------------------------------------------------------------------------------

# Contraction table of the EvalAI processor. It is applied to lower-cased words, so its entries
# with capitals ("Im", "Ive", "Id've") never fire and "lets" has no entry: the corrected table
# minus those four, plus the other apostrophe-less forms the official table knows. Double
# contractions ("couldnt've") are not listed; they do not occur in TextVQA answers.
_OFFICIAL_CONTRACTIONS = {
    k: v for k, v in _corrected._CONTRACTIONS.items() if k not in {"im", "ive", "id", "lets"}
}
_OFFICIAL_CONTRACTIONS.update(
    {
        "howll": "how'll",
        "maam": "ma'am",
        "mightve": "might've",
        "mustve": "must've",
        "neednt": "needn't",
        "notve": "not've",
        "oclock": "o'clock",
        "oughtnt": "oughtn't",
        "shant": "shan't",
        "somebodyll": "somebody'll",
        "somebodys": "somebody's",
        "someoned": "someone'd",
        "someonell": "someone'll",
        "someones": "someone's",
        "somethingd": "something'd",
        "somethingll": "something'll",
        "thered": "there'd",
        "therere": "there're",
        "twas": "'twas",
        "weve": "we've",
        "whatll": "what'll",
        "whatre": "what're",
        "whatve": "what've",
        "whens": "when's",
        "whered": "where'd",
        "whereve": "where've",
        "whod": "who'd",
        "wholl": "who'll",
        "whove": "who've",
        "whyll": "why'll",
        "whyre": "why're",
        "whys": "why's",
        "yall": "y'all",
    }
)


def official_vqa_process(s: str) -> str:
    """Normalize an answer the way the official TextVQA evaluator (EvalAI processor) does.

    Lower-case; delete every ',' and '?' and split "'s" into " 's"; for each other punctuation
    mark (the same set as :func:`~mcit.eval.scorers.normalize_answer`), delete all its
    occurrences if it touches a space anywhere in the string, else replace all of them with a
    space; drop periods not followed by a digit (at most 32 of them); map number words to digits,
    drop articles, restore contractions.
    """
    text = "" if s is None else str(s)
    # Defect "vqa_soft/evalai-normalization": commas are deleted, not spaced.
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    source = text
    for p in _corrected._PUNCTUATION:
        # Decided once per mark for the whole string, not per occurrence.
        if p + " " in source or " " + p in source:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    # The official call passes re.UNICODE (= 32) where the count goes.
    text = _corrected._STRAY_PERIOD.sub("", text, count=32)
    words: list[str] = []
    for word in text.split():
        word = _corrected._NUMBER_WORDS.get(word, word)
        if word not in _corrected._ARTICLES:
            words.append(_OFFICIAL_CONTRACTIONS.get(word, word))
    return " ".join(words)


def score_vqa_soft_compat(prediction: str, sample: Sample) -> float:
    """Standard soft VQA accuracy as the official TextVQA evaluator computes it.

    The formula (mean over references i of min(1, matches among the others / 3)) is the one of
    :func:`~mcit.eval.scorers.score_vqa_soft`; only the answer normalization differs
    (:func:`official_vqa_process`), which is why the corrected scorer is not reused as is.
    """
    pred = official_vqa_process(_text(prediction))
    refs = [official_vqa_process(a) for a in sample.answers]
    n = len(refs)
    if n == 0:
        return 0.0
    if n == 1:
        return 1.0 if refs[0] == pred else 0.0
    k = sum(r == pred for r in refs)
    # k references hit: each of them sees k-1 matching others, each miss sees k.
    return (k * min(1.0, (k - 1) / 3.0) + (n - k) * min(1.0, k / 3.0)) / n


# --------------------------------------------------------------------------------------------
# ImageNet (class)
# --------------------------------------------------------------------------------------------


def score_class_compat(prediction: str, sample: Sample) -> float:
    """ImageNet the official (LLaVA) way: substring either way, case-sensitive, first answer."""
    pred = _text(prediction)
    gt = sample.answer
    # Defect "class/empty-prediction": `pred in gt` holds for pred == "" and for any fragment.
    # Defect "class/case-sensitive": no lower-casing on either side.
    return 1.0 if (gt in pred) or (pred in gt) else 0.0


# --------------------------------------------------------------------------------------------
# Exact match: GQA, VizWiz / VQAv2, OCR-VQA
# --------------------------------------------------------------------------------------------


def score_gqa_compat(prediction: str, sample: Sample) -> float:
    """GQA: strip trailing periods, lower-case the prediction, compare with the stored answer."""
    # rstrip('.') removes every trailing period ("yes..." -> "yes"); the gold answer is not
    # touched (defect "exact/gqa-gold-as-is"; GQA answers are stored in lower case anyway).
    pred = _text(prediction).rstrip(".").lower()
    return 1.0 if pred == sample.answer else 0.0


def score_vqa_first_compat(prediction: str, sample: Sample) -> float:
    """VizWiz / VQAv2: case-insensitive exact match against the first answer only."""
    # Defect "exact/one-answer": answers[1:] are ignored; no normalization besides case.
    # .upper() on both sides, as official (differs from .lower() only for odd letters like 'ß').
    return 1.0 if _text(prediction).upper() == sample.answer.upper() else 0.0


def score_ocrvqa_compat(prediction: str, sample: Sample) -> float:
    """OCR-VQA: "Unanswerable" anywhere is wrong, else case-insensitive exact match."""
    pred = _text(prediction)
    # Defect "exact/ocrvqa-unanswerable": case-sensitive substring test, checked first.
    if "Unanswerable" in pred:
        return 0.0
    return 1.0 if pred.lower() == sample.answer.lower() else 0.0


def _task_key(task: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(task).lower())


COMPAT_TASK_SCORERS: dict[str, Scorer] = {
    "gqa": score_gqa_compat,
    "vizwiz": score_vqa_first_compat,
    "vqav2": score_vqa_first_compat,
    "ocrvqa": score_ocrvqa_compat,
}
"""Exact-match rule per task, keyed by the task name lower-cased without '-', '_' or spaces."""


def score_exact_compat(prediction: str, sample: Sample) -> float:
    """Dispatch on ``sample.task`` to the task's official exact-match rule.

    GQA -> :func:`score_gqa_compat`; VizWiz, VQAv2 -> :func:`score_vqa_first_compat`;
    OCRVQA / OCR-VQA -> :func:`score_ocrvqa_compat`; any other task -> the VizWiz/VQAv2 rule.
    """
    fn = COMPAT_TASK_SCORERS.get(_task_key(sample.task), score_vqa_first_compat)
    return fn(prediction, sample)


# --------------------------------------------------------------------------------------------
# Grounding (bbox)
# --------------------------------------------------------------------------------------------


def parse_box_official(text: str) -> list[float] | None:
    """Read a box the official way; None where the official script skips the sample.

    One leading space is dropped, '[' and ']' are removed, then the text is sliced ``[1:-1]``
    (defect "bbox/slice-after-unbracket": meant for the brackets, it cuts the first character of
    the first coordinate and the last character of the last one, so "[0.12, 0.34, 0.56, 0.78]"
    is read as [0.12, 0.34, 0.56, 0.7] and "[1.0, ...]" starts with 0.0), split on ',' and each
    piece read with ``float``. Not exactly four pieces, or a piece that is not a number -> None.
    The corners are not re-ordered.
    """
    t = "" if text is None else str(text)
    t = t[1:] if t[:1] == " " else t
    t = t.replace("[", "").replace("]", "")
    try:
        values = [float(x) for x in t[1:-1].split(",")]
    except ValueError:
        return None
    return values if len(values) == 4 else None


def _gt_box(sample: Sample) -> list[float] | None:
    # The official ground truth is the "answer_bbox" string, brackets removed, split on ',' and
    # read in full (no slicing). Our readers keep it parsed in extra["bbox"].
    ref = sample.extra.get("bbox") if sample.extra else None
    if ref is None:
        ref = sample.answer
    if isinstance(ref, str):
        try:
            values = [float(x) for x in ref.replace("[", "").replace("]", "").split(",")]
        except ValueError:
            return None
    else:
        try:
            values = [float(v) for v in ref]
        except (TypeError, ValueError):
            return None
    return values if len(values) == 4 else None


def _signed_iou(a: Sequence[float], b: Sequence[float]) -> float:
    # Defect "bbox/unordered-iou": areas use signed sides. This is why the corrected
    # scorers.box_iou (which re-orders corners first) is not reused here.
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def score_bbox_compat(prediction: str, sample: Sample) -> float:
    """Grounding the official way: :func:`parse_box_official`, then IoU > 0.5 (strictly).

    Both boxes are scaled by max(w, h) from ``sample.extra["size"]`` when present, as the
    official script does (IoU is scale-invariant; this only keeps its floating-point rounding).
    An unreadable prediction scores 0 (the official script skips it but still counts it).
    """
    pred = parse_box_official(_text(prediction))
    ref = _gt_box(sample)
    if pred is None or ref is None:
        return 0.0
    size = sample.extra.get("size") if sample.extra else None
    if size:
        side = max(size)
        pred = [v * side for v in pred]
        ref = [v * side for v in ref]
    return 1.0 if _signed_iou(pred, ref) > IOU_THRESHOLD else 0.0


# --------------------------------------------------------------------------------------------
# Registry and dispatcher
# --------------------------------------------------------------------------------------------

COMPAT_SCORERS: dict[str, Scorer] = {
    "letter": score_letter_compat,
    "vqa_soft": score_vqa_soft_compat,
    "exact": score_exact_compat,
    "class": score_class_compat,
    "bbox": score_bbox_compat,
}

assert set(COMPAT_SCORERS) == set(SCORERS), "compat registry must mirror the corrected one"

_REGISTRIES: dict[str, dict[str, Scorer]] = {"corrected": SCORERS, "coin-compat": COMPAT_SCORERS}


def score_mode(mode: str, kind: str, prediction: str, sample: Sample) -> float:
    """Score with scorer ``kind`` in scoring ``mode`` ("corrected" or "coin-compat")."""
    registry = _REGISTRIES.get(mode) if isinstance(mode, str) else None
    if registry is None:
        raise ValueError(f"unknown scoring mode {mode!r}; valid modes: {', '.join(MODES)}")
    try:
        fn = registry[kind]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(registry))
        raise ValueError(f"unknown scorer kind {kind!r}; valid kinds: {valid}") from None
    return fn(prediction, sample)
