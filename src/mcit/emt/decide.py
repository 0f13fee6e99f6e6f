"""The EMT outcome decider: is a free-form answer the right label, another label, or neither?

EMT (Zhai et al., 2023) asks an MLLM for a single label from a listed label set and puts each
answer in one of three outcomes: **correct**, **wrong label** (names exactly one other label of
the set) or **hallucinated**. The paper used an LLM judge; this module is a deterministic,
rule-based matcher, so its numbers are reproducible but belong to *this* protocol (EMT's own
caveat: the protocol moves the numbers; report which one produced a number).

Rules, in order:

1. **Normalisation** (answer and every label/synonym alike): Unicode NFKC, lower case, every
   character that is not a letter or digit (punctuation, ``_``, ``-``, quotes) becomes a space,
   then the articles *a*, *an*, *the* are dropped (kept only where a whole label is an article).
   "Aquarium_Fish!" -> ``aquarium fish``; "It's a cat." -> ``it s cat``.
2. **Label phrases**: each label is matched by its normalised name, its synonyms (given per
   label; a synonym may not normalise to another label's name) and the plural of each of those
   (last word inflected: +s; +es after s/x/z/ch/sh; consonant+y -> ies; f/fe -> ves or +s;
   o -> os or oes; a table of irregular and zero plurals such as man/men, mouse/mice,
   fish/fish, deer/deer). A generated plural that equals another label's phrase, or the plural
   of another label, is dropped (ambiguous). Words containing digits get no plural.
3. **Scan**: the answer's words are read left to right; at each position the *longest* label
   phrase that starts there is taken ("pickup truck" is not also "truck"). Words not part of a
   label phrase are either *frame* words (:data:`FRAME_WORDS`: "it is", "the object in the
   image is", "I think", "answer" ...) or *extra* words.
4. **Outcome**:

   * no label named -> hallucinated, reason ``no_label`` (also an empty answer);
   * two or more different labels named -> hallucinated, reason ``label_list`` when at least
     half of the label set (and at least 3 labels) is named (the list echoed back), else
     ``several_labels``; naming the same label twice (or by a synonym) counts once;
   * exactly one label, but more than ``max_extra_words`` extra words -> hallucinated, reason
     ``free_text`` ("The airplane is 8." for the digits, "a cat sitting on a mat", "not a cat").
     The default 0 is strict: only the label wrapped in frame words counts as an answer;
   * otherwise correct when the label is the target, else wrong label.

Known limits: a label that is also an everyday word ("can", "orange", "plain" in CIFAR-100) is
read as that label wherever it appears; negation is not understood (it is an extra word, so the
answer is free text under the strict default).

Public API: :func:`normalize`, :class:`LabelMatcher`, :class:`Decision`, :func:`decide`,
:func:`summarize`, :func:`build_prompt` and the outcome / reason constants.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

__all__ = [
    "CORRECT",
    "DEFAULT_TEMPLATE",
    "FRAME_WORDS",
    "HALLUCINATED",
    "JUDGE_NO_LABEL",
    "JUDGE_UNPARSABLE",
    "LABEL_LIST",
    "NO_LABEL",
    "OUTCOMES",
    "REASONS",
    "SEVERAL_LABELS",
    "FREE_TEXT",
    "WRONG_LABEL",
    "Decision",
    "LabelMatcher",
    "build_prompt",
    "decide",
    "normalize",
    "plural_forms",
    "summarize",
]

CORRECT, WRONG_LABEL, HALLUCINATED = "correct", "wrong_label", "hallucinated"
OUTCOMES = (CORRECT, WRONG_LABEL, HALLUCINATED)
NO_LABEL, SEVERAL_LABELS, LABEL_LIST, FREE_TEXT = "no_label", "several_labels", "label_list", "free_text"
# Reasons given by the LLM-judge decider (mcit.emt.judge_decider): the judge said the answer
# names no single label; the judge's reply was unusable or the request failed.
JUDGE_NO_LABEL, JUDGE_UNPARSABLE = "judge_no_label", "judge_unparsable"
REASONS = (NO_LABEL, SEVERAL_LABELS, LABEL_LIST, FREE_TEXT, JUDGE_NO_LABEL, JUDGE_UNPARSABLE)

ARTICLES = frozenset({"a", "an", "the"})

# Words that frame an answer without adding content: "It is a cat.", "The number in the image
# is 7.", "I think the answer is: dog". A label phrase always wins over a frame word.
FRAME_WORDS = frozenset("""
    it its s is are was this that these those there here i me my think believe guess see can
    answer final label class category object number digit item thing single
    image picture photo photograph pic shown shows show showing depicts depicted displays
    in of on from list given options option choice be to appears seems looks look like
    likely probably most
""".split())

DEFAULT_TEMPLATE = "What is the {noun} in the image? Please answer with a single {noun} from this list: [{labels}]."

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_VOWELS = set("aeiou")
_IRREGULAR = {
    "man": ("men",), "woman": ("women",), "child": ("children",), "person": ("people", "persons"),
    "mouse": ("mice",), "goose": ("geese",), "foot": ("feet",), "tooth": ("teeth",), "ox": ("oxen",),
    "louse": ("lice",), "cactus": ("cacti", "cactuses"), "fungus": ("fungi",), "die": ("dice",),
}
_ZERO_PLURAL = frozenset({"fish", "sheep", "deer", "cattle", "aircraft", "series", "species", "trout",
                          "salmon", "moose", "bison", "shrimp", "swine", "offspring"})


def normalize(text: str | None) -> list[str]:
    """Words of ``text`` after rule 1 of the module docstring (articles still included)."""
    if not text:
        return []
    text = unicodedata.normalize("NFKC", str(text)).lower()
    return _NON_WORD.sub(" ", text).split()


def _strip_articles(words: list[str]) -> list[str]:
    kept = [w for w in words if w not in ARTICLES]
    return kept or words  # a label that is only an article stays matchable


def plural_forms(word: str) -> set[str]:
    """Plural spellings of one lower-case word (rule 2); empty for words with digits."""
    if not word or any(ch.isdigit() for ch in word):
        return set()
    if word in _ZERO_PLURAL:
        return {word, word + "es"} if word == "fish" else {word}
    out = set(_IRREGULAR.get(word, ()))
    if word.endswith(("s", "x", "z", "ch", "sh")):
        out.add(word + "es")
    elif word.endswith("y") and len(word) > 1 and word[-2] not in _VOWELS:
        out.add(word[:-1] + "ies")
    elif word.endswith("fe"):
        out |= {word[:-2] + "ves", word + "s"}
    elif word.endswith("f") and not word.endswith("ff"):
        out |= {word[:-1] + "ves", word + "s"}
    elif word.endswith("o") and len(word) > 1 and word[-2] not in _VOWELS:
        out |= {word + "s", word + "es"}
    else:
        out.add(word + "s")
    return out


@dataclass(frozen=True)
class Decision:
    """One decided answer.

    ``outcome`` is one of :data:`OUTCOMES`; ``label`` the index of the single label named
    (set for correct and wrong_label, None otherwise); ``reason`` one of :data:`REASONS` for a
    hallucinated answer, else None; ``named`` every distinct label named, in order of first
    mention; ``extra`` the words that are neither a label nor a frame word.
    """

    outcome: str
    label: int | None
    reason: str | None
    named: tuple[int, ...]
    extra: tuple[str, ...]

    @property
    def correct(self) -> bool:
        return self.outcome == CORRECT


class LabelMatcher:
    """The label phrases of one label set, built once and reused for every answer."""

    def __init__(self, labels: Sequence[str], synonyms: Mapping[str, str | Iterable[str]] | None = None):
        self.labels = tuple(str(label) for label in labels)
        if len(self.labels) < 2:
            raise ValueError(f"a label set needs at least 2 labels, got {self.labels}")
        index = {label: k for k, label in enumerate(self.labels)}
        explicit: dict[tuple[str, ...], int] = {}

        def add(phrase_text: str, k: int, what: str) -> None:
            phrase = tuple(_strip_articles(normalize(phrase_text)))
            if not phrase:
                raise ValueError(f"{what} {phrase_text!r} is empty after normalisation")
            other = explicit.setdefault(phrase, k)
            if other != k:
                raise ValueError(f"{what} {phrase_text!r} reads the same as label {self.labels[other]!r} "
                                 f"after normalisation ({' '.join(phrase)!r})")

        for k, label in enumerate(self.labels):
            add(label, k, "label")
        for label, names in (synonyms or {}).items():
            if label not in index:
                raise ValueError(f"synonyms given for {label!r}, which is not a label ({', '.join(self.labels)})")
            for name in ([names] if isinstance(names, str) else names):
                add(name, index[label], f"synonym of {label!r}")
        generated: dict[tuple[str, ...], int] = {}
        ambiguous: set[tuple[str, ...]] = set()
        for phrase, k in explicit.items():
            for form in plural_forms(phrase[-1]):
                plural = phrase[:-1] + (form,)
                if plural in explicit:
                    continue  # the explicit reading wins (also covers zero plurals)
                if generated.setdefault(plural, k) != k:
                    ambiguous.add(plural)
        self._phrases = dict(explicit)
        self._phrases.update({p: k for p, k in generated.items() if p not in ambiguous})
        self._longest = max(len(p) for p in self._phrases)

    def scan(self, answer: str | None) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """(distinct labels named in order, extra words) for ``answer`` (rules 1-3)."""
        words = normalize(answer)
        if ("a",) not in self._phrases and ("an",) not in self._phrases and ("the",) not in self._phrases:
            words = [w for w in words if w not in ARTICLES]
        named: list[int] = []
        extra: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(self._longest, len(words) - i), 0, -1):
                k = self._phrases.get(tuple(words[i:i + n]))
                if k is not None:
                    if k not in named:
                        named.append(k)
                    i += n
                    break
            else:
                if words[i] not in FRAME_WORDS and words[i] not in ARTICLES:
                    extra.append(words[i])
                i += 1
        return tuple(named), tuple(extra)

    def target_index(self, target: int | str) -> int:
        """A label index from an index or a label name (exact, or equal after normalisation)."""
        if isinstance(target, str):
            if target in self.labels:
                return self.labels.index(target)
            wanted = tuple(_strip_articles(normalize(target)))
            for k, label in enumerate(self.labels):
                if tuple(_strip_articles(normalize(label))) == wanted:
                    return k
            raise ValueError(f"target {target!r} is not a label ({', '.join(self.labels)})")
        if isinstance(target, bool) or not hasattr(target, "__index__"):
            raise TypeError(f"target must be a label index or a label name, got {target!r}")
        k = int(target)
        if not 0 <= k < len(self.labels):
            raise ValueError(f"target index {k} is outside 0..{len(self.labels) - 1}")
        return k

    def decide(self, answer: str | None, target: int | str, *, max_extra_words: int = 0) -> Decision:
        """The outcome of ``answer`` when the right label is ``target`` (index or name); rule 4."""
        k_target = self.target_index(target)
        named, extra = self.scan(answer)
        if not named:
            return Decision(HALLUCINATED, None, NO_LABEL, named, extra)
        if len(named) > 1:
            echoed = len(named) >= max(3, math.ceil(len(self.labels) / 2))
            return Decision(HALLUCINATED, None, LABEL_LIST if echoed else SEVERAL_LABELS, named, extra)
        if len(extra) > max_extra_words:
            return Decision(HALLUCINATED, None, FREE_TEXT, named, extra)
        outcome = CORRECT if named[0] == k_target else WRONG_LABEL
        return Decision(outcome, named[0], None, named, extra)


def decide(answer: str | None, labels: Sequence[str], synonyms: Mapping[str, str | Iterable[str]] | None = None,
           *, target: int | str, max_extra_words: int = 0) -> Decision:
    """Decide one answer (see the module docstring). For many answers over the same label set,
    build a :class:`LabelMatcher` once and call its ``decide``."""
    return LabelMatcher(labels, synonyms).decide(answer, target, max_extra_words=max_extra_words)


def summarize(decisions: Iterable[Decision]) -> dict:
    """Counts and shares (percent, 0-100) of the outcomes; ``accuracy`` is the correct share."""
    decisions = list(decisions)
    n = len(decisions)
    outcomes = Counter(d.outcome for d in decisions)
    reasons = Counter(d.reason for d in decisions if d.reason is not None)

    def pct(count: int) -> float:
        return 100.0 * count / n if n else 0.0

    return {
        "n": n,
        "accuracy": pct(outcomes[CORRECT]),
        "shares": {o: pct(outcomes[o]) for o in OUTCOMES},
        "counts": {o: outcomes[o] for o in OUTCOMES},
        "hallucination_reasons": {r: reasons[r] for r in REASONS},
    }


def build_prompt(labels: Sequence[str], noun: str = "object", template: str = DEFAULT_TEMPLATE) -> str:
    """The EMT question: what is the ``noun`` in the image, answered with one label of the list.

    ``template`` may use ``{noun}`` and ``{labels}`` (the labels joined by ", "). Every label is
    listed explicitly (also for digits, where the paper wrote "[0, 9]").
    """
    if not labels:
        raise ValueError("the label list is empty")
    return template.format(noun=noun, labels=", ".join(str(label) for label in labels))
