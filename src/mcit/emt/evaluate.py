"""EMT on a live model: ask the MLLM each set's question, decide every answer, and measure the
baseline of its own vision encoder. Used by ``mcit emt`` (:mod:`mcit.emt.command`) and by the
tracking during fine-tuning (:mod:`mcit.emt.curve`).

* :func:`prepare` loads a set and turns its test split into :class:`~mcit.data.schema.Sample` s
  holding the in-memory images and the question listing the label set.
* :func:`ask` generates the answers (batched, greedy) and decides each one: accuracy and the
  shares of correct / wrong label / hallucinated, plus one record per answer.
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

__all__ = ["DECIDERS", "Prepared", "ask", "encoder_baseline", "parse_specs", "prepare", "protocol"]

# Decider name -> the rule decider's max_extra_words (None: any number). "rule" is strict: only
# the label wrapped in frame words counts ("A red circle." is free text for a shape question).
# "rule-lenient" accepts any answer naming exactly one label, closer to the paper's LLM judge
# (but "The airplane is 8." then counts as the label 8).
# No judge backend yet: mcit.eval.judge_backends grade a 0-10 agreement with one reference
# answer (CoIN's General Knowledge prompt); that says "correct or not" but cannot tell a wrong
# label from a hallucination, so it needs a dedicated three-way EMT prompt first.
DECIDERS: dict[str, int | None] = {"rule": 0, "rule-lenient": None}


def protocol(decider: str = "rule", max_new_tokens: int = 24) -> dict[str, Any]:
    """How the numbers were produced; saved with every result."""
    if decider not in DECIDERS:
        raise ConfigError(f"EMT decider {decider!r} is not available; choose one of {list(DECIDERS)}")
    return {"decider": decider, "decider_impl": "rule-based label matching, mcit.emt.decide",
            "max_extra_words": DECIDERS[decider], "question_template": DEFAULT_TEMPLATE,
            "generation": {"greedy": True, "max_new_tokens": max_new_tokens}}


def parse_specs(specs: list[str | Mapping]) -> list[DatasetSpec]:
    """Parsed specs; ConfigError for a malformed one or two sets with the same name."""
    parsed = [parse_spec(s) for s in specs]
    names = [p.display_name for p in parsed]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"EMT datasets: {twice} given twice (give one a different name with a mapping spec)")
    return parsed


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
        device=None, show_progress: bool = True) -> tuple[dict, list[dict]]:
    """(summary, records): accuracy and outcome shares (percent) and one record per answer."""
    from ..eval.generate import generate_answers  # torch and transformers only when a model is asked

    extra = DECIDERS[protocol(decider)["decider"]]  # refuses an unknown decider before generating anything
    extra = math.inf if extra is None else extra
    answers = generate_answers(model, processor, prepared.samples, None, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, device=device, desc=f"emt {prepared.name}",
                               show_progress=show_progress)
    classes = prepared.dataset.classes
    decisions, records = [], []
    for i, ((_, label), answer) in enumerate(zip(prepared.dataset.test, answers)):
        d = prepared.matcher.decide(answer, label, max_extra_words=extra)
        decisions.append(d)
        records.append({"index": i, "label": classes[label], "answer": answer, "outcome": d.outcome,
                        "reason": d.reason, "named": [classes[k] for k in d.named], "decider": decider})
    return summarize(decisions) | {"decider": decider}, records


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
