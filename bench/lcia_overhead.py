"""Per-step overhead of LCIA's balanced EMA (and of the fixed EMA) over a plain LoRA training step.

One step = forward + backward + AdamW step (+ the method's after_step, gradients still there)
+ zero_grad, on the same default-size tiny LLaVA (ModelConfig defaults) and the same batch for
every variant. The variants are timed in interleaved rounds of one step each (the order
rotating every round), so load from other processes on a shared machine hits all of them
alike. Inside the LCIA and EMA steps, after_step is also timed on its own: its median over
the plain LoRA step's median is the overhead fraction (the difference of two step medians is
reported too, but on a shared machine it is the noisier number). LCIA runs with
lcia_grouping=false, i.e. the balanced EMA over every trainable tensor (adapter + projector):
the same per-step work as a "retrain" task, the most it ever does. Prints one JSON object.

    python bench/lcia_overhead.py [--rank 16] [--batch-size 16] [--rounds 30] [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from mcit.config import load_config
from mcit.methods import TaskContext, build_method

from _tiny import model_summary, parse_step_bench_args, time_interleaved, tiny_model_and_batch  # bench/_tiny.py

WARMUP = 3  # untimed steps per variant (allocator, AdamW state, the shadow and the first gradient)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=16)
    args = parse_step_bench_args(ap, rounds=30)
    base, _, batch = tiny_model_and_batch(args.batch_size, args.text_tokens)

    variants = {"lora": ["method.name=lora"],
                "lcia": ["method.name=lcia", "method.lcia_grouping=false"],
                "ema": ["method.name=ema"]}
    runs = {}
    for key, overrides in variants.items():
        cfg = load_config(None, [f"method.lora_r={args.rank}", *overrides])
        method = build_method(cfg.method)
        model = method.setup(copy.deepcopy(base), cfg).train()
        optimizer = torch.optim.AdamW(method.param_groups(model, cfg), lr=cfg.train.lr)
        ctx = TaskContext(task="bench", index=0, tasks=["bench"], model=model, accelerator=None)
        method.before_task(ctx)
        runs[key] = (method, model, optimizer, ctx)

    hook_ms: dict[str, list[float]] = {key: [] for key in runs}

    def step(key: str) -> None:
        method, model, optimizer, ctx = runs[key]
        model(**batch).loss.backward()
        optimizer.step()
        ctx.step += 1
        start = time.perf_counter()
        method.after_step(ctx)  # the base Method's (lora) is a no-op: timed alike
        hook_ms[key].append((time.perf_counter() - start) * 1000)
        optimizer.zero_grad(set_to_none=True)

    times = time_interleaved(step, list(runs), args.rounds, WARMUP)

    ms = {key: statistics.median(v) for key, v in times.items()}
    hook = {key: statistics.median(v[WARMUP:]) for key, v in hook_ms.items()}  # the timed steps
    lcia_method, _, _, lcia_ctx = runs["lcia"]
    series = lcia_ctx.series["lcia_coefficients"][WARMUP:]  # the timed steps
    fallback = statistics.mean(statistics.mean(r["fallback"].values()) for r in series)
    print(json.dumps({
        "model": model_summary(base),
        "batch_size": args.batch_size,
        "sequence_length": batch["input_ids"].shape[1],
        "rank": args.rank,
        "trainable_parameters": sum(p.numel() for p in runs["lcia"][1].parameters() if p.requires_grad),
        "lcia_tensors": len(lcia_method._shadow),
        "ms_per_step": {key: round(v, 2) for key, v in ms.items()},
        "ms_per_step_min": {key: round(min(v), 2) for key, v in times.items()},
        "after_step_ms": {key: round(hook[key], 3) for key in ("lcia", "ema")},
        "lcia_overhead": round(hook["lcia"] / ms["lora"], 4),
        "ema_overhead": round(hook["ema"] / ms["lora"], 4),
        "lcia_over_lora_step_medians": round(ms["lcia"] / ms["lora"], 3),
        "ema_over_lora_step_medians": round(ms["ema"] / ms["lora"], 3),
        "lcia_fallback_share": round(fallback, 3),
        "goal_overhead_at_most": 0.05,
        "steps_timed_per_variant": args.rounds,
        "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
