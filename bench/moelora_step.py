"""Training-step time of MoELoRA (fused and reference) against plain PEFT LoRA of the same total rank.

One step = forward + backward + AdamW step (+ zero_grad), on the same default-size tiny LLaVA
(ModelConfig defaults) and the same batch for all three. The three are timed in interleaved
rounds of one step each (the order rotating every round), so load from other processes on a
shared machine hits all of them alike; reported: the median step time per variant, and the
minimum (the least disturbed step). Prints one JSON object.

    python bench/moelora_step.py [--experts 4] [--rank 16] [--top-k K] [--batch-size 16] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch

from mcit.config import load_config
from mcit.methods import build_method

from _tiny import model_summary, parse_step_bench_args, time_interleaved, tiny_model_and_batch  # bench/_tiny.py


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16, help="total rank (LoRA's r; each expert gets rank/experts)")
    ap.add_argument("--top-k", type=int, default=None, help="MoELoRA top-k routing (default: dense)")
    args = parse_step_bench_args(ap, rounds=20)
    base, _, batch = tiny_model_and_batch(args.batch_size, args.text_tokens)

    common = [f"method.lora_r={args.rank}", f"method.moe_experts={args.experts}"]
    if args.top_k:
        common.append(f"method.moe_top_k={args.top_k}")
    variants = {"lora": ["method.name=lora"],
                "moelora_fused": ["method.name=moelora", "method.moe_impl=fused"],
                "moelora_reference": ["method.name=moelora", "method.moe_impl=reference"]}
    runs = {}
    for key, overrides in variants.items():
        cfg = load_config(None, common + overrides)
        method = build_method(cfg.method)
        model = method.setup(copy.deepcopy(base), cfg).train()
        optimizer = torch.optim.AdamW(method.param_groups(model, cfg))
        runs[key] = (model, optimizer, sum(p.numel() for p in model.parameters() if p.requires_grad))

    def step(key: str) -> None:
        model, optimizer, _ = runs[key]
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = time_interleaved(step, list(runs), args.rounds, warmup=2)  # warm-up: allocator, AdamW state

    ms = {key: statistics.median(v) for key, v in times.items()}
    print(json.dumps({
        "model": model_summary(base),
        "batch_size": args.batch_size,
        "sequence_length": batch["input_ids"].shape[1],
        "rank": args.rank,
        "experts": args.experts,
        "top_k": args.top_k,
        "trainable_parameters": {key: r[2] for key, r in runs.items()},
        "ms_per_step": {key: round(v, 2) for key, v in ms.items()},
        "ms_per_step_min": {key: round(min(v), 2) for key, v in times.items()},
        "fused_over_lora": round(ms["moelora_fused"] / ms["lora"], 3),
        "reference_over_lora": round(ms["moelora_reference"] / ms["lora"], 3),
        "fused_over_lora_min": round(min(times["moelora_fused"]) / min(times["lora"]), 3),
        "reference_over_lora_min": round(min(times["moelora_reference"]) / min(times["lora"]), 3),
        "steps_timed_per_variant": args.rounds,
        "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
