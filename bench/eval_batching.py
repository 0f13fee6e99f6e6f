"""Batched greedy generation vs a one-sample-at-a-time loop, on the same samples.

Prints one JSON object: both throughputs (samples/s), their ratio, and whether the two
produce identical predictions (they must: left padding and the KV cache change speed, not
answers).

    python bench/eval_batching.py                       # default-size tiny LLaVA, coin-mini test sets
    python bench/eval_batching.py --checkpoint PATH     # any local image-text-to-text checkpoint
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mcit.config import ModelConfig
from mcit.data import coin_mini
from mcit.data.coin_format import read_task
from mcit.eval.generate import generate_answers
from mcit.models.load import load_checkpoint
from mcit.models.tiny_llava import build_model, build_processor, train_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", help="local checkpoint folder (default: a fresh default-size tiny LLaVA)")
    ap.add_argument("--per-task", type=int, default=16, help="test samples per coin-mini task")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        root = coin_mini.generate(Path(tmp) / "coin-mini", seed=0, train_per_task=8, test_per_task=args.per_task,
                                  pretrain_size=16, progress=False)
        samples = [s for t in coin_mini.TASKS for s in read_task(root / "Original" / t, t, "test", root / "images")]
        if args.checkpoint:
            model, processor = load_checkpoint(args.checkpoint)
        else:
            texts = [s.text + " " + s.answer for s in samples]
            processor = build_processor(train_tokenizer(texts, 1024), 64, 8)
            model = build_model(ModelConfig(), processor, 64)
        model.eval()

        def timed(batch_size: int):
            start = time.perf_counter()
            out = generate_answers(model, processor, samples, root / "images", batch_size=batch_size,
                                   max_new_tokens=args.max_new_tokens, show_progress=False)
            return out, time.perf_counter() - start

        generate_answers(model, processor, samples[:4], root / "images", batch_size=4,
                         max_new_tokens=2, show_progress=False)  # warm-up
        batched, t_batched = timed(args.batch_size)
        single, t_single = timed(1)

    print(json.dumps({
        "samples": len(samples),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "batched_samples_per_s": round(len(samples) / t_batched, 2),
        "single_samples_per_s": round(len(samples) / t_single, 2),
        "speedup": round(t_single / t_batched, 2),
        "identical_predictions": batched == single,
        "mismatches": sum(a != b for a, b in zip(batched, single)),
        "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
