"""Projector-only fine-tuning: the vision-language projector trains, the vision tower and the
language model stay frozen. EMT's lightest setting ("fine-tune the projector alone"); a stage
checkpoint holds the projector's weights only."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from ..models.adapters import PROJECTORS, is_projector, set_trainable
from .base import Method

WEIGHTS = "projector.safetensors"


def _projector_state(model) -> dict:
    return {name: p for name, p in model.named_parameters() if is_projector(name)}


class ProjectorOnly(Method):
    name = "projector"

    def setup(self, model, run_cfg):
        set_trainable(model, language_model=False, projector=True)
        if not _projector_state(model):
            raise ValueError(f"{type(model).__name__} has no projector module ({', '.join(PROJECTORS)}) to train")
        return model

    def save_model(self, model, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in _projector_state(model).items()}
        # written beside and renamed, so a cut-off save never leaves a half file under the real name
        tmp = directory / f".{WEIGHTS}.tmp"
        save_file(state, str(tmp))
        tmp.replace(directory / WEIGHTS)

    def load_model(self, model, directory: Path) -> None:
        saved = load_file(str(Path(directory) / WEIGHTS))
        live = _projector_state(model)
        if set(saved) != set(live):
            missing, extra = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
            raise RuntimeError(f"{directory}: projector keys differ from the model's (missing {missing[:3]}, "
                               f"unexpected {extra[:3]})")
        for name, p in live.items():
            p.data.copy_(saved[name].to(p.dtype))
