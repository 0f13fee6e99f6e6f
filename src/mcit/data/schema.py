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
        """The instruction line: the last line; for one-line grounding prompts, the part before ':'."""
        lines = self.text.strip().split("\n")
        if len(lines) > 1:
            return lines[-1].strip()
        head, sep, _ = lines[0].partition(":")
        return head.strip() if sep else lines[0].strip()

    @property
    def question(self) -> str:
        """The question without its instruction line (what the General Knowledge judge sees)."""
        lines = self.text.strip().split("\n")
        if len(lines) > 1:
            return "\n".join(lines[:-1]).strip()
        _, sep, tail = lines[0].partition(":")
        return tail.strip() if sep else lines[0].strip()
