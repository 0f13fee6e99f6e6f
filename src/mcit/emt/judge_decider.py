"""The EMT outcome decider backed by an LLM judge (the paper's protocol, with our own prompt).

The General Knowledge judge prompt grades agreement with a reference answer 0-10, which says
"right or not" but cannot tell a wrong label from a hallucination. EMT needs three outcomes, so
this module asks a different question: *which label of the set does the answer give?*

Protocol, for one answer:

1. :func:`build_judge_prompt` shows the judge the question the MLLM was asked, the label set
   numbered 1..K and the MLLM's answer, and asks for the number of the single label the answer
   gives, or 0 when it gives none, several, the list back, or free text that does not commit to
   one label. The ground-truth label is deliberately *not* in the prompt: the judge only
   identifies the label given, we compare it with the target ourselves. So the judge cannot be
   swayed by knowing the right answer, and the prompt is the same for every target.
2. :func:`parse_label_reply` reads the reply: the first whole number, which must be in 0..K.
3. :class:`JudgeDecider` maps the number: k in 1..K -> ``correct`` if label k is the target, else
   ``wrong_label``; 0 -> ``hallucinated`` (reason ``judge_no_label``); an unparsable reply or a
   failed request -> ``hallucinated`` (reason ``judge_unparsable``): never counted correct, and
   counted apart so a flaky judge shows in the numbers.

Cache: with ``cache`` set (a :class:`~mcit.eval.judge.JudgeCache`, the GK judge's), replies are
kept by (backend, model, prompt), so deciding the same answers again asks nothing; a request
that got no reply is not cached. ``mcit emt`` keeps it in ``<out>/judge_cache.jsonl``, EMT
tracking in ``<run>/emt_judge_cache.jsonl``.

Sampling: OpenAI-compatible endpoints are asked with temperature 0 and top_p 1
(:data:`EMT_SAMPLING`, see :func:`build_judge_decider`) so the decisions are repeatable; the GK
view keeps CoIN's 0.7 / 0.8. The local backend decodes greedily anyway.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from ..config import ConfigError
from ..eval.judge import JudgeCache, through_cache
from ..eval.judge_backends import JudgeBackend, _TextJudge, build_backend
from .decide import CORRECT, HALLUCINATED, JUDGE_NO_LABEL, JUDGE_UNPARSABLE, WRONG_LABEL, Decision

__all__ = ["EMT_SAMPLING", "JUDGE_BACKENDS", "PROMPT_VERSION", "JudgeDecider", "Judged", "build_judge_decider",
           "build_judge_prompt", "parse_label_reply"]

JUDGE_BACKENDS = ("openai", "local")  # text judges; the embedding backend cannot read a label
EMT_SAMPLING = {"temperature": 0.0, "top_p": 1.0}
PROMPT_VERSION = "emt-label-v1"  # recorded with the numbers: change it when the prompt changes

_HEADER = (
    "You are reading an AI assistant's answer to a classification question about an image. You do "
    "not see the image and you are not told the correct label: only decide which label of the "
    "list, if any, the assistant's answer gives as its answer."
)

_RULE = (
    "Reply with the number of the single label that the assistant's answer gives as its answer "
    "(a plural, a synonym or a different letter case of a label still counts as that label). "
    "Reply 0 if the answer gives no label, gives several labels, lists the labels back, or is "
    "free text that does not commit to exactly one label. Give the label's number in the list "
    "(the number before the dot), not the label itself, alone and with nothing else."
)


def build_judge_prompt(question: str, labels: Sequence[str], answer: str) -> str:
    """The three-way prompt: question, numbered labels, the answer, the rule (no target label)."""
    if not labels:
        raise ValueError("the label list is empty")
    numbered = "\n".join(f"{k}. {label}" for k, label in enumerate(labels, start=1))
    return (
        f"{_HEADER}\n\n"
        f"[Question]\n{question.strip()}\n[End of question]\n\n"
        f"[Labels]\n{numbered}\n[End of labels]\n\n"
        f"[Assistant's answer]\n{(answer or '').strip()}\n[End of assistant's answer]\n\n"
        f"[Rule]\n{_RULE}"
    )


# The first number in the reply; a "-" glued to a word ("Label-3") is not a minus sign.
_NUMBER = re.compile(r"(?<!\w)-?\d+(?:\.\d+)?|\d+(?:\.\d+)?")


def parse_label_reply(reply: str | None, n_labels: int) -> int | None:
    """The label number in a judge reply: 0 (no single label), 1..K, or None when unparsable.

    Rule: take the first number in the reply, so light wrapping is fine ("2", " 2.", "**2**",
    "Answer: 3", "Label 3"). The reply is unparsable (None) when it is empty, holds no number,
    or its first number is not a whole number in 0..``n_labels`` ("7" for 5 labels, "-1", "2.5").
    """
    if not reply:
        return None
    match = _NUMBER.search(reply)
    if match is None or "." in match.group():
        return None
    k = int(match.group())
    return k if 0 <= k <= n_labels else None


@dataclasses.dataclass(frozen=True)
class Judged:
    """One answer decided by the judge: the decision, the judge's raw reply and request error."""

    decision: Decision
    reply: str | None
    error: str | None


class JudgeDecider:
    """Decides EMT answers with a text judge backend (:class:`OpenAIJudge` or :class:`LocalLMJudge`)."""

    def __init__(self, backend: JudgeBackend):
        if not isinstance(backend, _TextJudge):
            raise ConfigError(f"the {getattr(backend, 'backend', '?')} judge backend cannot decide EMT answers: it "
                              "scores similarity and cannot read which label an answer gives; use the openai or "
                              "local backend (an LLM)")
        self.backend = backend
        self.cache: JudgeCache | None = None
        self.hits = 0  # replies taken from the cache

    @property
    def name(self) -> str:
        return self.backend.backend

    def describe(self) -> dict:
        return self.backend.describe()

    def judge(self, question: str, labels: Sequence[str], answers: Sequence[str | None],
              targets: Sequence[int]) -> list[Judged]:
        """Every answer decided, with the judge's reply; one batched call to the backend."""
        if len(answers) != len(targets):
            raise ValueError(f"{len(answers)} answers but {len(targets)} targets")
        if not answers:
            return []
        prompts = [build_judge_prompt(question, labels, a or "") for a in answers]
        return [Judged(self._decision(parse_label_reply(reply, len(labels)), target), reply, error)
                for (reply, error), target in zip(self._replies(prompts), targets)]

    def _replies(self, prompts: list[str]) -> list[tuple[str | None, str | None]]:
        """(reply, error) per prompt: from the cache where it has one, else from the backend."""
        if self.cache is None:
            return self.backend.replies(prompts)
        b = self.backend
        out, hits = through_cache(self.cache, b.backend, b.model, prompts,
                                  lambda positions: b.replies([prompts[n] for n in positions]),
                                  to_entry=lambda r: None if r[0] is None else {"reply": r[0]},
                                  from_entry=lambda e: (e["reply"], None))
        self.hits += hits
        return out

    def decide_many(self, question: str, labels: Sequence[str], answers: Sequence[str | None],
                    targets: Sequence[int]) -> list[Decision]:
        return [j.decision for j in self.judge(question, labels, answers, targets)]

    @staticmethod
    def _decision(k: int | None, target: int) -> Decision:
        if k is None:  # unusable reply or failed request: never counted correct
            return Decision(HALLUCINATED, None, JUDGE_UNPARSABLE, (), ())
        if k == 0:
            return Decision(HALLUCINATED, None, JUDGE_NO_LABEL, (), ())
        return Decision(CORRECT if k - 1 == target else WRONG_LABEL, k - 1, None, (k - 1,), ())

    def close(self) -> None:
        close = getattr(self.backend, "close", None)  # the endpoint's HTTP client; the local LM has none
        if close is not None:
            close()


def build_judge_decider(cfg, backend: str | None = None) -> JudgeDecider:
    """A :class:`JudgeDecider` from a :class:`~mcit.config.JudgeConfig` (``backend`` overrides
    ``cfg.backend``), asked with :data:`EMT_SAMPLING`; build_backend checks the settings."""
    backend = backend or cfg.backend
    if backend not in JUDGE_BACKENDS:
        raise ConfigError(f"judge.backend: the EMT judge decider needs an LLM backend ({' or '.join(JUDGE_BACKENDS)}), "
                          f"not {backend!r}: the embedding judge cannot read which label an answer gives")
    return JudgeDecider(build_backend(dataclasses.replace(cfg, backend=backend, **EMT_SAMPLING)))
