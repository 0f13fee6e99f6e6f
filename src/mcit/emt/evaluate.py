"""EMT on a live model: ask the MLLM each set's question, decide every answer, and measure the
baseline of its own vision encoder. Used by ``mcit emt`` (:mod:`mcit.emt.command`) and by the
tracking during fine-tuning (:mod:`mcit.emt.curve`).

* :func:`prepare` loads a set and turns its test split into :class:`~mcit.data.schema.Sample` s
  holding the in-memory images and the question listing the label set.
* :func:`ask` generates the answers (batched, greedy) and decides each one, with the rule-based
  matcher (:mod:`mcit.emt.decide`) or an LLM judge (:mod:`mcit.emt.judge_decider`): accuracy
  and the shares of correct / wrong label / hallucinated, plus one record per answer.
* :func:`encoder_baseline` is the linear probe on the vision tower's pooled features (and
  zero-shot, which is None for a tower without a text encoder).

Every number carries the protocol that produced it (:func:`protocol`): EMT's own caveat is that
the decider and the prompt move the numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..config import ConfigError
from ..data.schema import Sample
from .datasets import ClassificationSet, DatasetSpec, load_dataset, parse_spec
from .decide import DEFAULT_TEMPLATE, LabelMatcher, build_prompt, summarize
from .judge_decider import JUDGE_BACKENDS, PROMPT_VERSION, JudgeDecider

__all__ = ["DECIDERS", "JUDGE_DECIDERS", "RULE_DECIDERS", "Prepared", "ask", "check_decider", "encoder_baseline",
           "parse_specs", "prepare", "protocol"]

# Rule decider -> its max_extra_words (None: any number). "rule" is strict: only the label
# wrapped in frame words counts ("A red circle." is free text for a shape question).
# "rule-lenient" accepts any answer naming exactly one label, closer to the paper's LLM judge
# (but "The airplane is 8." then counts as the label 8).
RULE_DECIDERS: dict[str, int | None] = {"rule": 0, "rule-lenient": None}
# LLM judges (mcit.emt.judge_decider): the judge section's backend reads which label was given.
JUDGE_DECIDERS = JUDGE_BACKENDS
DECIDERS = (*RULE_DECIDERS, *JUDGE_DECIDERS)


def check_decider(decider: str) -> str:
    if decider not in DECIDERS:
        raise ConfigError(f"EMT decider {decider!r} is not available; choose one of {list(DECIDERS)}")
    return decider


def protocol(decider: str = "rule", max_new_tokens: int = 24, judge: JudgeDecider | None = None) -> dict[str, Any]:
    """How the numbers were produced; saved with every result. For a judge decider, ``judge``
    gives the backend's description (model, public URL, sampling; never a key)."""
    if check_decider(decider) in RULE_DECIDERS:
        impl = {"decider_impl": "rule-based label matching, mcit.emt.decide",
                "max_extra_words": RULE_DECIDERS[decider]}
    else:
        impl = {"decider_impl": f"LLM judge naming the label given (three-way prompt {PROMPT_VERSION}), "
                                "mcit.emt.judge_decider",
                "judge": None if judge is None else judge.describe()}
    return {"decider": decider, **impl, "question_template": DEFAULT_TEMPLATE,
            "generation": {"greedy": True, "max_new_tokens": max_new_tokens}}


def parse_specs(specs: list[str | Mapping]) -> list[DatasetSpec]:
    """Parsed specs; ConfigError for a malformed one or two sets with the same name."""
    parsed = [parse_spec(s) for s in specs]
    names = [p.display_name for p in parsed]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"EMT datasets: {twice} given twice (give one a different name with a mapping spec)")
    return parsed


# Train images per set for the encoder's linear probe (`mcit emt --probe-train`, and the reference
# line of EMT curves): more than the asked test images, so the probe is not starved.
PROBE_TRAIN = 1000


@dataclass
class Prepared:
    """A classification set ready to be asked: its question, matcher and test samples."""

    dataset: ClassificationSet
    prompt: str
    matcher: LabelMatcher
    samples: list[Sample]

    @property
    def name(self) -> str:
        return self.dataset.name


def prepare(spec: str | Mapping | DatasetSpec, limit: int | None, seed: int = 0) -> Prepared:
    ds = load_dataset(spec, limit=limit, seed=seed)
    prompt = build_prompt(ds.classes, ds.noun)
    samples = [Sample(id=f"{ds.name}-{i}", task=ds.name, image=image, text=prompt, answers=(ds.classes[label],))
               for i, (image, label) in enumerate(ds.test)]
    return Prepared(ds, prompt, LabelMatcher(ds.classes, ds.synonyms), samples)


def ask(model, processor, prepared: Prepared, *, batch_size: int, max_new_tokens: int, decider: str = "rule",
        judge: JudgeDecider | None = None, device=None,
        show_progress: bool = True) -> tuple[dict, list[dict]]:
    """(summary, records): accuracy and outcome shares (percent) and one record per answer.

    A judge decider needs ``judge``, a :class:`JudgeDecider` (its caller builds and closes it)."""
    from ..eval.generate import generate_answers  # torch and transformers only when a model is asked

    check_decider(decider)  # refuses an unknown decider before generating anything
    if decider not in JUDGE_DECIDERS:
        judge = None  # the rule matcher decides
    elif judge is None:
        raise ConfigError(f"EMT decider {decider!r} needs a judge (the judge section: judge.model ...)")
    elif judge.name != decider:
        raise ConfigError(f"EMT decider {decider!r} was given a {judge.name} judge")
    answers = generate_answers(model, processor, prepared.samples, None, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, device=device, desc=f"emt {prepared.name}",
                               show_progress=show_progress)
    decided = _decide(prepared, answers, decider, judge)
    classes = prepared.dataset.classes
    records = []
    for i, ((_, label), answer, (d, extra)) in enumerate(zip(prepared.dataset.test, answers, decided)):
        records.append({"index": i, "label": classes[label], "answer": answer, "outcome": d.outcome,
                        "reason": d.reason, "named": [classes[k] for k in d.named], "decider": decider, **extra})
    return summarize(d for d, _ in decided) | {"decider": decider}, records


def _decide(prepared: Prepared, answers: list[str], decider: str, judge: JudgeDecider | None) -> list[tuple]:
    """(decision, extra record fields) per answer."""
    targets = [label for _, label in prepared.dataset.test]
    if judge is None:
        extra = RULE_DECIDERS[decider]
        extra = math.inf if extra is None else extra
        return [(prepared.matcher.decide(a, t, max_extra_words=extra), {}) for a, t in zip(answers, targets)]
    judged = judge.judge(prepared.prompt, prepared.dataset.classes, answers, targets)
    return [(j.decision, {"judge_reply": j.reply} | ({"judge_error": j.error} if j.error else {})) for j in judged]


def encoder_baseline(model, processor, dataset: ClassificationSet, train: ClassificationSet | None = None, *,
                     seed: int = 0, batch_size: int = 32) -> dict:
    """Linear probe on the vision tower (trained on ``train``'s train split, default ``dataset``'s;
    scored on ``dataset``'s test split) and zero-shot (None without a text tower)."""
    from .probe import encoder_features, linear_probe, vision_tower_of, zero_shot_accuracy

    train = train or dataset
    y_train, y_test = train.labels("train"), dataset.labels("test")
    features = {"pooling": "mean over patch tokens", "layer": "the model's vision_feature_layer"}
    if len(np.unique(y_train)) < 2:
        probe: dict[str, Any] = {"accuracy": None, "note": "train split holds fewer than 2 classes"}
    else:
        x_train = encoder_features(model, processor, train.images("train"), batch_size)
        x_test = encoder_features(model, processor, dataset.images("test"), batch_size)
        r = linear_probe(x_train, y_train, x_test, y_test, seed=seed)
        probe = {"accuracy": r.accuracy, "train_accuracy": r.train_accuracy, "chance": r.chance,
                 "majority": r.majority, "n_train": r.n_train, "n_test": r.n_test, "converged": r.converged}
    zero_shot = zero_shot_accuracy(vision_tower_of(model), processor, dataset.images("test"), y_test,
                                   dataset.classes, batch_size=batch_size)
    return {"probe": probe | {"features": features, "classifier": "logistic regression on standardised features"},
            "zero_shot": zero_shot,
            "zero_shot_note": None if zero_shot is not None else "the vision tower has no text tower"}
