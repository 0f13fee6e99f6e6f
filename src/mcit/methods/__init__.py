"""Continual-tuning methods, one file each, behind the `Method` interface (methods/base.py).

A method is either a *base*, what trains (full, lora, moelora, olora, lora-taskid, lcia,
projector, multitask), or an *addition* (`Addition`), what it adds to training (replay's
samples, EWC's and LwF's losses, EMA's averaging). `method.name` picks the base and
`method.with` the additions: `method.name=moelora method.with=[replay, ewc]`. An addition
named alone runs on sequential LoRA, as before composition (`method.name=ewc` is lora + ewc).

Every method is registered once, in methods/registry.py: its name, its class (imported only
when the method is used, so one method's dependencies never slow down or break another), its
role and its settings, from which the `method:` config section is built. A method from outside
mcit is named by entry point (group `mcit.methods`) or dotted path (`my_pkg.my_module:MyMethod`)
and declares its settings on its class (`settings`, values under `method.options`).

build_method wraps the additions around the base, innermost first: every hook runs the base's
part first, then each addition's in the order of `method.with`, except that an addition which
rewrites the weights at a task's end (ema) comes right after the base (see base.Addition).
"""
from __future__ import annotations

from ..fields import Range, setting
from .registry import BUILTIN, SPECS, MethodConfig, MethodSpec, find_spec, resolve

METHODS: dict[str, str] = {s.name: s.target for s in BUILTIN}  # name -> "module:Class"


def method_class(name: str) -> type:
    """The class behind a method name (built-in, entry point or dotted path); ConfigError if none."""
    return find_spec(name).load()


def build_method(cfg):
    """The method the section `cfg` (a MethodConfig) describes, combination checked."""
    from ..config import check_config

    check_config(cfg, "method.")  # also for configs built in Python, not loaded
    plan = resolve(cfg)
    method = plan.base.load()(cfg)
    for spec in plan.additions:
        method = spec.load()(cfg, inner=method, namespace="" if plan.legacy_state else f"{spec.name}/")
    return method


def __getattr__(name: str):
    # The interface classes import torch: loaded when asked for, so that reading the registry
    # (every config load) stays light.
    if name in ("Method", "Addition", "TaskContext", "add_losses"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BUILTIN", "METHODS", "SPECS", "Addition", "Method", "MethodConfig", "MethodSpec", "Range",
           "TaskContext", "add_losses", "build_method", "find_spec", "method_class", "resolve", "setting"]
