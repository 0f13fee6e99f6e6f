"""Batched greedy generation: left padding, the KV cache, one `generate` call per batch."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.encode import chat_prompt, load_image, tokenizer_of
from ..data.schema import Sample
from ..progress import track


def prompt_batch(processor, samples: list[Sample], image_root: Path | None) -> dict:
    """The padded prompts of `samples` (padding side as the tokenizer is set). Only the images
    that exist are passed: every supported processor matches them to the prompts' image
    placeholders in order, so questions with and without an image share one batch."""
    images = [load_image(image_root, s.image) for s in samples]
    prompts = [chat_prompt(processor, s.text, im is not None) for s, im in zip(samples, images)]
    present = [im for im in images if im is not None]
    return processor(text=prompts, images=present or None, padding=True, return_tensors="pt")


@torch.no_grad()
def generate_answers(model, processor, samples: list[Sample], image_root: Path | None, *,
                     batch_size: int, max_new_tokens: int, device=None, desc: str = "eval",
                     show_progress: bool = True) -> list[str]:
    """Greedy answers for `samples`, in order. Left padding keeps every prompt's last token
    at the same position, so a whole batch decodes together with the KV cache. A batch may
    mix questions with and without an image."""
    tok = tokenizer_of(processor)
    old_side = tok.padding_side
    tok.padding_side = "left"
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    answers: list[str] = []
    starts = range(0, len(samples), batch_size)
    try:
        for start in track(starts, desc, len(starts), unit="batch", enabled=show_progress):
            chunk = samples[start:start + batch_size]
            enc = {k: v.to(device) for k, v in prompt_batch(processor, chunk, image_root).items()}
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                pad_token_id=tok.pad_token_id,
            )
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            answers.extend(tok.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tok.padding_side = old_side
        model.train(was_training)
    return answers
