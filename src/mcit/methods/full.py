"""Sequential full fine-tuning: every language-model weight (and the projector) trains, task
after task. The classic forgetting baseline."""
from __future__ import annotations

from ..models.adapters import set_trainable
from .base import Method


class FullFineTune(Method):
    name = "full"

    def setup(self, model, run_cfg):
        set_trainable(model, language_model=True, projector=self.cfg.train_projector)
        return model
