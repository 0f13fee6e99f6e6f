"""Continual-tuning methods, one file each, behind the `Method` interface (methods/base.py)."""
from __future__ import annotations

from ..config import ConfigError
from .base import Method, TaskContext
from .full import FullFineTune
from .lora import SequentialLoRA

METHODS: dict[str, type[Method]] = {m.name: m for m in (FullFineTune, SequentialLoRA)}


def build_method(cfg) -> Method:
    """`cfg` is the MethodConfig; its `name` picks the method."""
    try:
        cls = METHODS[cfg.name]
    except KeyError:
        raise ConfigError(f"unknown method.name '{cfg.name}'; choose one of {sorted(METHODS)}") from None
    return cls(cfg)


__all__ = ["METHODS", "Method", "TaskContext", "build_method"]
