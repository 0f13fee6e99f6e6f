"""Load any local image-text-to-text checkpoint (or the built-in model) the same way."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from ..config import ConfigError
from ..data.encode import tokenizer_of
from .folder_check import MLLM, check_model_folder
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING, processor_class_from_name

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_checkpoint(path: str | Path, dtype: str = "float32", label: str = "model.name"):
    """(model, processor) from a local folder saved with `save_pretrained` (LLaVA-1.5-hf,
    LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Idefics3, the built-in tiny LLaVA, ...). Never touches
    the network. The folder is checked first (every problem named after ``label``)."""
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: '{dtype}' is not one of {sorted(DTYPES)}")
    path = check_model_folder(path, MLLM, label)
    processor = load_processor(path, label)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True)
    if getattr(processor, "chat_template", None) is None:
        raise ConfigError(f"{label}: the processor in '{path}' has no chat template")
    tok = tokenizer_of(processor)
    if tok.pad_token_id is None:  # Llama-family tokenizers ship without one; batching needs it
        tok.pad_token = tok.eos_token
    return model, processor


def load_processor(path: Path, label: str = "model.name"):
    """AutoProcessor, or, where it fails only because the family's *video* processor needs
    torchvision (transformers 5: Qwen2-VL, Qwen2.5-VL), the same processor class without its
    video part: we only ever pass images, which the Pillow image processor handles.
    Processors that need their video part even for images (SmolVLM's chat template reads the
    video processor's settings) get a clean error naming the missing package."""
    try:
        return AutoProcessor.from_pretrained(path, local_files_only=True)
    except ImportError as err:
        cls = _processor_class(path) if "torchvision" in str(err).lower() else None
        video = inspect.signature(cls.__init__).parameters.get("video_processor") if cls is not None else None
        if video is None or video.default is not None:  # no video part, or a required one
            reason = " ".join(str(err).split())
            raise ConfigError(f"{label}: cannot build the processor of '{path}': {reason}") from err
    # Same class name, so a processor saved from it reloads as the original class elsewhere.
    image_only = type(cls.__name__, (cls,), {"get_attributes": classmethod(_without_video(cls))})
    return image_only.from_pretrained(path, local_files_only=True)


def _without_video(cls):
    return lambda _: [a for a in cls.get_attributes() if a != "video_processor"]


def _processor_class(path: Path):
    """The processor class AutoProcessor would pick: named in a saved config, else the model type's."""
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if (path / name).is_file():
            named = json.loads((path / name).read_text()).get("processor_class")
            if named:
                return processor_class_from_name(named)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    return PROCESSOR_MAPPING[type(config)] if type(config) in PROCESSOR_MAPPING else None
