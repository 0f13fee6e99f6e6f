"""Batched greedy generation: left padding, the KV cache, one `generate` call per batch.

A run evaluates every test set after each stage (about 44 evaluations in the default run): a
`PromptCache` keeps each test prompt's processor output (token ids, pixel values) so its image
is read and encoded once per run, and `EvalTiming` says where an evaluation's seconds went."""
from __future__ import annotations

import inspect
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList, StaticCache

from ..data.encode import chat_prompt, collate, load_image, tokenizer_of
from ..data.schema import Sample
from ..progress import track

KV_CACHES = ("dynamic", "static")  # eval.kv_cache; spelt out again in mcit.config (no torch there)
DTYPES = ("float32", "bfloat16")  # eval.dtype, likewise


def prompt_batch(processor, samples: list[Sample], image_root: Path | None) -> dict:
    """The padded prompts of `samples` (padding side as the tokenizer is set). Only the images
    that exist are passed: every supported processor matches them to the prompts' image
    placeholders in order, so questions with and without an image share one batch."""
    images = [load_image(image_root, s.image) for s in samples]
    prompts = [chat_prompt(processor, s.text, im is not None) for s, im in zip(samples, images)]
    present = [im for im in images if im is not None]
    return processor(text=prompts, images=present or None, padding=True, return_tensors="pt")


def encode_prompt(processor, sample: Sample, image_root: Path | None) -> dict:
    """One prompt as `collate` takes it: token fields 1-D, per-image tensors (pixel values,
    grids, sizes) as the processor returns them. The attention mask is left out: collate
    rebuilds it, zeros over the padding."""
    image = load_image(image_root, sample.image)
    enc = processor(text=[chat_prompt(processor, sample.text, image is not None)],
                    images=[image] if image is not None else None, return_tensors="pt")
    enc.pop("attention_mask", None)
    length = enc["input_ids"].shape[1]
    return {k: v[0] if v.shape == (1, length) else v for k, v in enc.items()}


class PromptCache:
    """Each test prompt's `encode_prompt` output, kept in memory for the run, so that every later
    evaluation of the same test set reads no image and runs no processor. Bounded: once
    `max_bytes` are held, further prompts are encoded each time they are asked for and not kept.
    (The default run's 480 prompts of 64x64 images hold 23 MB.)"""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: dict[tuple, dict] = {}
        self._processor = None

    def encoded(self, processor, samples: list[Sample], image_root: Path | None) -> list[dict]:
        if processor is not self._processor:  # a different processor encodes differently: start again
            self._items.clear()
            self.bytes, self._processor = 0, processor
        return [self._one(processor, s, image_root) for s in samples]

    def _one(self, processor, sample: Sample, image_root: Path | None) -> dict:
        key = _prompt_key(sample, image_root)
        item = self._items.get(key) if key is not None else None
        if item is not None:
            self.hits += 1
            return item
        self.misses += 1
        item = encode_prompt(processor, sample, image_root)
        size = sum(t.nbytes for t in item.values())
        if key is not None and self.bytes + size <= self.max_bytes:
            self._items[key] = item
            self.bytes += size
        return item


def _prompt_key(sample: Sample, image_root: Path | None) -> tuple | None:
    """What a prompt's encoding depends on; None for an in-memory image (not kept)."""
    if sample.image is not None and not isinstance(sample.image, str):
        return None
    return sample.task, sample.id, sample.text, str(image_root), sample.image


@dataclass
class EvalTiming:
    """Where an evaluation's seconds went (this process's samples): encoding the prompts (reading
    images, the processor, padding), the prefill (vision tower and prompt, up to the first answer
    token) and decoding the rest of the answer."""

    samples: int = 0
    encode_seconds: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.encode_seconds + self.prefill_seconds + self.decode_seconds

    def record(self) -> dict:
        per = 1 / max(1, self.samples)
        return {"samples": self.samples, "seconds": round(self.seconds, 4),
                "seconds_per_sample": round(self.seconds * per, 6),
                "encode_seconds_per_sample": round(self.encode_seconds * per, 6),
                "prefill_seconds_per_sample": round(self.prefill_seconds * per, 6),
                "decode_seconds_per_sample": round(self.decode_seconds * per, 6)}


class _FirstTokenClock(LogitsProcessor):
    """Notes when the first answer token's scores arrive (the end of the prefill); scores pass unchanged."""

    def __init__(self):
        self.first: float | None = None

    def __call__(self, input_ids, scores):
        if self.first is None:
            self.first = time.perf_counter()
        return scores


def supports_static_cache(model) -> bool:
    """Whether `model` generates with transformers' StaticCache: a model whose forward
    transformers marks compilable (fixed-shape cache and masks) and that takes Cache objects."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps it
    return bool(getattr(base, "_can_compile_fullgraph", False)) and base._supports_default_dynamic_cache()


# transformers renamed the `past_key_values` argument to `cache` within 5.x (the old name warns)
_CACHE_KWARG = ("cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
                else "past_key_values")


def _static_cache(model, prompt_length: int, max_new_tokens: int) -> dict:
    """A StaticCache sized to this batch: written in place, where the default cache concatenates
    every layer's keys and values at each token. Made here rather than with
    cache_implementation="static", which keeps the largest size any earlier call needed."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache = StaticCache(config=base.config.get_text_config(decoder=True), max_cache_len=prompt_length + max_new_tokens)
    return {_CACHE_KWARG: cache}


@torch.no_grad()
def generate_answers(model, processor, samples: list[Sample], image_root: Path | None, *,
                     batch_size: int, max_new_tokens: int, device=None, desc: str = "eval",
                     show_progress: bool = True, prompts: PromptCache | None = None,
                     kv_cache: str = "static", dtype: str = "float32",
                     timing: EvalTiming | None = None) -> list[str]:
    """Greedy answers for `samples`, in order. Left padding keeps every prompt's last token
    at the same position, so a whole batch decodes together with the KV cache. A batch may
    mix questions with and without an image.

    ``prompts``: encodings kept across calls (None: encode each batch afresh); ``kv_cache``:
    "static" (the default) where the model supports it, else "dynamic"; ``dtype`` "bfloat16":
    computed under bf16 autocast (the weights stay as they are; some answers change);
    ``timing``: where the seconds went, added to it."""
    tok = tokenizer_of(processor)
    old_side = tok.padding_side
    tok.padding_side = "left"
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    static = kv_cache == "static" and supports_static_cache(model)
    precision = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
                 if dtype == "bfloat16" else nullcontext())
    timing = timing if timing is not None else EvalTiming()
    answers: list[str] = []
    starts = range(0, len(samples), batch_size)
    try:
        for start in track(starts, desc, len(starts), unit="batch", enabled=show_progress):
            chunk = samples[start:start + batch_size]
            began = time.perf_counter()
            batch = (collate(prompts.encoded(processor, chunk, image_root), tok.pad_token_id, "left")
                     if prompts is not None else prompt_batch(processor, chunk, image_root))
            enc = {k: v.to(device) for k, v in batch.items()}
            clock = _FirstTokenClock()
            encoded = time.perf_counter()
            with precision:
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    use_cache=True,
                    pad_token_id=tok.pad_token_id,
                    logits_processor=LogitsProcessorList([clock]),
                    **(_static_cache(model, enc["input_ids"].shape[1], max_new_tokens) if static else {}),
                )
            done = time.perf_counter()
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            answers.extend(tok.batch_decode(new_tokens, skip_special_tokens=True))
            first = clock.first or done
            timing.samples += len(chunk)
            timing.encode_seconds += encoded - began
            timing.prefill_seconds += first - encoded
            timing.decode_seconds += done - first
    finally:
        tok.padding_side = old_side
        model.train(was_training)
    return answers
