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
        if self.high == math.inf:
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if self.low == -math.inf:
            return f"must be {'<' if self.high_open else '<='} {self.high:g}"
        return (f"must be in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


def finite(value: Any) -> str | None:
    return None if math.isfinite(value) else "must be a finite number"
