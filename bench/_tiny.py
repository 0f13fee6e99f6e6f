"""The default-size tiny LLaVA, one synthetic training batch and the interleaved step timing,
shared by the step-time benches."""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from mcit.config import ModelConfig
from mcit.models.tiny_llava import build_model, build_processor, train_tokenizer


def tiny_model_and_batch(batch_size: int, text_tokens: int, image_size: int = 64, **model_fields):
    """(model, processor, batch): a fresh model from ModelConfig defaults (or `model_fields`
    overriding them) and a batch of image tokens followed by random text, with the loss on the
    last 8 tokens (the answer), as in training."""
    mc = ModelConfig(**model_fields)
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


def parse_step_bench_args(ap: argparse.ArgumentParser, rounds: int, threads: int = 1) -> argparse.Namespace:
    """Adds the batch/rounds/threads options, parses, pins threads and seed: one setup keeps benches comparable."""
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--text-tokens", type=int, default=48, help="text tokens per sample, after the image tokens")
    ap.add_argument("--rounds", type=int, default=rounds, help="timed steps per variant")
    # One thread by default: on a shared 2-core machine, two OpenMP threads stall at every
    # barrier whenever another process holds a core (measured here: 6.4 s/step vs 0.21 s).
    ap.add_argument("--threads", type=int, default=threads, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return args


def time_interleaved(step: Callable[[str], None], keys: list[str], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Step times (ms) per variant in rotating interleaved rounds: load from other processes hits all alike."""
    for key in keys:  # warm-up (allocator, optimizer state, ...), not timed
        for _ in range(warmup):
            step(key)
    times: dict[str, list[float]] = {key: [] for key in keys}
    for i in range(rounds):
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:
            start = time.perf_counter()
            step(key)
            times[key].append((time.perf_counter() - start) * 1000)
    return times


def model_summary(model: torch.nn.Module, **model_fields) -> dict:
    """The bench model's size (ModelConfig defaults or the given fields), reported the same way by every bench."""
    mc = ModelConfig(**model_fields)  # what the bench model is built from
    return {"hidden_size": mc.hidden_size, "num_layers": mc.num_layers, "intermediate_size": mc.intermediate_size,
            "total_parameters": sum(p.numel() for p in model.parameters())}


def matmul_peak_gflops(threads: int, n: int = 1024, repeats: int = 20) -> float:
    """The machine's fp32 matmul rate at `threads` threads: the best of `repeats` n x n x n
    products (the least disturbed one: the peak, not the typical)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(before)
    return 2 * n ** 3 / best / 1e9


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs torch counts (matmuls, convolutions, attention) in one call of `step`."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()
