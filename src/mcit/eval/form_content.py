"""Format and content of one answer, decided separately (CoIN's "alignment vs knowledge" question).

CoIN argues that forgetting is mostly lost *instruction alignment* (the model stops answering in
the form its instruction asks for) rather than lost *knowledge*. The task scorers mix the two: "red"
for a multiple-choice question whose option B is red scores 0 exactly like a wrong letter. This
module splits every prediction into two independent decisions:

* **format-valid**: the answer has the form its instruction asks for (:func:`expected_form`):

  ``letter``  (scorer ``letter``): the whole answer is one option letter ("B", "B.", "(B)") and that
              letter is one of the offered options.
  ``box``     (scorer ``bbox``): exactly "[x1, y1, x2, y2]": four numbers in [0, 1], x1 <= x2, y1 <= y2.
  ``label``   (scorer ``class``): one label of the list the question gives ("... one of: cat, dog");
              with no list given, a short phrase (below).
  ``yes/no``  (every reference is yes or no): "yes" or "no".
  ``number``  (every reference is a number): a number, digits or a number word ("2", "two").
  ``phrase``  (otherwise): a single word or short phrase: at most :data:`PHRASE_WORDS` words, or
              as many as the longest reference (long book titles are still phrases), and no
              sentence ("the sign says stop": a verb such as is/says/shows the references lack).

  Where the question text allows 'Unanswerable' (VizWiz), that word is a valid answer of any
  form, but a refusal worded otherwise ("I cannot tell") is not. For every form but ``letter`` and
  ``box``, an answer in another task's form (a bare option letter, a box) is a format failure.

* **content-correct in any form** (a value in [0, 1], the task's corrected scorer applied to what
  the answer says): an option letter stands for its option's text and an option's text counts as
  its letter, also inside a sentence that names no other option; "two" == "2"; a box is judged by its region (the ``bbox`` scorer reads any four
  numbers and orders the corners); case, punctuation and articles never matter; a reference stated
  inside a longer answer ("It is a goldfish.", "Yes, it is red.") counts; a refusal worded any way
  counts as "unanswerable".

The expected form is read from the task's scorer and the sample (references, question text), not
from task names. :func:`option_texts` and :func:`content_text` are also what the offline General
Knowledge judge uses, so both views resolve an option letter the same way.

Public API: :class:`FormContent`, :func:`expected_form`, :func:`decide`, :func:`decide_record`,
:func:`record_fields`, :func:`option_texts`, :func:`resolve_option`, :func:`content_text`,
:func:`given_labels`, :data:`FORMS`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from mcit.data.schema import Sample

# The scorers' own rules, private there, reused so that both views read a letter or a label alike.
from .scorers import (OPTION_LETTERS, _WHOLE_LETTER, _class_match, normalize_answer, parse_option_letter, score_bbox,
                      score_class, score_exact, score_vqa_soft)

__all__ = ["FORMS", "FormContent", "PHRASE_WORDS", "content_text", "decide", "decide_record", "expected_form",
           "given_labels", "option_texts", "record_fields", "resolve_option"]

FORMS = ("letter", "box", "label", "yes/no", "number", "phrase")
PHRASE_WORDS = 5  # "a single word or phrase": LLaVA-style short answers are 1-3 words; 5 leaves room
UNANSWERABLE = "unanswerable"

# Ways of saying "unanswerable" that are right in content but not the word the instruction asks for.
_REFUSALS = ("unanswerable", "not answerable", "cannot answer", "can't answer", "cannot be answered",
             "can't be answered", "cannot tell", "can't tell", "cannot be determined", "can't be determined",
             "cannot determine", "can't determine", "unknown", "not sure", "i don't know", "unclear",
             "not enough information", "insufficient information")
_YES_NO = ("yes", "no")
# Verbs that make an answer a sentence ("it is red", "the sign says stop") rather than a phrase;
# a verb that a reference itself holds ("This Is Us") does not count.
_SENTENCE_VERBS = frozenset({"is", "are", "was", "were", "'s", "says", "say", "shows", "show", "see", "think",
                             "looks", "appears", "contains", "reads", "answer"})
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_NUMBER_IN_TEXT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
# "[x1, y1, x2, y2]" as the training answers write it: brackets, commas, four plain numbers.
_BOX_FORM = re.compile(r"^\[\s*(\S+?)\s*,\s*(\S+?)\s*,\s*(\S+?)\s*,\s*(\S+?)\s*\]$")
# An option on its own line ("A. red", "A) red", "(A) red"), or LLaVA's inline "Options: (A) red (B) blue".
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-E])\)|([A-E])[.)])\s*(\S.*?)\s*$")
_INLINE_OPTION = re.compile(r"\(([A-E])\)\s*")
# A list of labels the question offers: "... one of the following: cat, dog or bird".
_LABEL_LIST = re.compile(r"(?:options?|choices?|labels?|class(?:es)?|categor(?:y|ies)|one of|following|from)"
                         r"[^:\n]{0,40}:\s*([^\n]+)", re.IGNORECASE)


@dataclass(frozen=True)
class FormContent:
    """The two decisions for one answer: its expected ``form`` (one of :data:`FORMS`), whether
    it has that form, and its content score in [0, 1] whatever its form."""

    form: str
    format_valid: bool
    content: float


# ------------------------------------------------------------------------------ options


def option_texts(text: str) -> dict[str, str]:
    """{letter: option text} of the options a question lists ("B. red" lines or an inline
    "(A) red (B) blue"); {} when it lists none."""
    options: dict[str, str] = {}
    for line in str(text or "").splitlines():
        inline = _INLINE_OPTION.split(line)
        if len(inline) >= 5:  # "head (A) x (B) y": at least two inline options on one line
            for letter, body in zip(inline[1::2], inline[2::2]):
                options.setdefault(letter, body.strip().rstrip(","))
            continue
        m = _OPTION_LINE.match(line)
        if m and m.group(3):
            options.setdefault(m.group(1) or m.group(2), m.group(3))
    return options


def resolve_option(prediction: str, options: dict[str, str]) -> str | None:
    """The option letter an answer means: an option's text said in any form ("a circle", "two"
    for "2"); else the one option whose text the answer states ("It is green."); else a letter
    read the scorer's way ("B", "The answer is B."); else None. Text first, so that the article
    in "A circle" is not taken for option A."""
    said = normalize_answer(prediction)  # "" for "A" alone (an article): read as a letter below
    texts = {letter: normalize_answer(body) for letter, body in options.items()}
    for letter, text in texts.items():
        if said and said == text:
            return letter
    stated = [letter for letter, text in texts.items() if _class_match(said, text)]
    if len(stated) == 1:
        return stated[0]
    letter = parse_option_letter(prediction)
    return letter if letter in options else None


def content_text(prediction: str, question: str) -> str:
    """What an answer says: the option's text for an option letter of ``question``, else the
    answer itself ("B" with "B. red" in the question -> "red")."""
    options = option_texts(question)
    letter = resolve_option(prediction, options) if options else None
    return options[letter] if letter is not None else prediction


# ------------------------------------------------------------------------------ the expected form


def given_labels(text: str) -> list[str]:
    """The labels a question offers to choose from ("Choose one of: cat, dog, bird" -> [cat, dog,
    bird]); [] when it offers none. Items are split on commas, '/', '|' and a final "or"."""
    m = _LABEL_LIST.search(str(text or ""))
    if not m:
        return []
    items = [i.strip(" .?") for i in re.split(r",|/|\||\bor\b", m.group(1))]
    items = [i for i in items if i]
    return items if len(items) >= 2 and all(len(i.split()) <= 4 for i in items) else []


def _all_references(answers: Sequence[str], test) -> bool:
    normalized = [normalize_answer(a) for a in answers]
    return bool(normalized) and all(test(a) for a in normalized)


def expected_form(sample: Sample, scorer: str) -> str:
    """The form ``sample``'s instruction asks for, from the task's scorer and the sample."""
    if scorer == "letter":
        return "letter"
    if scorer == "bbox":
        return "box"
    if scorer == "class":
        return "label"
    if _all_references(sample.answers, lambda a: a in _YES_NO):
        return "yes/no"
    if _all_references(sample.answers, lambda a: bool(_NUMBER.match(a))):
        return "number"
    return "phrase"


def _allows_unanswerable(sample: Sample) -> bool:
    return UNANSWERABLE in sample.text.lower()


def _is_refusal(said: str) -> bool:
    return any(_class_match(said, refusal) for refusal in _REFUSALS)


# ------------------------------------------------------------------------------ format


def _valid_letter(prediction: str, sample: Sample) -> bool:
    m = _WHOLE_LETTER.match(prediction.strip())
    if not m:
        return False
    options = option_texts(sample.text)
    return not options or m.group(1).upper() in options  # a letter no option carries is no choice


def _valid_box(prediction: str) -> bool:
    m = _BOX_FORM.match(prediction.strip())
    if not m:
        return False
    try:
        x1, y1, x2, y2 = (float(v) for v in m.groups())
    except ValueError:
        return False
    return all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)) and x1 <= x2 and y1 <= y2


def _foreign_form(prediction: str, sample: Sample) -> bool:
    """An answer in another task's form: a bare upper-case option letter (unless a letter is the
    reference) or a box, whole or cut short ("[0.38, 0." when the token budget ran out)."""
    text = prediction.strip()
    letter = re.fullmatch(r"\(?([A-E])\)?\.?", text)
    if letter:
        return letter.group(1) not in {a.strip().upper() for a in sample.answers}
    return text.startswith("[")


def _valid_phrase(said: str, sample: Sample) -> bool:
    references = [normalize_answer(a).split() for a in sample.answers]
    longest = max((len(words) for words in references), default=0)
    allowed = {w for words in references for w in words}
    sentence = any(w in _SENTENCE_VERBS and w not in allowed for w in said.split())
    return 0 < len(said.split()) <= max(PHRASE_WORDS, longest) and not sentence


def _format_valid(form: str, prediction: str, sample: Sample) -> bool:
    if form == "letter":
        return _valid_letter(prediction, sample)
    if form == "box":
        return _valid_box(prediction)
    said = normalize_answer(prediction)
    if _allows_unanswerable(sample) and _is_refusal(said):
        return said == UNANSWERABLE  # the instruction names the word to use
    if _foreign_form(prediction, sample):
        return False
    if form == "yes/no":
        return said in _YES_NO
    if form == "number":
        return bool(_NUMBER.match(said))
    labels = given_labels(sample.text) if form == "label" else []
    if labels:
        return said in {normalize_answer(label) for label in labels}
    return _valid_phrase(said, sample)


# ------------------------------------------------------------------------------ content


def _letter_content(prediction: str, sample: Sample) -> float:
    options = option_texts(sample.text)
    letter = resolve_option(prediction, options) if options else parse_option_letter(prediction)
    gold = sample.answer.strip().upper()
    if letter is None:
        return 0.0
    if gold in OPTION_LETTERS and len(gold) == 1:
        return 1.0 if letter == gold else 0.0
    # a reference written as the option's text rather than its letter
    return 1.0 if normalize_answer(options.get(letter, "")) == normalize_answer(sample.answer) else 0.0


def _said_candidates(said: str, sample: Sample) -> list[str]:
    """What an open answer may be saying: itself, and each reference it states as a whole phrase."""
    out = [said]
    out += [ref for ref in map(normalize_answer, sample.answers) if ref and _class_match(said, ref)]
    first_yes_no = next((w for w in said.split() if w in _YES_NO), None)
    if first_yes_no:  # "Yes, it is red." says yes; the first yes/no word is the answer
        out.append(first_yes_no)
    first_number = _NUMBER_IN_TEXT.search(said)
    if first_number:  # "2 shapes" says 2
        out.append(first_number.group(0))
    if _is_refusal(said):
        out.append(UNANSWERABLE)
    return out


def _open_content(prediction: str, sample: Sample, scorer: str, form: str) -> float:
    said = normalize_answer(prediction)
    if not said or (form == "yes/no" and set(_YES_NO) <= set(said.split())):
        return 0.0  # nothing said; or "yes and no", which says neither
    score = score_vqa_soft if scorer == "vqa_soft" else score_exact
    return max(score(c, sample) for c in _said_candidates(said, sample))


def _content(form: str, prediction: str, sample: Sample, scorer: str) -> float:
    if form == "letter":
        return _letter_content(prediction, sample)
    if form == "box":
        return score_bbox(prediction, sample)  # the region decides: any four numbers, corners ordered
    if form == "label":
        return score_class(prediction, sample)  # whole-word label match, case/punctuation/articles ignored
    return _open_content(prediction, sample, scorer, form)


# ------------------------------------------------------------------------------ API


def decide(prediction: str, sample: Sample, scorer: str) -> FormContent:
    """Format validity and content of ``prediction`` (the text the scorer saw) for ``sample``."""
    prediction = "" if prediction is None else str(prediction)
    form = expected_form(sample, scorer)
    return FormContent(form, _format_valid(form, prediction, sample), float(_content(form, prediction, sample, scorer)))


def record_fields(prediction: str, sample: Sample, scorer: str) -> dict:
    """The fields a prediction record gains: ``form``, ``format_valid``, ``content``."""
    d = decide(prediction, sample, scorer)
    return {"form": d.form, "format_valid": d.format_valid, "content": d.content}


def decide_record(rec: dict) -> dict:
    """:func:`record_fields` of a saved prediction record (runs saved before records carried
    them are decided again from the question, answers, prediction and scorer they hold)."""
    if all(k in rec for k in ("form", "format_valid", "content")):
        return {k: rec[k] for k in ("form", "format_valid", "content")}
    extra = {"instruction_rule": rec["instruction_rule"]} if "instruction_rule" in rec else {}
    sample = Sample(id=str(rec.get("id", "")), task=str(rec.get("task", "")), image=None, text=str(rec["text"]),
                    answers=tuple(rec["answers"]), extra=extra)
    return record_fields(rec.get("prediction", ""), sample, str(rec.get("scorer", "exact")))
