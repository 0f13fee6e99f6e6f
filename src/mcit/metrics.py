"""Sequence metrics over a continual-learning accuracy matrix.

``a[t][i]`` is the score (0-100) on task ``i`` after training stage ``t`` (0-based; stage ``t``
trained task ``t``). Only the lower triangle (``i <= t``) is required; upper-triangle cells may
be ``None``/NaN. ``zero_shot[i]`` is the base model's score on task ``i``.
The formulas are the usual ones (MFT, MFN, MAA, BWT, Chaudhry forgetting, FWT), written here
with 0-based indices.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["FORM_CONTENT_NAMES", "METRIC_NAMES", "as_matrix", "compute_metrics", "form_content_summary",
           "pool_form_content"]

METRIC_NAMES = ("MFT", "MFN", "MAA", "BWT", "Forgetting", "FWT")
# One cell of the format/content decomposition (form_content_summary), all in percent.
FORM_CONTENT_NAMES = ("score", "format_valid", "content", "format_error_share", "recovered_share")


def _to_float(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} is not a number: {value!r}") from None


def as_matrix(matrix: Any) -> np.ndarray:
    """Validate ``matrix`` and return it as a float array with NaN for missing cells.

    Raises ``ValueError`` if it is not square, a lower-triangle cell is missing or
    non-finite, or an upper-triangle cell is infinite.
    """
    rows = list(matrix)
    T = len(rows)
    if T == 0:
        raise ValueError("accuracy matrix is empty")
    out = np.full((T, T), np.nan)
    for t, row in enumerate(rows):
        row = list(row)
        if len(row) != T:
            raise ValueError(f"accuracy matrix is not square: row {t} has {len(row)} entries, expected {T}")
        for i, value in enumerate(row):
            v = _to_float(value, f"cell a[{t}][{i}]")
            if i <= t and not math.isfinite(v):
                raise ValueError(
                    f"cell a[{t}][{i}] (stage {t}, task {i}) is in the lower triangle and must be "
                    f"a finite number, got {value!r}"
                )
            if i > t and math.isinf(v):
                raise ValueError(f"cell a[{t}][{i}] (stage {t}, task {i}) is infinite")
            out[t, i] = v
    return out


def _as_zero_shot(zero_shot: Any, T: int) -> np.ndarray | None:
    if zero_shot is None:
        return None
    values = list(zero_shot)
    if len(values) != T:
        raise ValueError(f"zero_shot has {len(values)} entries, expected {T}")
    out = np.array([_to_float(v, f"zero_shot[{i}]") for i, v in enumerate(values)])
    for i, v in enumerate(out):
        if math.isinf(v):
            raise ValueError(f"zero_shot[{i}] is infinite")
    return out


def compute_metrics(matrix: Any, zero_shot: Sequence[float | None] | None = None) -> dict[str, float | None]:
    """Return MFT, MFN, MAA, BWT, Forgetting and FWT for a T x T accuracy matrix.

    BWT and Forgetting are ``None`` when T == 1. FWT is ``None`` unless every cell
    ``a[i-1][i]`` (i >= 1) and the matching ``zero_shot[i]`` are available, and T > 1.
    """
    a = as_matrix(matrix)
    T = a.shape[0]
    b = _as_zero_shot(zero_shot, T)

    diag = np.diag(a)
    final = a[T - 1]
    mft = float(diag.mean())
    mfn = float(final.mean())
    # A_t averages the tasks seen so far (row t, columns 0..t).
    maa = float(np.mean([a[t, : t + 1].mean() for t in range(T)]))

    bwt = forgetting = fwt = None
    if T > 1:
        bwt = float(np.mean(final[: T - 1] - diag[: T - 1]))
        # Best score of task i over stages i..T-2 (the final stage excluded), minus its final score.
        drops = [a[i : T - 1, i].max() - final[i] for i in range(T - 1)]
        forgetting = float(np.mean(drops))
        if b is not None:
            upper = np.array([a[i - 1, i] for i in range(1, T)])
            base = b[1:]
            if np.all(np.isfinite(upper)) and np.all(np.isfinite(base)):
                fwt = float(np.mean(upper - base))

    return {"MFT": mft, "MFN": mfn, "MAA": maa, "BWT": bwt, "Forgetting": forgetting, "FWT": fwt}


def form_content_summary(records: Sequence[dict]) -> dict[str, float | int | None]:
    """The format/content decomposition of one task at one stage, from its prediction records
    (each with ``score`` and ``content`` in [0, 1] and ``format_valid``, see
    :mod:`mcit.eval.form_content`). In percent:

    score               the instruction-following (IF) score, 100 * mean(score)
    format_valid        share of answers in the form the instruction asks for
    content             content accuracy in any form, 100 * mean(content)
    format_error_share  share of the IF error that falls on answers of the wrong form; the rest
                        are content errors (right form, wrong content)
    recovered_share     share of the IF error that is right in content all the same,
                        sum(max(0, content - score)) / sum(1 - score): the errors that are lost
                        alignment and not lost knowledge

    The IF error of an answer is ``1 - score`` (a soft VQA score can be partly wrong). The two
    shares are None when there is no error to share out; everything but ``n`` is None for no records.
    """
    n = len(records)
    if n == 0:
        return {"n": 0, **{k: None for k in FORM_CONTENT_NAMES}}
    errors = [1.0 - float(r["score"]) for r in records]
    total = sum(errors)

    def share(parts) -> float | None:
        return None if total <= 0.0 else 100.0 * sum(parts) / total

    return {
        "n": n,
        "score": 100.0 * sum(float(r["score"]) for r in records) / n,
        "format_valid": 100.0 * sum(bool(r["format_valid"]) for r in records) / n,
        "content": 100.0 * sum(float(r["content"]) for r in records) / n,
        "format_error_share": share(e for e, r in zip(errors, records) if not r["format_valid"]),
        "recovered_share": share(max(0.0, float(r["content"]) - float(r["score"])) for r in records),
    }


def pool_form_content(summaries: Sequence[dict]) -> dict[str, float | int | None]:
    """Several cells of :func:`form_content_summary` as one, each answer weighing the same (the
    shares weighted by each cell's IF error): e.g. the old tasks after the last stage."""
    cells = [c for c in summaries if c.get("n")]
    n = sum(c["n"] for c in cells)
    if n == 0:
        return {"n": 0, **{k: None for k in FORM_CONTENT_NAMES}}
    errors = [c["n"] * (100.0 - c["score"]) / 100.0 for c in cells]
    total = sum(errors)

    def mean(key: str) -> float:
        return sum(c["n"] * c[key] for c in cells) / n

    def share(key: str) -> float | None:
        return None if total <= 0.0 else sum(e * (c[key] or 0.0) for e, c in zip(errors, cells)) / total

    return {"n": n, "score": mean("score"), "format_valid": mean("format_valid"), "content": mean("content"),
            "format_error_share": share("format_error_share"), "recovered_share": share("recovered_share")}
