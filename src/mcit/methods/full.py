"""Sequential full fine-tuning: every language-model weight (and the projector) trains, task
after task. The classic forgetting baseline."""
from __future__ import annotations

from pathlib import Path

from ..models.adapters import set_trainable
from .base import Method


class FullFineTune(Method):
    name = "full"

    def setup(self, model, run_cfg):
        set_trainable(model, language_model=True, projector=self.cfg.train_projector)
        return model

    def load_model(self, model, directory: Path) -> None:
        """A saved stage's full weights back into the live model (every key must match).
        Read through from_pretrained: save_pretrained may write the checkpoint's own key layout."""
        saved = type(model).from_pretrained(Path(directory), dtype=next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict(), strict=True)
