"""The ``coin-compat`` scoring mode: the official CoIN evaluation pipeline, defects included.

The corrected scorers in :mod:`mcit.eval.scorers` are the default. This module reproduces, end
to end, what the scripts shipped with the CoIN paper compute (LLaVA variants,
``scripts/LLaVA/Eval/*.sh`` running ``ETrain/Eval/LLaVA/CoIN/model_*.py`` to write the answers
and ``eval_*.py`` / ``m4c_evaluator.py`` to score them), so that numbers can be set next to
published ones. Every reproduced defect is listed in :data:`DEFECTS` and commented where it is
reproduced.

Two steps, both per task:

1. :func:`scored_text` turns the decoded generation into the text the official generation
   script writes: ``strip()``, and for ScienceQA, ImageNet, Grounding and VQAv2 (the two scripts
   ``model_vqa_science.py`` and ``model_vqa.py``) a trailing stop string ``</s>`` removed and
   stripped again. Nothing else: the whole output is scored, not only its first line. In the
   ``corrected`` mode the same function returns :func:`~mcit.eval.scorers.clean_generation`.
   :data:`OFFICIAL_MAX_NEW_TOKENS` holds the official generation budgets.
2. The compat scorers (same signature as the corrected ones, ``fn(prediction, sample) -> float``
   in ``[0, 1]``) apply the task's official ``eval_*.py`` rule. The official "exact match" rule
   differs per task, so the ``exact`` compat scorer dispatches on ``sample.task`` (see
   :data:`COMPAT_TASK_SCORERS`); an unknown task gets the VizWiz/VQAv2 rule.

Corrected vs official scoring, every difference (input -> corrected score vs official score;
each example is asserted in ``tests/test_coin_compat.py``):

* Text scored (all tasks): corrected keeps the first line and cuts at an end-of-sequence marker
  anywhere; official scores the whole stripped output and removes a trailing ``</s>`` only for
  ScienceQA, ImageNet, Grounding and VQAv2. GQA "yes\\nThe table is wooden." (gold "yes") -> 1
  vs 0; VizWiz "unanswerable</s>" (gold "unanswerable") -> 1 vs 0.
* ScienceQA: official reads the first single-character word of any case. "a dog" (gold A) ->
  0 vs 1; "I think C" (gold C) -> 1 vs 0.
* TextVQA: official normalization deletes commas, decides per punctuation mark for the whole
  string, removes at most 32 stray periods; its contraction table lacks "im"/"ive"/"id"/"lets",
  maps "somebody'd" backwards and does not split the "'s" of a restored contraction.
  "red,blue" (10 x "red blue") -> 1 vs 0; "Im" (10 x "i'm") -> 1 vs 0; "hes" (10 x "he's")
  -> 1 vs 0.
* ImageNet: official accepts "gold in prediction or prediction in gold", case-sensitive. ""
  (gold "goldfish") -> 0 vs 1; "Goldfish" -> 1 vs 0.
* GQA: official only strips trailing periods from and lower-cases the prediction. "yes!" (gold
  "yes") -> 1 vs 0; "the table" (gold "table") -> 1 vs 0.
* VizWiz, VQAv2: official is a case-insensitive exact match against the single stored answer.
  VizWiz "Yes." (gold "yes") -> 1 vs 0; VQAv2 "two" (gold "2") -> 1 vs 0.
* Grounding: official slices the unbracketed text ``[1:-1]``, needs comma-separated values and
  takes signed sides; corrected reads the first four numbers in full and orders the corners.
  "[0.10, 0.22, 0.50, 0.39]" (gold [0.10, 0.20, 0.50, 0.40]) -> 1 vs 0;
  "0.1 0.1 0.5 0.5" (gold [0.1, 0.1, 0.5, 0.5]) -> 1 vs 0; swapped corners
  "[0.50, 0.50, 0.10, 0.100]" (same gold) -> 1 vs 0. Official compares the floating-point IoU,
  corrected allows 1e-9 for rounding: "[0.19, 0.21, 0.82, 0.530]" (gold
  [0.43, 0.21, 0.79, 0.49], IoU exactly 1/2) -> 0 vs 1.
* OCR-VQA: official counts any prediction containing "Unanswerable" as wrong and compares
  lower-cased text only. "Unanswerable Questions" (same gold) -> 1 vs 0; "Hobbit" (gold
  "The Hobbit") -> 1 vs 0.

``tests/test_official_differential.py`` checks both steps against the official scripts, run
unmodified, case by case (at least 50 cases per task).

Not reproduced (whole-file behaviour, not per-sample): the ImageNet script pairs predictions with
ground truths by line order rather than by ``question_id``; the GQA evaluator keys predictions
by question id (a repeated id keeps the last answer) and counts balanced questions only; the
OCR-VQA script prints ``Samples: 0``; the TextVQA evaluator asserts exactly 10 reference answers
(here any number is accepted, and a single reference degenerates to exact match as in the
corrected scorer); a grounding record without ``size`` would crash the official script (here
the scaling is skipped). Where the official scorer reads its ground truth from another file
(TextVQA's 10 answers, ScienceQA's problems, GQA's balanced questions), the readers put it in
the sample.

Public API: :func:`scored_text`, :data:`OFFICIAL_MAX_NEW_TOKENS`, :data:`COMPAT_SCORERS`,
:data:`COMPAT_TASK_SCORERS`, :data:`DEFECTS`, :data:`MODES`, :func:`score_mode`, the scorers
``score_*_compat`` and the official parsers :func:`parse_option_letter_official`,
:func:`parse_box_official` and :func:`official_vqa_process`.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

from mcit.data.schema import Sample
from mcit.eval import scorers as _corrected
from mcit.eval.scorers import IOU_THRESHOLD, OPTION_LETTERS, SCORERS, clean_generation

__all__ = [
    "COMPAT_SCORERS",
    "COMPAT_TASK_SCORERS",
    "DEFECTS",
    "MODES",
    "OFFICIAL_MAX_NEW_TOKENS",
    "scored_text",
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
    "text/stop-string-kept": (
        "TextVQA, GQA, VizWiz and OCR-VQA: the generation scripts keep a trailing stop string "
        "'</s>' in the scored text, so 'yes</s>' does not match 'yes'."
    ),
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
        "'redblue') and decides per punctuation mark for the whole string whether to delete or "
        "space it."
    ),
    "vqa_soft/contraction-table": (
        "TextVQA: the official contraction table maps \"somebody'd\" to 'somebodyd' (backwards), "
        "its capitalized keys 'Im', 'Ive', \"Id've\" and \"I'dve\" never match the lower-cased "
        "words, it has no 'id' or 'lets' entry, and a restored \"'s\" is not split off ('hes' "
        "-> \"he's\" while \"he's\" becomes \"he 's\")."
    ),
    "vqa_soft/period-limit": (
        "TextVQA: the period regex gets re.UNICODE (32) in its count position, so at most 32 "
        "periods not followed by a digit are removed."
    ),
    "bbox/slice-after-unbracket": (
        "Grounding: the text is sliced [1:-1] after the brackets were already removed, dropping "
        "the first character of the first coordinate and the last digit of the last one."
    ),
    "bbox/unordered-iou": (
        "Grounding: IoU uses signed widths and heights, so a box with swapped corners gets IoU 0 "
        "instead of being re-ordered."
    ),
    "bbox/float-boundary": (
        "Grounding: IoU > 0.5 is tested in floating point, so a box whose IoU is exactly one "
        "half may pass or fail depending on rounding."
    ),
}


def _task_key(task: str) -> str:
    # "OCR-VQA", "ocr_vqa" and "OCRVQA" name the same task.
    return re.sub(r"[^a-z0-9]", "", str(task).lower())


# --------------------------------------------------------------------------------------------
# The text that is scored, and the generation budgets
# --------------------------------------------------------------------------------------------

# The generation script each scripts/LLaVA/Eval/<n>_eval_<task>.sh runs for a task.
_GENERATION_SCRIPT = {
    "ScienceQA": "model_vqa_science.py",
    "TextVQA": "model_text_vqa.py",
    "ImageNet": "model_vqa.py",
    "GQA": "model_gqa.py",
    "VizWiz": "model_vizwiz.py",
    "Grounding": "model_vqa.py",
    "VQAv2": "model_vqa.py",
    "OCRVQA": "model_ocr_vqa.py",
}
_SCRIPT_BY_KEY = {_task_key(task): script for task, script in _GENERATION_SCRIPT.items()}

# model_vqa_science.py and model_vqa.py pass max_new_tokens=1024 literally; the other four read
# --max_new_tokens, which no .sh script sets, so its argparse default 128 applies.
_SCRIPT_MAX_NEW_TOKENS = {
    "model_vqa_science.py": 1024,
    "model_vqa.py": 1024,
    "model_text_vqa.py": 128,
    "model_gqa.py": 128,
    "model_vizwiz.py": 128,
    "model_ocr_vqa.py": 128,
}

OFFICIAL_MAX_NEW_TOKENS: dict[str, int] = {
    task: _SCRIPT_MAX_NEW_TOKENS[script] for task, script in _GENERATION_SCRIPT.items()
}
"""Generation budget (new tokens) of the official CoIN evaluation, by mcit task name.

ScienceQA 1024 (``model_vqa_science.py``: ``max_new_tokens=1024`` hard-coded); ImageNet,
Grounding and VQAv2 1024 (all three run ``model_vqa.py``, which hard-codes 1024 too); TextVQA,
GQA, VizWiz and OCRVQA 128 (``model_text_vqa.py``, ``model_gqa.py``, ``model_vizwiz.py``,
``model_ocr_vqa.py``: the argparse default of ``--max_new_tokens``, which
``scripts/LLaVA/Eval/{2,4,5,8}_eval_*.sh`` do not pass).
"""

# sep2 of the vicuna_v1 conversation template, the --conv-mode every .sh script passes.
_STOP_STRING = "</s>"
# The two scripts that remove a trailing stop string after strip(); the others keep it.
_CUTS_STOP_STRING = frozenset({"model_vqa_science.py", "model_vqa.py"})


def _official_generation_text(task: str, raw: str) -> str:
    text = "" if raw is None else str(raw)
    text = text.strip()
    if _SCRIPT_BY_KEY.get(_task_key(task)) in _CUTS_STOP_STRING:
        if text.endswith(_STOP_STRING):
            text = text[: -len(_STOP_STRING)]
        text = text.strip()
    # Defect "text/stop-string-kept": the other scripts write the stripped text as is.
    return text


def scored_text(mode: str, task: str, raw: str) -> str:
    """The text a scorer sees for the decoded generation ``raw`` of ``task`` in ``mode``.

    ``raw`` is the new tokens decoded with ``skip_special_tokens=True``, as the official scripts
    decode them. "corrected": :func:`~mcit.eval.scorers.clean_generation` (first line, cut at an
    end-of-sequence leftover). "coin-compat": exactly what the task's official generation script
    writes: ``raw.strip()``; for ScienceQA (``model_vqa_science.py``) and ImageNet, Grounding,
    VQAv2 (``model_vqa.py``) a trailing ``</s>`` is then removed and the text stripped again.
    A task the official scripts do not know is only stripped.
    """
    if mode == "corrected":
        return clean_generation(raw)
    if mode == "coin-compat":
        return _official_generation_text(task, raw)
    raise ValueError(f"unknown scoring mode {mode!r}; valid modes: {', '.join(MODES)}")


def _text(prediction: object) -> str:
    # The official text is already stripped (scored_text); stripping again changes nothing there
    # and keeps direct calls with unstripped text meaningful.
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

# The official table is the standard VQA one (:data:`mcit.eval.scorers._CONTRACTIONS`) as the
# EvalAI processor ships it. Defect "vqa_soft/contraction-table": its keys "Id've", "I'dve", "Im"
# and "Ive" are capitalized and never match a lower-cased word, it has no "id"/"lets" entry (mcit
# additions), and it maps "somebody'd" to "somebodyd" instead of the reverse. Its other entries
# ("let's" -> "let's", keys containing "'s") change nothing here or never fire after the "'s"
# split, so leaving them out gives the same results.
_NOT_OFFICIAL = frozenset({"id've", "i'dve", "im", "ive", "id", "lets", "somebodyd"})
_OFFICIAL_CONTRACTIONS = {
    k: v for k, v in _corrected._CONTRACTIONS.items() if k not in _NOT_OFFICIAL
}
_OFFICIAL_CONTRACTIONS["somebody'd"] = "somebodyd"


def official_vqa_process(s: str) -> str:
    """Normalize an answer the way the official TextVQA evaluator (EvalAI processor) does.

    Lower-case; delete every ',' and '?' and split "'s" into " 's"; for each other punctuation
    mark (the same set as :func:`~mcit.eval.scorers.normalize_answer`), delete all its
    occurrences if it touches a space anywhere in the string, else replace all of them with a
    space; drop the first 32 periods not followed by a digit; map number words to digits, drop
    articles, then restore contractions with the official table.
    """
    text = "" if s is None else str(s)
    # Defect "vqa_soft/evalai-normalization": commas are deleted, not spaced.
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    source = text
    for p in _corrected._PUNCTUATION:
        # Decided once per mark for the whole string, not per occurrence. (The official test also
        # deletes every mark when a digit-comma-digit is present, which cannot happen any more:
        # the commas are gone.)
        if p + " " in source or " " + p in source:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    # Defect "vqa_soft/period-limit": re.UNICODE (= 32) is passed where the count goes.
    text = _corrected._STRAY_PERIOD.sub("", text, count=32)
    words = [_corrected._NUMBER_WORDS.get(w, w) for w in text.split()]
    words = [w for w in words if w not in _corrected._ARTICLES]
    return " ".join(_OFFICIAL_CONTRACTIONS.get(w, w) for w in words)


def score_vqa_soft_compat(prediction: str, sample: Sample) -> float:
    """Soft VQA accuracy as the official TextVQA evaluator computes it.

    The leave-one-out formula (mean over references i of min(1, matches among the others / 3),
    summed in reference order as the official evaluator does) is shared with
    :func:`~mcit.eval.scorers.score_vqa_soft`; only the answer normalization differs
    (:func:`official_vqa_process`). ``sample.answers`` holds the 10 official human answers.
    """
    pred = official_vqa_process(_text(prediction))
    return _corrected.leave_one_out_accuracy(pred, [official_vqa_process(a) for a in sample.answers])


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

    '[' and ']' are removed, then the text is sliced ``[1:-1]``
    (defect "bbox/slice-after-unbracket": meant for the brackets, it cuts the first character of
    the first coordinate and the last character of the last one, so "[0.12, 0.34, 0.56, 0.78]"
    is read as [0.12, 0.34, 0.56, 0.7] and "[1.0, ...]" starts with 0.0), split on ',' and each
    piece read with ``float``. Not exactly four pieces, or a piece that is not a number -> None.
    The corners are not re-ordered.
    """
    t = "" if text is None else str(text)
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
    """Grounding the official way: :func:`parse_box_official`, then IoU > 0.5 in floating point.

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
    # Defect "bbox/float-boundary": no tolerance, unlike the corrected scorer.
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
