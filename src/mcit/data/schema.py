"""The one sample type every reader produces and every later stage consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One instruction-tuning example (train) or one test question (test).

    `text` is the human turn exactly as stored in the data file, without the `<image>`
    placeholder: the question, then the instruction on its last line (CoIN convention).
    `answers` holds every reference answer; `answers[0]` is the training target.
    `extra` carries task-specific fields, e.g. {"bbox": [x1, y1, x2, y2], "size": [w, h]}.

    A multi-turn training conversation keeps its first (human, gpt) pair in `text` and
    `answers[0]`, so instruction extraction, grouping and replay see the same sample as for a
    single-turn record; its later pairs are in `extra["turns"]` as [human, gpt] lists (plain
    JSON, so replay's saved buffer keeps them). `conversation` gives all pairs.
    """

    id: str
    task: str
    image: str | None  # path relative to the image root, already checked to stay inside it
    text: str
    answers: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def answer(self) -> str:
        return self.answers[0]

    @property
    def conversation(self) -> tuple[tuple[str, str], ...]:
        """Every (human, gpt) pair, in order; the first is (text, answer)."""
        later = self.extra.get("turns") or ()
        return ((self.text, self.answer), *((human, gpt) for human, gpt in later))

    @property
    def instruction(self) -> str:
        """The instruction: by the task's rule (``extra["instruction_rule"]``, see
        :func:`split_instruction`); CoIN's: the last line, or for a one-line prompt the part before ':'."""
        return split_instruction(self.text, self.extra.get("instruction_rule", "auto"))[1]

    @property
    def question(self) -> str:
        """The question without its instruction (what the General Knowledge judge sees)."""
        return split_instruction(self.text, self.extra.get("instruction_rule", "auto"))[0]


INSTRUCTION_RULES = ("auto", "last_line", "before_colon", "none")


def split_instruction(text: str, rule: str = "auto") -> tuple[str, str]:
    """(question, instruction) of a prompt. ``last_line``: the last line is the instruction;
    ``before_colon``: the part before the first ':' ("Please give the box of: the red car");
    ``auto`` (CoIN's convention): last_line for several lines, before_colon for one line;
    ``none``: no instruction. A prompt the rule finds nothing in is both question and instruction."""
    if rule not in INSTRUCTION_RULES:
        raise ValueError(f"instruction rule {rule!r} is not one of {INSTRUCTION_RULES}")
    text = text.strip()
    if rule == "none":
        return text, ""
    lines = text.split("\n")
    if len(lines) > 1 and rule in ("auto", "last_line"):
        return "\n".join(lines[:-1]).strip(), lines[-1].strip()
    head, sep, tail = text.partition(":")
    if sep and "\n" not in head and rule in ("auto", "before_colon"):
        return tail.strip(), head.strip()
    return text, text
