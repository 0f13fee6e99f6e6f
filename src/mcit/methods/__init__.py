"""Continual-tuning methods, one file each, behind the `Method` interface (methods/base.py).

`METHODS` maps a method name to the module that defines it; the module is imported only when
the method is used, so one method's optional dependencies never slow down or break another."""
from __future__ import annotations

import importlib

from ..config import ConfigError
from .base import Method, TaskContext

METHODS: dict[str, str] = {
    "full": "full",  # sequential full fine-tuning
    "lora": "lora",  # sequential LoRA (CoIN's LoRA-FT)
    "moelora": "moelora",  # CoIN's mixture of LoRA experts
    "multitask": "multitask",  # joint training on all tasks: the upper bound
    "lora-taskid": "taskid_lora",  # one LoRA per task, the task id given at test time
    "ema": "ema",  # LoRA + fixed-coefficient EMA of the weights
    "lcia": "lcia",  # LCIA: balanced EMA + instruction grouping with per-sample routing
    "replay": "replay",  # LoRA + a buffer of earlier samples
    "ewc": "ewc",  # LoRA + elastic weight consolidation
    "lwf": "lwf",  # LoRA + learning without forgetting
    "olora": "olora",  # orthogonal LoRA per task
    "projector": "projector",  # the projector alone (EMT's lightest setting)
}


def method_class(name: str) -> type[Method]:
    try:
        module = importlib.import_module(f"{__name__}.{METHODS[name]}")
    except KeyError:
        raise ConfigError(f"unknown method.name '{name}'; choose one of {sorted(METHODS)}") from None
    return next(c for c in vars(module).values()
                if isinstance(c, type) and issubclass(c, Method) and c.__dict__.get("name") == name)


def build_method(cfg) -> Method:
    """`cfg` is the MethodConfig; its `name` picks the method."""
    return method_class(cfg.name)(cfg)


__all__ = ["METHODS", "Method", "TaskContext", "build_method", "method_class"]
