"""Samples -> model inputs: the chat prompt, answer-only labels, batching with padding.

Everything goes through the checkpoint's own processor (chat template, image processing,
image-token expansion), so the built-in model and a real LLaVA / Qwen2-VL share this code.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..config import ConfigError
from .images import open_image
from .schema import Sample

IGNORE_INDEX = -100  # label value that the loss skips (transformers' convention)


def load_image(image_root: Path | None, rel: str | Image.Image | None) -> Image.Image | None:
    """The sample's image: a path under ``image_root``, or an in-memory PIL image (EMT sets)."""
    if rel is None:
        return None
    if isinstance(rel, Image.Image):
        return rel.convert("RGB")
    return open_image(Path(image_root) / rel, label=rel)  # damaged or too large: a DataError naming it


def _user_message(text: str, with_image: bool) -> dict:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


def chat_prompt(processor, text: str, with_image: bool) -> str:
    """The user turn through the processor's chat template, ending where the answer starts."""
    return processor.apply_chat_template([_user_message(text, with_image)], add_generation_prompt=True,
                                         tokenize=False)


def tokenizer_of(processor):
    """The text tokenizer inside a multimodal processor (or the tokenizer itself)."""
    return getattr(processor, "tokenizer", processor)


def answer_ids(processor, answer: str) -> list[int]:
    """Answer tokens plus end-of-sequence, tokenized on their own so the prompt/answer
    boundary (and hence the loss mask) is exact."""
    tok = tokenizer_of(processor)
    return tok(answer.strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


class TemplateError(ValueError):
    """The chat template cannot be split into turns (it rewrites earlier turns)."""


def turn_contexts(processor, conversation, with_image: bool) -> list[str]:
    """The unsupervised text before each gpt answer of `conversation` ((human, gpt) pairs).

    The first is exactly `chat_prompt` (so a single turn is encoded as it always was). Each
    later one is what the chat template puts between the end of the previous answer and the
    start of the next: the conversation is rendered up to and including each answer, and every
    rendering must extend the previous one (the prefix property). Where the template closes
    an answer with eos, that eos is left out (`answer_ids` already supervises it); whatever
    else it adds there (Qwen's newline after <|im_end|>, the LLaVA-1.5 hub template's space)
    is context."""
    messages = []
    for k, (human, gpt) in enumerate(conversation):
        messages += [_user_message(human, with_image and k == 0),
                     {"role": "assistant", "content": [{"type": "text", "text": gpt}]}]

    def render(n: int, generation: bool) -> str:
        return processor.apply_chat_template(messages[:n], add_generation_prompt=generation, tokenize=False)

    contexts = [chat_prompt(processor, conversation[0][0], with_image)]
    asked = contexts[0]
    eos = tokenizer_of(processor).eos_token or ""
    for k in range(1, len(conversation)):
        answered, asked_next = render(2 * k, False), render(2 * k + 1, True)
        if not (answered.startswith(asked) and asked_next.startswith(answered)):
            raise TemplateError(f"the chat template does not extend turn {k}'s rendering when turn "
                                f"{k + 1} is added (it rewrites or drops earlier turns), so the gpt turns "
                                "cannot be labelled; use a checkpoint whose template keeps every turn, "
                                "or single-turn records")
        answer, tail = conversation[k - 1][1].strip(), answered[len(asked):].lstrip()
        if not tail.startswith(answer):
            raise TemplateError(f"the chat template does not render gpt turn {k} verbatim")
        end = tail[len(answer):].removeprefix(eos)
        contexts.append(end + asked_next[len(answered):])
        asked = asked_next
    return contexts


def encode_for_training(processor, sample: Sample, image_root: Path | None, max_length: int) -> dict:
    """One training example: the conversation with every gpt answer (and its eos) labelled,
    everything else (prompts, image tokens, the template's turn markers) masked.

    The first context goes through the processor (image-token expansion); later contexts and
    the answers are tokenized on their own, so every boundary of the loss mask is exact."""
    image = load_image(image_root, sample.image)
    try:
        contexts = turn_contexts(processor, sample.conversation, image is not None)
    except TemplateError as exc:
        raise ConfigError(f"task {sample.task}, record {sample.id}: {exc}") from None
    enc = processor(text=[contexts[0]], images=[image] if image is not None else None, return_tensors="pt")
    prompt_len = enc["input_ids"].shape[1]
    ids, labels = enc.pop("input_ids")[0].tolist(), [IGNORE_INDEX] * prompt_len
    enc.pop("attention_mask", None)
    tok = tokenizer_of(processor)
    for k, (context, (_, answer)) in enumerate(zip(contexts, sample.conversation)):
        if k:
            masked = tok(context, add_special_tokens=False)["input_ids"]
            ids, labels = ids + masked, labels + [IGNORE_INDEX] * len(masked)
        target = answer_ids(processor, answer)
        ids, labels = ids + target, labels + target
    if len(ids) > max_length:
        # Truncating would cut image tokens or an answer; refuse instead of training on garbage.
        raise ConfigError(
            f"task {sample.task}, record {sample.id}: {len(ids)} tokens exceed train.max_length={max_length}"
        )
    item = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
    for key, value in enc.items():
        if value.shape == (1, prompt_len):
            # One value per prompt token (Qwen2-VL's mm_token_type_ids): the rest is text, 0.
            item[key] = torch.cat([value[0], value.new_zeros(len(ids) - prompt_len)])
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
