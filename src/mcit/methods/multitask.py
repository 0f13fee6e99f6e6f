"""Multitask joint training, the upper-bound reference: one LoRA trained once on the union of
every task's training data (the same total step budget as the sequential run), then evaluated
on every task. Nothing is learned in sequence, so nothing can be forgotten."""
from __future__ import annotations

from .lora import SequentialLoRA


class Multitask(SequentialLoRA):
    name = "multitask"
    joint = True  # the loop trains one stage on all tasks at once
