"""Load any local image-text-to-text checkpoint (or the built-in model) the same way."""
from __future__ import annotations

from pathlib import Path

import torch
from ..config import ConfigError
from ..data.encode import tokenizer_of
from transformers import AutoModelForImageTextToText, AutoProcessor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_checkpoint(path: str | Path, dtype: str = "float32"):
    """(model, processor) from a local folder saved with `save_pretrained` (LLaVA-1.5-hf,
    Qwen2-VL, the built-in tiny LLaVA, ...). Never touches the network."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.name: '{path}' is not a local checkpoint folder (no config.json)")
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: '{dtype}' is not one of {sorted(DTYPES)}")
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True)
    if getattr(processor, "chat_template", None) is None:
        raise ConfigError(f"model.name: the processor in '{path}' has no chat template")
    tok = tokenizer_of(processor)
    if tok.pad_token_id is None:  # Llama-family tokenizers ship without one; batching needs it
        tok.pad_token = tok.eos_token
    return model, processor
