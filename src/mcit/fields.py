"""Declaring one config field: its default, a one-line help text, other spellings to suggest
(``aliases``) and an optional range check, all kept in the dataclass field's metadata.

mcit.config's sections and every method's settings (mcit.methods.registry) are declared with
`setting`. It lives apart from the loader so that declaring method settings imports neither
the config loader nor torch; mcit.config reads the metadata and runs the checks at load time.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable, Sequence


def setting(default: Any, help: str, *, aliases: Sequence[str] = (),
            check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field with its documentation. ``check(value)`` returns why a value is out of
    range ("must be >= 0"), or None; a null value (an optional field left unset) is not checked."""
    metadata = {"help": help, "aliases": tuple(aliases), "check": check}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Range:
    """A numeric interval as a check: Range(0, 1, low_open=True) -> "must be in (0, 1]"."""

    def __init__(self, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
                 high_open: bool = False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def __call__(self, value: Any) -> str | None:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return None if above and below and math.isfinite(value) else self.rule

    @property
    def rule(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high == math.inf:
            return f"must be {'>' if self.low_open else '>='} {low}"
        if self.low == -math.inf:
            return f"must be {'<' if self.high_open else '<='} {high}"
        return f"must be in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(x: float) -> str:
    """4294967295, not 4.29497e+09: a bound is shown exactly."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def finite(value: Any) -> str | None:
    return None if math.isfinite(value) else "must be a finite number"


class OneOf:
    """A name among a fixed set as a check: OneOf("a", "b") -> "must be one of a, b"."""

    def __init__(self, *names: str):
        self.names = names

    def __call__(self, value: Any) -> str | None:
        return None if value in self.names else f"must be one of {', '.join(self.names)}"


class Each:
    """A check applied to every item of a list or every value of a mapping: the first failure,
    naming the item ("Grounding: must be >= 1")."""

    def __init__(self, check: Callable[[Any], str | None]):
        self.check = check

    def __call__(self, value: Any) -> str | None:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            problem = self.check(item) if item is not None else None
            if problem:
                return f"{key}: {problem}" if isinstance(value, dict) else f"item {key}: {problem}"
        return None


def not_empty(value: Any) -> str | None:
    """An optional list or text that, when given, must hold something (null means "the default")."""
    return "must not be empty (null = the default)" if len(value) == 0 else None


def relative_name(value: Any) -> str | None:
    """A folder name, or a relative path of them, that stays inside its parent (rundir's rule)."""
    parts = value.replace("\\", "/").split("/")
    if not value.strip() or value.startswith("/") or ".." in parts or "\0" in value:
        return 'must be a relative folder name that stays inside output_dir (not absolute, no "..")'
    return None


# The usual ranges, shared by mcit.config and the method settings.
POSITIVE = Range(0, low_open=True)  # rates, temperatures, timeouts: > 0 and finite
NON_NEGATIVE = Range(0)  # weights and penalties where 0 means off
AT_LEAST_ONE = Range(1)  # counts, sizes, steps, batch sizes
SHARE = Range(0, 1)  # ratios and shares
SEED = Range(0, 2**32 - 1)  # what numpy, torch and random all accept
