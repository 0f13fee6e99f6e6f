"""Sequential LoRA (CoIN's LoRA-FT baseline): one PEFT LoRA adapter on the language model's
linear layers, continued from task to task; the projector optionally trains in full."""
from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file

from ..models.adapters import projector_modules, set_trainable, target_regex
from ..models.fused_lora import use_fused
from .base import Method


class SequentialLoRA(Method):
    name = "lora"

    def lora_config(self, model) -> LoraConfig:
        c = self.cfg
        return use_fused(LoraConfig(
            r=c.lora_r,
            lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout,
            target_modules=target_regex(model, c.target_modules),
            # Saved with the adapter (in full) so a stage checkpoint is self-contained.
            modules_to_save=projector_modules(model) if c.train_projector else None,
        ))

    def setup(self, model, run_cfg):
        set_trainable(model, language_model=False, projector=False)
        return get_peft_model(model, self.lora_config(model))

    def load_model(self, model, directory: Path) -> None:
        """Adapter (and projector) weights of a saved stage back into the live PEFT model."""
        result = set_peft_model_state_dict(model, load_file(str(Path(directory) / "adapter_model.safetensors")))
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"{directory}: adapter keys the model does not have: {result.unexpected_keys[:5]}")
