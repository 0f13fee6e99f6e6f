"""Evaluate one task: generate, clean, score every sample, keep every prediction."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..data.coin_format import format_bbox
from ..data.schema import Sample
from .generate import EvalTiming, PromptCache, generate_answers
from .coin_compat import score_mode, scored_text
from .form_content import record_fields
from .scorers import parse_box


RECORD_FIELDS = ("record_text", "record_answer", "instruction_rule")  # see data.coin_format, data.release, data.schema
COIN_MINI_MAX_NEW_TOKENS = 20  # coin-mini's longest answer, a box, is 17 tokens


def max_new_tokens_for(ec, spec) -> int:
    """A task's answer length limit: eval.task_max_new_tokens, else eval.max_new_tokens, else its
    benchmark's (``spec`` is the task's entry; CoIN's: the official scripts' budget)."""
    if spec.name in ec.task_max_new_tokens:
        return ec.task_max_new_tokens[spec.name]
    if ec.max_new_tokens is not None:
        return ec.max_new_tokens
    return spec.max_new_tokens


def evaluate_task(model, processor, samples: list[Sample], image_root: Path | None, scorer: str,
                  ec, device=None, desc: str = "eval", show_progress: bool = True,
                  max_new_tokens: int | None = None, prompts: PromptCache | None = None,
                  timing: EvalTiming | None = None) -> tuple[float, list[dict]]:
    """Returns the task score (0-100) and one record per sample. ``max_new_tokens``: the task's
    limit (:func:`max_new_tokens_for`); None = ``ec.max_new_tokens`` or coin-mini's. ``prompts``:
    the run's encoded test prompts (see generate.PromptCache); ``timing``: where the seconds went."""
    budget = max_new_tokens or ec.max_new_tokens or COIN_MINI_MAX_NEW_TOKENS
    raw = generate_answers(model, processor, samples, image_root, batch_size=ec.batch_size,
                           max_new_tokens=budget, device=device, desc=desc,
                           show_progress=show_progress, prompts=prompts, kv_cache=ec.kv_cache,
                           dtype=ec.dtype, timing=timing)
    records = []
    for sample, text in zip(samples, raw):
        pred = scored_text(ec.scoring, sample.task, text)
        records.append({
            "id": sample.id,
            "task": sample.task,
            "text": sample.text,
            "answers": list(sample.answers),
            "raw": text,
            "prediction": pred,
            "scorer": scorer,
            "score": score_mode(ec.scoring, scorer, pred, sample),
            # format and content decided apart (form_content): is the error lost alignment or lost knowledge
            **record_fields(pred, sample, scorer),
            # the test record as stored, where mcit's reading differs (what CoIN's judge is shown)
            **{k: sample.extra[k] for k in RECORD_FIELDS if k in sample.extra},
        })
    task_score = 100.0 * sum(r["score"] for r in records) / max(1, len(records))
    return task_score, records


def trivial_baseline(train: list[Sample], test: list[Sample], scorer: str,
                     mode: str = "corrected") -> tuple[str, float]:
    """The score of a constant answer: the most common training answer (ties: first seen), or
    for boxes, where every answer is unique, the mean training box. Scored in the run's mode."""
    if scorer == "bbox":
        boxes = [b for b in (parse_box(s.answer) for s in train) if b is not None]
        answer = format_bbox([sum(c) / len(boxes) for c in zip(*boxes)])
    else:
        answer = Counter(s.answer for s in train).most_common(1)[0][0]
    value = 100.0 * sum(score_mode(mode, scorer, answer, s) for s in test) / max(1, len(test))
    return answer, value
