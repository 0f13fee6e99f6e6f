"""The default-size tiny LLaVA and one synthetic training batch, shared by the step-time benches."""
from __future__ import annotations

import torch

from mcit.config import ModelConfig
from mcit.models.tiny_llava import build_model, build_processor, train_tokenizer


def tiny_model_and_batch(batch_size: int, text_tokens: int, image_size: int = 64):
    """(model, processor, batch): a fresh model from ModelConfig defaults and a batch of image
    tokens followed by random text, with the loss on the last 8 tokens (the answer), as in training."""
    mc = ModelConfig()
    processor = build_processor(train_tokenizer(["what color is the shape red blue yes no"] * 20, mc.vocab_size),
                                image_size, mc.patch_size)
    model = build_model(mc, processor, image_size)
    tok = processor.tokenizer
    g = torch.Generator().manual_seed(0)
    n, image_tokens = batch_size, (image_size // mc.patch_size) ** 2
    ids = torch.cat([torch.full((n, image_tokens), tok.convert_tokens_to_ids("<image>")),
                     torch.randint(10, len(tok), (n, text_tokens), generator=g)], 1)
    labels = torch.full_like(ids, -100)
    labels[:, -8:] = ids[:, -8:]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "pixel_values": torch.randn(n, 3, image_size, image_size, generator=g)}
    return model, processor, batch
