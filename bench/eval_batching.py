"""Evaluation speed: batched greedy generation vs one sample at a time, and what each of
evaluation's savings is worth on its own, on the same samples, evaluated task by task as a
run does (the default run: 60 test questions per task, batches of 64, answers of <= 20 tokens).

Prints one JSON object (bench/run_all.py collects it):
- ``speedup``: one at a time / batched, both as a run evaluates (goal >= 6x), and whether the
  two give identical predictions (they must: left padding and the KV cache change speed, not answers);
- ``prompt_cache_speedup``: encoding each batch afresh (every evaluation before) / prompts encoded once per run;
- ``static_cache_speedup``: transformers' default dynamic KV cache / a StaticCache (> 1: static is faster);
- ``bf16_speedup`` and ``bf16_mismatches``: eval.dtype=bfloat16 against float32;
- seconds per sample of the default path, split into encode / prefill / decode.
Variants are timed in interleaved rounds (load from other processes hits all alike); medians of
the process's CPU seconds (at one thread, the wall time of an idle machine, and steady beside
busy neighbours; the wall-clock medians are printed too).

    python bench/eval_batching.py                       # default-size tiny LLaVA, coin-mini test sets
    python bench/eval_batching.py --checkpoint PATH     # any local image-text-to-text checkpoint
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _tiny import time_interleaved
from mcit.config import EvalConfig, ModelConfig
from mcit.data import coin_mini
from mcit.data.coin_format import read_task
from mcit.eval.evaluate import COIN_MINI_MAX_NEW_TOKENS
from mcit.eval.generate import EvalTiming, PromptCache, generate_answers, supports_static_cache
from mcit.models.load import load_checkpoint
from mcit.models.tiny_llava import build_model, build_processor, train_tokenizer

DEFAULTS = EvalConfig()  # what a run uses: the KV cache and dtype measured as "batched"
OTHER_CACHE = "static" if DEFAULTS.kv_cache == "dynamic" else "dynamic"  # the KV cache a run does not use


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", help="local checkpoint folder (default: a fresh default-size tiny LLaVA)")
    ap.add_argument("--per-task", type=int, default=60, help="test samples per coin-mini task")
    ap.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    ap.add_argument("--max-new-tokens", type=int, default=COIN_MINI_MAX_NEW_TOKENS)
    ap.add_argument("--rounds", type=int, default=4, help="timed passes per batched variant")
    ap.add_argument("--single-rounds", type=int, default=2, help="timed one-at-a-time passes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        root = coin_mini.generate(Path(tmp) / "coin-mini", seed=0, train_per_task=8, test_per_task=args.per_task,
                                  pretrain_size=16, progress=False)
        by_task = [read_task(root / "Original" / t, t, "test", root / "images") for t in coin_mini.TASKS]
        samples = [s for task in by_task for s in task]
        if args.checkpoint:
            model, processor = load_checkpoint(args.checkpoint)
        else:
            texts = [s.text + " " + s.answer for s in samples]
            processor = build_processor(train_tokenizer(texts, 1024), 64, 8)
            model = build_model(ModelConfig(), processor, 64)
        model.eval()
        prompts = PromptCache(DEFAULTS.prompt_cache_mb * 2**20)
        answers: dict[str, list[str]] = {}
        timings: dict[str, EvalTiming] = {}

        def variant(batch_size: int, cached: bool = True, kv_cache: str = DEFAULTS.kv_cache,
                    dtype: str = DEFAULTS.dtype):
            def run() -> tuple[list[str], EvalTiming]:
                timing, out = EvalTiming(), []
                for task in by_task:
                    out += generate_answers(model, processor, task, root / "images", batch_size=batch_size,
                                            max_new_tokens=args.max_new_tokens, show_progress=False,
                                            prompts=prompts if cached else None, kv_cache=kv_cache, dtype=dtype,
                                            timing=timing)
                return out, timing
            return run

        batched = {
            "batched": variant(args.batch_size),  # as a run evaluates
            "batched_encoding_each_time": variant(args.batch_size, cached=False),
            f"batched_{OTHER_CACHE}_cache": variant(args.batch_size, kv_cache=OTHER_CACHE),
            "batched_bf16": variant(args.batch_size, dtype="bfloat16"),
        }
        single = {"single": variant(1)}

        cpu: dict[str, list[float]] = {}

        def step(table):
            def call(key: str) -> None:
                began = time.process_time()
                answers[key], timings[key] = table[key]()
                cpu.setdefault(key, []).append(time.process_time() - began)
            return call

        ms = time_interleaved(step(batched), list(batched), args.rounds, warmup=1)
        ms |= time_interleaved(step(single), list(single), args.single_rounds, warmup=0)

    rounds = {key: times[-len(ms[key]):] for key, times in cpu.items()}  # the timed calls, not the warm-up
    median = {key: statistics.median(times) for key, times in rounds.items()}
    wall = {key: statistics.median(times) / 1000 for key, times in ms.items()}

    def ratio(slow: str, fast: str) -> float:
        return round(median[slow] / median[fast], 2)

    def mismatches(a: str, b: str) -> int:
        return sum(x != y for x, y in zip(answers[a], answers[b]))

    default = timings["batched"].record()
    each_time = timings["batched_encoding_each_time"].record()
    with_cache = {DEFAULTS.kv_cache: "batched", OTHER_CACHE: f"batched_{OTHER_CACHE}_cache"}
    print(json.dumps({
        "samples": len(samples),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "single_rounds": args.single_rounds,
        "defaults": {"kv_cache": DEFAULTS.kv_cache, "dtype": DEFAULTS.dtype},
        "model": args.checkpoint or "fresh default-size tiny LLaVA",
        "static_cache_supported": supports_static_cache(model),
        "median_cpu_seconds": {key: round(value, 3) for key, value in median.items()},
        "median_wall_seconds": {key: round(value, 3) for key, value in wall.items()},
        "speedup": ratio("single", "batched"),
        "identical_predictions": answers["batched"] == answers["single"],
        "mismatches": mismatches("batched", "single"),
        "prompt_cache_speedup": ratio("batched_encoding_each_time", "batched"),
        "prompt_cache_mismatches": mismatches("batched", "batched_encoding_each_time"),
        "prompt_cache_mb": round(prompts.bytes / 2**20, 2),
        "encode_seconds_per_sample": {"once_per_run": default["encode_seconds_per_sample"],
                                      "each_time": each_time["encode_seconds_per_sample"]},
        # the part of each evaluation's time that encoding took before (clocked inside the same passes)
        "prompt_cache_saving_share": round((each_time["encode_seconds_per_sample"] - default["encode_seconds_per_sample"])
                                           / each_time["seconds_per_sample"], 3),
        "static_cache_speedup": ratio(with_cache["dynamic"], with_cache["static"]),
        "static_cache_mismatches": mismatches(with_cache["dynamic"], with_cache["static"]),
        "bf16_speedup": ratio("batched", "batched_bf16"),
        "bf16_mismatches": mismatches("batched", "batched_bf16"),
        "batched_seconds_per_sample": default["seconds_per_sample"],
        "batched_split_seconds_per_sample": {part: default[f"{part}_seconds_per_sample"]
                                             for part in ("encode", "prefill", "decode")},  # wall clock
        "single_seconds_per_sample": timings["single"].record()["seconds_per_sample"],
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }, indent=2))


if __name__ == "__main__":
    main()
