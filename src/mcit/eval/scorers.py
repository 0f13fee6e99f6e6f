"""Corrected per-task scorers for the CoIN benchmark (the default scoring mode).

Every scorer has the signature ``fn(prediction: str, sample: Sample) -> float`` and returns a
value in ``[0, 1]``. Scorers are pure: they do not clean the raw generation themselves; the
evaluation loop passes them :func:`clean_generation` of the model output (via
:func:`mcit.eval.coin_compat.scored_text`).

Every difference from the official CoIN scripts (the ``coin-compat`` mode), with an example
each, is listed in the docstring of :mod:`mcit.eval.coin_compat`.

Public API: :func:`normalize_answer`, :func:`parse_option_letter`, :func:`parse_box`,
:func:`box_iou`, :func:`clean_generation`, :func:`leave_one_out_accuracy`, the scorers
:func:`score_letter`, :func:`score_vqa_soft`, :func:`score_exact`, :func:`score_class`,
:func:`score_bbox`, the registry :data:`SCORERS`, the dispatcher :func:`score` and
the benchmark files' scorer names (:data:`mcit.data.benchmark.SCORER_NAMES`).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from mcit.data.benchmark import SCORER_NAMES
from mcit.data.schema import Sample

__all__ = [
    "normalize_answer",
    "parse_option_letter",
    "parse_box",
    "box_iou",
    "clean_generation",
    "leave_one_out_accuracy",
    "score_letter",
    "score_vqa_soft",
    "score_exact",
    "score_class",
    "score_bbox",
    "SCORERS",
    "score",
    "OPTION_LETTERS",
    "IOU_THRESHOLD",
    "IOU_TOLERANCE",
]

Scorer = Callable[[str, Sample], float]

# --------------------------------------------------------------------------------------------
# Answer normalization (standard VQA conventions)
# --------------------------------------------------------------------------------------------

# Punctuation handled by the VQA convention. The apostrophe is deliberately absent (contractions
# such as "don't" must survive) and so is the period, which gets its own rule (decimal points).
_PUNCTUATION = frozenset(';/[]"{}()=+\\_-><@`,?!')

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

_ARTICLES = frozenset({"a", "an", "the"})

# The standard VQA contraction table (VQA evaluation toolkit, also used by EvalAI/MMF): a spelling
# with a missing or misplaced apostrophe -> the canonical contraction, double contractions
# included. Keys are lower-case because they are looked up after lower-casing (the standard
# table's "Im", "Ive", "Id've", "I'dve" keys could never match), its backwards entry
# "somebody'd" -> "somebodyd" is turned round, and "id" and "lets" are mcit additions.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "id": "i'd",
    "id've": "i'd've",
    "i'dve": "i'd've",
    "im": "i'm",
    "ive": "i've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "lets": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebodyd": "somebody'd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d)")
# A period is kept only when a digit follows it ("3.14", ".5"); sentence-final periods and
# abbreviation dots go.
_STRAY_PERIOD = re.compile(r"\.(?!\d)")


def _strip_punctuation(text: str) -> str:
    """Remove VQA punctuation.

    A punctuation mark touching whitespace or a string boundary is dropped ("yes!" -> "yes");
    one sitting between two non-space characters becomes a space so the words it joined stay
    separate ("black/white" -> "black white"). A comma between digits is a thousands separator
    and is removed first ("1,000" -> "1000").
    """
    text = _THOUSANDS_COMMA.sub("", text)
    out: list[str] = []
    n = len(text)
    for i, ch in enumerate(text):
        if ch not in _PUNCTUATION:
            out.append(ch)
            continue
        before = text[i - 1] if i > 0 else " "
        after = text[i + 1] if i + 1 < n else " "
        inner = not before.isspace() and not after.isspace()
        inner = inner and before not in _PUNCTUATION and after not in _PUNCTUATION
        out.append(" " if inner else "")
    return _STRAY_PERIOD.sub("", "".join(out))


def _split_possessive(text: str) -> str:
    # The standard VQA processor splits "'s" off its word ("man's" -> "man 's").
    return text.replace("'s", " 's")


def normalize_answer(s: str) -> str:
    """Normalize an answer string the standard VQA way.

    Steps: lower-case and strip; "'s" split off its word ("McDonald's" -> "mcdonald 's");
    punctuation removed (decimal points inside numbers kept, thousands commas dropped, see
    :func:`_strip_punctuation`); number words zero..ten (and "none") mapped to digits; articles
    a/an/the removed; contractions written without (or with a misplaced) apostrophe restored with
    the standard table ("dont" -> "don't", "couldnt've" -> "couldn't've", "oclock" ->
    "o'clock"), a restored "'s" split like any other ("hes" -> "he 's", as "he's"); runs of
    whitespace collapsed to one space.
    """
    if s is None:
        return ""
    text = str(s).lower().replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(_split_possessive(text))
    words: list[str] = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        canonical = _CONTRACTIONS.get(word)
        words.append(word if canonical is None else _split_possessive(canonical))
    return " ".join(words)


# --------------------------------------------------------------------------------------------
# Generation cleanup
# --------------------------------------------------------------------------------------------

# End-of-sequence strings that survive decoding when special tokens are not skipped.
_EOS_MARKERS = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<eos>", "<|end|>")


def clean_generation(text: str) -> str:
    """Tidy a raw model output before scoring.

    Strips surrounding whitespace, cuts the text at an end-of-sequence leftover (e.g. ``</s>``
    when special tokens were not skipped while decoding) and keeps only the first line. CoIN
    answers are always one line (a letter, a short phrase or a box), but a model with a weak stop
    criterion sometimes keeps talking after the answer ("B\\n\\nExplanation: ..."); anything
    after the first line is not part of the answer and would break exact matching.
    """
    if text is None:
        return ""
    text = str(text)
    for marker in _EOS_MARKERS:
        pos = text.find(marker)
        if pos != -1:
            text = text[:pos]
    text = text.strip()
    return text.split("\n", 1)[0].strip()


# --------------------------------------------------------------------------------------------
# Multiple choice (ScienceQA)
# --------------------------------------------------------------------------------------------

OPTION_LETTERS = "ABCDE"

_WHOLE_LETTER = re.compile(r"^\(?([A-Ea-e])\)?[.)]?$")
_LEADING_LETTER = re.compile(r"^(?:\(([A-E])\)|([A-E])[.)](?=\s|$))")
_WORD_EDGE_PUNCT = ".,;:!?()[]{}\"'`*"


def parse_option_letter(text: str) -> str | None:
    """Read an option letter (A-E) from a model output, or None.

    In order: (1) the whole (stripped) output is a letter, optionally followed by '.' or ')'
    or wrapped in parentheses; lower-case is accepted here since nothing else could be meant;
    (2) the output starts with "X. ", "X) " or "(X)"; (3) the first whitespace-separated word that
    is, after stripping surrounding punctuation, a single upper-case option letter
    ("The answer is B." -> "B"). Steps 2 and 3 require upper case so that the article "a" is not
    read as option A. Unparsable -> None.
    """
    if text is None:
        return None
    t = str(text).strip()
    if not t:
        return None
    m = _WHOLE_LETTER.match(t)
    if m:
        return m.group(1).upper()
    m = _LEADING_LETTER.match(t)
    if m:
        return m.group(1) or m.group(2)
    for word in t.split():
        w = word.strip(_WORD_EDGE_PUNCT)
        if len(w) == 1 and w in OPTION_LETTERS:
            return w
    return None


def score_letter(prediction: str, sample: Sample) -> float:
    """1.0 if the parsed option letter equals ``sample.answer`` (upper-cased); None is wrong."""
    letter = parse_option_letter(prediction)
    if letter is None:
        return 0.0
    return 1.0 if letter == sample.answer.strip().upper() else 0.0


# --------------------------------------------------------------------------------------------
# Open-ended VQA
# --------------------------------------------------------------------------------------------


def leave_one_out_accuracy(pred: str, refs: Sequence[str]) -> float:
    """Soft VQA accuracy of a normalized prediction against normalized reference answers.

    The mean over references i of min(1, #{j != i : refs[j] == pred} / 3), summed in reference
    order as the official TextVQA evaluator sums it (so both scoring modes give bit-identical
    values). No reference -> 0.0; a single reference -> exact match, since leave-one-out over
    one answer leaves nothing to match.
    """
    if not refs:
        return 0.0
    if len(refs) == 1:
        return 1.0 if pred == refs[0] else 0.0
    total_hits = sum(r == pred for r in refs)
    accs = [min(1.0, (total_hits - (r == pred)) / 3.0) for r in refs]
    return sum(accs) / len(accs)


def score_vqa_soft(prediction: str, sample: Sample) -> float:
    """Standard VQA accuracy over all reference answers (usually 10 human answers).

    For each reference i, acc_i = min(1, #{j != i : answer_j == prediction} / 3); the score is the
    mean of acc_i. Matching is on :func:`normalize_answer` strings. With 10 answers, k matches
    give 0.3, 0.6, 0.9, 1.0 for k = 1, 2, 3, >=4. With a single reference answer the formula
    would always give 0, so it degenerates to exact match of the normalized strings. With 2-3
    answers the formula is applied as is (its maximum is then below 1), as in the standard metric.
    """
    pred = normalize_answer(prediction)
    return leave_one_out_accuracy(pred, [normalize_answer(a) for a in sample.answers])


def score_exact(prediction: str, sample: Sample) -> float:
    """1.0 if the normalized prediction equals the normalized form of any reference answer.

    An empty prediction only matches an (equally empty) reference, which real data never has.
    """
    pred = normalize_answer(prediction)
    return 1.0 if any(pred == normalize_answer(a) for a in sample.answers) else 0.0


# --------------------------------------------------------------------------------------------
# Classification (ImageNet)
# --------------------------------------------------------------------------------------------


def _class_match(pred: str, cls: str) -> bool:
    if not pred or not cls:
        return False
    if pred == cls:
        return True
    # Whole-word phrase, allowing a plural "s"/"es" after the last word.
    pattern = r"(?<![\w'])" + re.escape(cls) + r"(?:e?s)?(?![\w'])"
    return re.search(pattern, pred) is not None


def score_class(prediction: str, sample: Sample) -> float:
    """Class-name match (the corrected version of the official ImageNet check).

    Both sides are normalized; correct if the prediction equals a reference class name or the
    class name occurs in the prediction as a whole-word phrase ("a photo of a goldfish" or
    "goldfishes" match "goldfish", "goldfishbowl" does not). Unlike the official check, the
    prediction being a substring of the class name is not enough, so an empty prediction is wrong.
    """
    pred = normalize_answer(prediction)
    return 1.0 if any(_class_match(pred, normalize_answer(a)) for a in sample.answers) else 0.0


# --------------------------------------------------------------------------------------------
# Grounding
# --------------------------------------------------------------------------------------------

IOU_THRESHOLD = 0.5
# An IoU must exceed the threshold by more than this to pass. Coordinates such as 0.19 are not
# exact in binary, so an IoU that is exactly 1/2 can come out as 0.5000000000000001. The IoU of
# two boxes written with up to four decimals in [0, 1] is either exactly 1/2 or at least 2.5e-9
# away from it (a ratio of integers below 2e8), so the tolerance only absorbs rounding.
IOU_TOLERANCE = 1e-9

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def _ordered(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def parse_box(text: str) -> list[float] | None:
    """First four numbers in ``text`` as ``[x1, y1, x2, y2]`` with x1 <= x2 and y1 <= y2.

    Accepts "[0.12, 0.3, 0.5, 0.77]", the same without brackets, space-separated values and
    integers. Returns None when fewer than four numbers are present.
    """
    if text is None:
        return None
    nums = _NUMBER.findall(str(text))
    if len(nums) < 4:
        return None
    return _ordered([float(v) for v in nums[:4]])


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (0.0 if the union is empty)."""
    ax1, ay1, ax2, ay2 = _ordered(a)
    bx1, by1, bx2, by2 = _ordered(b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    if union <= 0.0:
        return 0.0
    return inter / union


def _reference_box(sample: Sample) -> list[float] | None:
    ref: Any = sample.extra.get("bbox") if sample.extra else None
    if ref is None:
        return parse_box(sample.answer)
    if isinstance(ref, str):
        return parse_box(ref)
    try:
        values = [float(v) for v in ref]
    except (TypeError, ValueError):
        return None
    return _ordered(values) if len(values) >= 4 else None


def score_bbox(prediction: str, sample: Sample) -> float:
    """1.0 if IoU(parsed prediction, reference box) > 0.5 (strictly, see :data:`IOU_TOLERANCE`).

    The reference is ``sample.extra["bbox"]`` when present (list or "[...]" string), else the
    box parsed from ``sample.answer``. An unparsable prediction or reference scores 0.0.
    """
    pred = parse_box(prediction)
    ref = _reference_box(sample)
    if pred is None or ref is None:
        return 0.0
    return 1.0 if box_iou(pred, ref) > IOU_THRESHOLD + IOU_TOLERANCE else 0.0


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

SCORERS: dict[str, Scorer] = {
    "letter": score_letter,
    "vqa_soft": score_vqa_soft,
    "exact": score_exact,
    "class": score_class,
    "bbox": score_bbox,
}


def score(kind: str, prediction: str, sample: Sample) -> float:
    """Score ``prediction`` against ``sample`` with the scorer named ``kind``."""
    try:
        fn = SCORERS[kind]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(SCORERS))
        raise ValueError(f"unknown scorer kind {kind!r}; valid kinds: {valid}") from None
    return fn(prediction, sample)


assert tuple(SCORERS) == SCORER_NAMES, "the scorers must be the ones benchmark files can name"
