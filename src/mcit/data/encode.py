"""Samples -> model inputs: the chat prompt, answer-only labels, batching with padding.

Everything goes through the checkpoint's own processor (chat template, image processing,
image-token expansion), so the built-in model and a real LLaVA / Qwen2-VL share this code.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .schema import Sample

IGNORE_INDEX = -100  # label value that the loss skips (transformers' convention)


def load_image(image_root: Path | None, rel: str | Image.Image | None) -> Image.Image | None:
    """The sample's image: a path under ``image_root``, or an in-memory PIL image (EMT sets)."""
    if rel is None:
        return None
    if isinstance(rel, Image.Image):
        return rel.convert("RGB")
    with Image.open(Path(image_root) / rel) as im:
        return im.convert("RGB")


def chat_prompt(processor, text: str, with_image: bool) -> str:
    """The user turn through the processor's chat template, ending where the answer starts."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def tokenizer_of(processor):
    """The text tokenizer inside a multimodal processor (or the tokenizer itself)."""
    return getattr(processor, "tokenizer", processor)


def answer_ids(processor, answer: str) -> list[int]:
    """Answer tokens plus end-of-sequence, tokenized on their own so the prompt/answer
    boundary (and hence the loss mask) is exact."""
    tok = tokenizer_of(processor)
    return tok(answer.strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def encode_for_training(processor, sample: Sample, image_root: Path | None, max_length: int) -> dict:
    """One training example: prompt tokens (labels masked) then answer tokens (labels kept)."""
    image = load_image(image_root, sample.image)
    prompt = chat_prompt(processor, sample.text, image is not None)
    enc = processor(text=[prompt], images=[image] if image is not None else None, return_tensors="pt")
    prompt_ids = enc.pop("input_ids")[0]
    enc.pop("attention_mask", None)
    target = answer_ids(processor, sample.answer)
    ids = prompt_ids.tolist() + target
    if len(ids) > max_length:
        # Truncating would cut image tokens or the answer; refuse instead of training on garbage.
        raise ValueError(
            f"task {sample.task}, record {sample.id}: {len(ids)} tokens exceed train.max_length={max_length}"
        )
    item = {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor([IGNORE_INDEX] * len(prompt_ids) + target),
    }
    for key, value in enc.items():
        if value.shape == (1, len(prompt_ids)):
            # One value per prompt token (Qwen2-VL's mm_token_type_ids): answer tokens are text, 0.
            item[key] = torch.cat([value[0], value.new_zeros(len(target))])
        else:  # per image: pixel_values, image_grid_thw, image_sizes, pixel_attention_mask, ...
            item[key] = value
    return item


def collate(items: list[dict], pad_id: int, padding_side: str = "right") -> dict:
    """Pad token fields to the longest item; concatenate image tensors along dim 0.

    A token field is a 1-D tensor as long as the item's input_ids; everything else is per
    image, with images along dim 0. Items without an image simply add none. Image tensors of
    different sizes (LLaVA-NeXT / Idefics3 crop counts, Idefics3 patch grids) are zero-padded
    to the largest first: those families drop all-zero crops or read the real count from
    `image_sizes`."""
    width = max(len(it["input_ids"]) for it in items)
    out: dict[str, torch.Tensor] = {}

    def pad(seqs, value):
        rows = []
        for s in seqs:
            fill = torch.full((width - len(s),), value, dtype=s.dtype)
            rows.append(torch.cat([fill, s] if padding_side == "left" else [s, fill]))
        return torch.stack(rows)

    out["input_ids"] = pad([it["input_ids"] for it in items], pad_id)
    out["attention_mask"] = pad([torch.ones_like(it["input_ids"]) for it in items], 0)
    if "labels" in items[0]:
        out["labels"] = pad([it["labels"] for it in items], IGNORE_INDEX)
    keys = dict.fromkeys(k for it in items for k in it if k not in ("input_ids", "labels", "attention_mask"))
    for key in keys:
        if _is_token_field(items, key):
            out[key] = pad([it.get(key, torch.zeros_like(it["input_ids"])) for it in items], 0)
        else:
            out[key] = _cat_padded([it[key] for it in items if key in it])
    return out


def _is_token_field(items: list[dict], key: str) -> bool:
    return all(it[key].dim() == 1 and len(it[key]) == len(it["input_ids"]) for it in items if key in it)


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0 after zero-padding every other dim to the largest size."""
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    if all(list(t.shape[1:]) == shape for t in tensors):
        return torch.cat(tensors, dim=0)
    padded = []
    for t in tensors:
        z = t.new_zeros((t.shape[0], *shape))
        z[(slice(None), *(slice(0, n) for n in t.shape[1:]))] = t
        padded.append(z)
    return torch.cat(padded, dim=0)
