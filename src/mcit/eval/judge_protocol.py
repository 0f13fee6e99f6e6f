"""The General Knowledge (GK) judge protocol of CoIN, in our own words.

A judge sees one test question *without its instruction line*, the ground-truth answer and the
model's answer, and gives a single 0-10 score for the correctness of the content, whatever the
format. A task's GK score is ``100 * sum(scores) / (10 * N)`` over its N test samples; a sample
without a usable score (unparsable reply, failed request) counts as 0 and is reported.

CoIN served Qwen1.5-32B-Chat with vLLM as the judge and sampled with temperature 0.7, top_p 0.8
and at most 20 new tokens (:data:`COIN_SAMPLING`). Its reply parser is followed by
:func:`parse_score`.

Public API: :class:`JudgeItem`, :class:`JudgeError`, :func:`build_prompt`, :func:`parse_score`,
:func:`gk_task_score`, :data:`COIN_SAMPLING`, :data:`BACKENDS`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BACKENDS", "COIN_SAMPLING", "JudgeError", "JudgeItem", "build_prompt", "gk_task_score",
           "parse_score"]

BACKENDS = ("embedding", "openai", "local", "none")

COIN_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "max_tokens": 20}
"""CoIN's judge sampling settings (the openai backend's defaults; the local backend is greedy)."""

MAX_SCORE = 10.0


class JudgeError(RuntimeError):
    """The judge cannot run as configured (bad run folder, prediction file or backend setting)."""


@dataclass(frozen=True)
class JudgeItem:
    """What the judge sees for one sample.

    ``question`` has no instruction line; ``answer`` is the ground truth shown to an LLM judge;
    ``references`` holds every accepted answer (the embedding judge takes the best match);
    ``grounding`` selects the box rule.
    """

    question: str
    answer: str
    prediction: str
    references: tuple[str, ...] = ()
    grounding: bool = False


_HEADER = (
    "You are grading an AI assistant's answer to a question about an image. You do not see the "
    "image: decide only whether the content of the assistant's answer agrees with the reference "
    "answer. Ignore differences of format, length, wording and letter case."
)

_RULE = (
    "Give one integer from 0 to 10 for how correct the assistant's answer is: 0 means wrong or "
    "unrelated, 10 means it says the same as the reference answer. Reply with the number alone on "
    "a single line and write nothing else."
)

_BOX_RULE = (
    "Both answers are bounding boxes written as [x1, y1, x2, y2]: the top-left and bottom-right "
    "corners, each coordinate a fraction of the image side between 0 and 1. Give one integer from "
    "0 to 10 for how well the assistant's box covers the reference box: 0 means no overlap or no "
    "box at all, 10 means the same box. Reply with the number alone on a single line and write "
    "nothing else."
)


def build_prompt(item: JudgeItem) -> str:
    """The judge prompt: header, question / reference answer / assistant answer blocks, rule."""
    return (
        f"{_HEADER}\n\n"
        f"[Question]\n{item.question.strip()}\n[End of question]\n\n"
        f"[Reference answer]\n{item.answer.strip()}\n[End of reference answer]\n\n"
        f"[Assistant's answer]\n{item.prediction.strip()}\n[End of assistant's answer]\n\n"
        f"[Rule]\n{_BOX_RULE if item.grounding else _RULE}"
    )


# Decorations a chatty judge puts around a bare number ("**7**", "'8'", "9.").
_WRAPPING = " \t\r\n*`'\"."
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_WHOLE_NUMBER = re.compile(rf"^{_NUMBER}$")
_FRACTION = re.compile(rf"({_NUMBER})\s*/\s*({_NUMBER})")
# "10" is the only two-digit score: read as ten, not as its first digit one.
_FIRST_DIGIT = re.compile(r"(?<!\d)10(?![\d.])|\d")


def parse_score(reply: str | None) -> float | None:
    """Read a 0-10 score from a judge reply; None when no rule applies.

    Rules, in order (CoIN's parser, with out-of-range values refused instead of passed on):

    1. the whole reply (decorations such as ``**``, quotes or a final period stripped) is a
       number: that number if it lies in [0, 10], else None (``"15"`` is not a score);
    2. the reply holds a fraction ``a/b`` (``"8/10"``, ``"4 / 5"``): ``10 * a / b`` if
       ``0 <= a <= b`` and ``b > 0``, else None;
    3. the first digit of the reply (``"Score: 7, because ..."`` -> 7), ``10`` being read whole;
    4. nothing numeric: None (unparsable).
    """
    if reply is None:
        return None
    text = str(reply).strip(_WRAPPING)
    if _WHOLE_NUMBER.match(text):
        value = float(text)
        return value if 0.0 <= value <= MAX_SCORE else None
    m = _FRACTION.search(text)
    if m:
        a, b = float(m.group(1)), float(m.group(2))
        return MAX_SCORE * a / b if b > 0 and 0 <= a <= b else None
    m = _FIRST_DIGIT.search(text)
    return float(m.group(0)) if m else None


def gk_task_score(scores: list[float | None]) -> float:
    """``100 * sum / (10 * N)``; a missing score (None) counts as 0. Empty -> 0.0."""
    if not scores:
        return 0.0
    total = sum(s for s in scores if s is not None)
    return 100.0 * total / (MAX_SCORE * len(scores))
