"""The General Knowledge (GK) judge protocols: how a judge request is built and its reply read.

A judge sees one test question *without its instruction line*, the ground-truth answer and the
model's answer, and gives a single 0-10 score for the correctness of the content, whatever the
format. A task's GK score is ``100 * sum(scores) / (10 * N)`` over its N test samples; a sample
without a usable score (unparsable reply, failed request) counts as 0 and is reported.

Two protocols (``judge.protocol``):

* ``mcit`` (:class:`McitProtocol`, the default): mcit's own prompt wording (:func:`build_prompt`),
  one user message, and a stricter parser (:func:`parse_score`) that refuses out-of-range values.
* ``coin`` (:class:`CoinProtocol`): CoIN's official requests, byte for byte. The rule texts are
  read at run time from the user's copy of CoIN's ``rule.json`` (:func:`load_coin_rules`); the
  reply parser is :func:`parse_score_coin`; the system message and sampling are
  :data:`COIN_SYSTEM` and :data:`COIN_SAMPLING`; the task score is also rounded as the official
  script rounds it (:func:`gk_task_score_official`).

Public API: :class:`JudgeItem`, :class:`JudgeError`, :class:`McitProtocol`, :class:`CoinProtocol`,
:func:`build_protocol`, :func:`load_coin_rules`, :func:`build_prompt`, :func:`parse_score`,
:func:`parse_score_coin`, :func:`gk_task_score`, :func:`gk_task_score_official`,
:data:`COIN_SAMPLING`, :data:`COIN_SYSTEM`, :data:`BACKENDS`, :data:`PROTOCOLS`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..errors import JudgeError  # noqa: F401 - raised here, imported from here by others

__all__ = ["BACKENDS", "COIN_SAMPLING", "COIN_SYSTEM", "PROTOCOLS", "CoinProtocol", "JudgeError", "JudgeItem",
           "McitProtocol", "build_prompt", "build_protocol", "gk_task_score", "gk_task_score_official",
           "load_coin_rules", "parse_score", "parse_score_coin"]

BACKENDS = ("embedding", "openai", "local", "none")
PROTOCOLS = ("mcit", "coin")

COIN_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.05, "max_tokens": 20}
"""CoIN's judge sampling (vLLM ``SamplingParams`` in ``ETrain/Eval/eval_GenealKnowledge.py``).
The openai backend's defaults; repetition_penalty is sent by protocol coin only."""

COIN_SYSTEM = "You are a helpful assistant."
"""The system message CoIN's judge script puts before every prompt (protocol coin's default)."""

MAX_SCORE = 10.0


@dataclass(frozen=True)
class JudgeItem:
    """What the judge sees for one sample.

    ``question`` has no instruction line (mcit's reading); ``answer`` is the ground truth shown to
    an LLM judge; ``references`` holds every accepted answer (the embedding judge takes the best
    match); ``grounding`` selects the box rule; ``text`` is the test question as stored, instruction
    line included (protocol coin takes its question from it, as the official script does).
    """

    question: str
    answer: str
    prediction: str
    references: tuple[str, ...] = ()
    grounding: bool = False
    text: str = ""


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

    Rules, in order (stricter than CoIN's :func:`parse_score_coin`: out-of-range values refused,
    fractions scaled):

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


def gk_task_score_official(scores: list[float | None]) -> int | None:
    """The task score as CoIN's ``evaluate_score.py`` reports it: ``round(sum / (10 * N) * 100.0)``,
    summed in sample order and divided in that order, with Python's ``round`` (half to even), so
    57.5 computed as ``0.575 * 100.0 = 57.49999...`` gives 57. None where the official script
    fails: no sample (division by zero) or a non-finite sum."""
    if not scores:
        return None
    total = 0.0
    for s in scores:
        if s is not None:
            total += s
    value = total / (MAX_SCORE * len(scores)) * 100.0
    return round(value) if math.isfinite(value) else None


# ------------------------------------------------------------------------------------ protocols


def _message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


class McitProtocol:
    """mcit's protocol: :func:`build_prompt` as the user message, :func:`parse_score`."""

    name = "mcit"
    samples = False  # a local judge decodes greedily
    repetition_penalty: float | None = None  # default of judge.repetition_penalty: none

    def __init__(self, system: str | None = None):
        self.system = system or None  # "" and None: no system message

    def prompt(self, item: JudgeItem) -> str:
        return build_prompt(item)

    def parse(self, reply: str | None) -> float | None:
        return parse_score(reply)

    def messages(self, item: JudgeItem) -> list[dict[str, str]]:
        head = [_message("system", self.system)] if self.system else []
        return head + [_message("user", self.prompt(item))]

    def key_text(self, item: JudgeItem) -> str:
        """What the judge cache keys on: everything sent but the sampling settings. A lone mcit user
        message keys on its text, as before protocols existed, so older caches stay valid; anything
        else keys on the protocol name and the messages, so no reply crosses protocols."""
        messages = self.messages(item)
        if self.name == "mcit" and len(messages) == 1:
            return messages[0]["content"]
        return json.dumps({"protocol": self.name, "messages": messages}, ensure_ascii=False)


# The rule.json entries protocol coin reads: one for every task, one for Grounding (the box rule),
# each {"role": <who answered>, "prompt": <the closing rule>}.
COIN_RULE, COIN_GROUNDING_RULE = "CoIN", "CoIN_Grounding"
COIN_RULES_IN_CHECKOUT = Path("ETrain/Eval/LLaVA/CoIN/rule.json")


class CoinProtocol(McitProtocol):
    """CoIN's official judge request (``ETrain/Eval/LLaVA/CoIN/create_prompt.py`` then
    ``ETrain/Eval/eval_GenealKnowledge.py``), with the rule texts of the user's ``rule.json``.

    The question is the stored test text without its last line (``text.split("\\n")[:-1]``, so a
    one-line text gives an empty question); for Grounding the whole text, instruction included, and
    the box rule. The blocks are joined as the official script joins them, then every ``<image>``
    is removed and the whole stripped, as the judge script does before sending it.
    """

    name = "coin"
    samples = True  # CoIN's judge sampled (temperature 0.7, top_p 0.8)
    repetition_penalty = COIN_SAMPLING["repetition_penalty"]

    def __init__(self, rules: dict[str, dict[str, str]], system: str | None = COIN_SYSTEM):
        super().__init__(system)
        self.rules = rules

    def prompt(self, item: JudgeItem) -> str:
        rule = self.rules[COIN_GROUNDING_RULE if item.grounding else COIN_RULE]
        question = item.text if item.grounding else "\n".join(item.text.split("\n")[:-1])
        role = rule["role"]
        content = (f"[Context]\n[Question]\n{question}\n\n"
                   f"[Ground truth answer]\n{item.answer}\n\n[End of ground truth answer]\n\n"
                   f"[{role}]\n{item.prediction}\n\n[End of {role}]\n\n"
                   f"[System]\n{rule['prompt']}\n\n")
        return content.replace("<image>", "").strip()

    def parse(self, reply: str | None) -> float | None:
        return parse_score_coin(reply)


def build_protocol(cfg) -> McitProtocol:
    """The protocol of ``cfg`` (a :class:`~mcit.config.JudgeConfig`); coin reads ``cfg.rules``.
    ``cfg.system`` None means the protocol's own system message, "" none."""
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"judge.protocol: {cfg.protocol!r} is not one of {list(PROTOCOLS)}")
    if cfg.protocol == "mcit":
        return McitProtocol(cfg.system)
    return CoinProtocol(load_coin_rules(cfg.rules), COIN_SYSTEM if cfg.system is None else cfg.system)


def _rules_file(path: str | Path | None) -> Path:
    where = f"CoIN's rule.json, or a CoIN code checkout holding it at {COIN_RULES_IN_CHECKOUT}"
    if not path:
        raise ConfigError(f"judge.rules: protocol coin reads its rule texts from the user's copy of CoIN; set "
                          f"judge.rules to {where}")
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / COIN_RULES_IN_CHECKOUT, path / "rule.json"):
            if candidate.is_file():
                return candidate
        raise ConfigError(f"judge.rules: {path} is a folder without {COIN_RULES_IN_CHECKOUT} or rule.json; "
                          f"set judge.rules to {where}")
    if not path.is_file():
        raise ConfigError(f"judge.rules: {path}: file not found (expected {where})")
    return path


def load_coin_rules(path: str | Path | None) -> dict[str, dict[str, str]]:
    """The two rule entries protocol coin needs, read from ``rule.json`` (or a checkout holding it)."""
    file = _rules_file(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"judge.rules: cannot read {file}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"judge.rules: {file} is not valid JSON: {exc.msg} (line {exc.lineno}, "
                          f"column {exc.colno})") from None
    return {key: _rule_entry(data, key, file) for key in (COIN_RULE, COIN_GROUNDING_RULE)}


def _rule_entry(data: Any, key: str, file: Path) -> dict[str, str]:
    need = f"protocol coin needs {COIN_RULE!r} and {COIN_GROUNDING_RULE!r}, each with 'role' and 'prompt' strings"
    if not isinstance(data, dict):
        raise ConfigError(f"judge.rules: {file} must hold a JSON object; {need}")
    entry = data.get(key)
    if not isinstance(entry, dict):
        problem = "has no" if entry is None else "has a malformed"
        raise ConfigError(f"judge.rules: {file} {problem} {key!r} entry; {need}")
    for part in ("role", "prompt"):
        if not isinstance(entry.get(part), str):
            raise ConfigError(f"judge.rules: {file}: {key}.{part} is missing or not a string; {need}")
    return {"role": entry["role"], "prompt": entry["prompt"]}


# ------------------------------------------------------------------------------------ coin parser

_COIN_DIGIT = re.compile(r"[1-9]")


def parse_score_coin(reply: str | None) -> float | None:
    """CoIN's reply parser (``ETrain/Eval/evaluate_score.py``), rule for rule; None where the
    official script adds nothing to the sum (and for a failed request).

    1. ``float(reply)`` succeeds (surrounding whitespace, "1e1", "-3", "nan" all parse): the value
       if ``<= 10`` (negative values included: they lower the sum), else nothing;
    2. else, if the reply holds "/": the part before the first "/" if ``str.isnumeric()`` and
       ``<= 10`` ("4/5" -> 4, "5/0" -> 5, "8.5/10" and "Score: 8/10" -> nothing); no further rule;
    3. else the first ASCII digit 1-9 anywhere ("**8**" -> 8, "Score: 10" -> 1); none -> nothing.

    Not reproduced (the official script stops or goes non-finite): "-inf" (the sum would become
    -inf and ``round`` fail) and a numeric head that ``float`` refuses ("½/2": ``ValueError`` in
    the ``except`` block) score nothing here.
    """
    if reply is None:
        return None
    try:
        value = float(reply)
    except ValueError:
        return _coin_fallback(reply)
    return value if math.isfinite(value) and value <= MAX_SCORE else None


def _coin_fallback(reply: str) -> float | None:
    if "/" in reply:
        head = reply.split("/")[0]
        if not head.isnumeric():
            return None
        try:
            value = float(head)
        except ValueError:  # "½", "五": isnumeric, yet float refuses them (the official script crashes)
            return None
        return value if value <= MAX_SCORE else None
    match = _COIN_DIGIT.search(reply)
    return float(match.group()) if match else None
