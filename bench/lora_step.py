"""Training-step time of LoRA against full fine-tuning of the same model, and utilisation.

Variants, per model size (the default tiny LLaVA and wider ones, same batch for all):
  full       every LM weight trains (mcit's `full` method), fused AdamW (mcit.fit.adamw)
  lora       mcit's `lora`: low-rank product added into the base output (models/fused_lora.py), fused AdamW
  lora_peft  PEFT's own LoRA layer (`result + B(A(x)) * scaling`), for-each AdamW and logits at every
             position: the code before issue 15 (the others compute them at the answer positions only)
  lora_compiled (unless --no-compile) `lora` under torch.compile (train.compile=true); its compile time reported
One step = forward + backward + AdamW step + zero_grad, timed in interleaved rounds (bench/_tiny.py).
Utilisation = the FLOPs torch counts in a step / step time / the machine's fp32 matmul peak measured
here at the same thread count (best of 20 n x n x n products, before the steps); and the same
against the median rate of that product timed in the same interleaved rounds as the steps
(``utilisation_beside_steps``: side by side, so a drift in the machine's speed moves both). Also: AdamW's step alone on the LoRA parameters, fused vs for-each.
Prints one JSON object.

    python bench/lora_step.py [--rounds 30] [--sizes 128,256] [--threads N] [--no-compile]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from mcit.config import load_config
from mcit.fit import adamw, answer_forward
from mcit.methods import build_method
from mcit.threads import usable_cores

from _tiny import (matmul_peak_gflops, model_summary, parse_step_bench_args, step_flops, time_interleaved,
                   tiny_model_and_batch)


def size_fields(hidden: int) -> dict:
    """Model fields for a language model `hidden` wide: the default's proportions (MLP 4x)."""
    return {} if hidden == 128 else {"hidden_size": hidden, "intermediate_size": 4 * hidden}


def build_variant(base, key: str):
    cfg = load_config(None, ["method.name=full" if key == "full" else "method.name=lora"])
    method = build_method(cfg.method)
    if key == "lora_peft":
        config = method.lora_config(base)
        config._custom_modules = None  # PEFT's own layer
        method.lora_config = lambda model: config
    model = method.setup(copy.deepcopy(base), cfg).train()
    groups = method.param_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0) if key == "lora_peft" else adamw(groups, 0.0)
    return model, optimizer


PEAK_N = 1024  # the matmul whose rate is the peak: n x n x n


def bench_size(hidden: int, args, peak: float) -> dict:
    fields = size_fields(hidden)
    base, _, batch = tiny_model_and_batch(args.batch_size, args.text_tokens, **fields)
    keys = ["full", "lora", "lora_peft"]
    runs = {key: build_variant(base, key) for key in keys}
    compile_s = None
    if not args.no_compile:
        model, optimizer = build_variant(base, "lora")
        compiled = torch.compile(model)
        start = time.perf_counter()
        answer_forward(compiled, batch).loss.backward()  # the first call compiles forward and backward
        compile_s = time.perf_counter() - start
        optimizer.zero_grad(set_to_none=True)
        runs["lora_compiled"] = (compiled, optimizer)
        keys.append("lora_compiled")

    a, b = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N)

    def step(key: str) -> None:
        if key == "matmul":  # the machine's matmul rate, timed in the same rounds as the steps
            a @ b
            return
        model, optimizer = runs[key]
        # mcit's loss (logits at the answer positions only, mcit.fit.answer_forward); lora_peft: the
        # code before issue 15, transformers' loss over every position
        (model(**batch) if key == "lora_peft" else answer_forward(model, batch)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = {key: step_flops(lambda k=key: step(k)) for key in ("full", "lora", "lora_peft")}
    flops["lora_compiled"] = flops["lora"]
    times = time_interleaved(step, keys + ["matmul"], args.rounds, warmup=2)
    matmul_ms = times.pop("matmul")
    rate = 2 * PEAK_N ** 3 / (statistics.median(matmul_ms) / 1000) / 1e9  # GFLOP/s beside the steps
    ms = {key: statistics.median(v) for key, v in times.items()}
    util = {key: flops[key] / (ms[key] / 1000) / (peak * 1e9) for key in keys}
    util_beside = {key: flops[key] / (ms[key] / 1000) / (rate * 1e9) for key in keys}
    out = {
        "model": model_summary(base, **fields),
        "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
        "ms_per_step_min": {k: round(min(v), 2) for k, v in times.items()},
        "gflop_per_step": {k: round(flops[k] / 1e9, 3) for k in keys},
        "utilisation": {k: round(v, 3) for k, v in util.items()},
        # against the median rate of the same matmul timed between the steps: the ratio side by side,
        # which the machine's drifting speed (peaks of 149-193 GFLOP/s measured on one machine) moves far less
        "matmul_gflops_beside_steps": round(rate, 1),
        "utilisation_beside_steps": {k: round(v, 3) for k, v in util_beside.items()},
        "lora_over_full": round(ms["lora"] / ms["full"], 3),
        "lora_over_lora_peft": round(ms["lora"] / ms["lora_peft"], 3),
        "lora_peft_over_full": round(ms["lora_peft"] / ms["full"], 3),
    }
    if compile_s is not None:
        out |= {"compile_seconds": round(compile_s, 1),
                "lora_compiled_over_lora": round(ms["lora_compiled"] / ms["lora"], 3)}
    if hidden == 128:
        out["adamw_step_ms"] = adamw_ms(runs["lora"][0], batch, args.rounds)
    return out


def adamw_ms(model, batch, rounds: int) -> dict:
    """AdamW's step alone on the LoRA parameters (gradients from one backward), fused vs for-each."""
    params = [p for p in model.parameters() if p.requires_grad]
    model(**batch).loss.backward()
    optimizers = {"fused": torch.optim.AdamW(params, fused=True), "foreach": torch.optim.AdamW(params, foreach=True)}
    times = time_interleaved(lambda key: optimizers[key].step(), list(optimizers), rounds * 3, warmup=3)
    model.zero_grad(set_to_none=True)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="128,256", help="language-model widths (128 is the default model)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (about 30 s to compile)")
    args = parse_step_bench_args(ap, rounds=30, threads=len(usable_cores()))
    peak = matmul_peak_gflops(args.threads, PEAK_N)
    sizes = {f"hidden_{h}": bench_size(int(h), args, peak) for h in args.sizes.split(",")}
    print(json.dumps({"threads": args.threads, "batch_size": args.batch_size,
                      "matmul_peak_gflops": round(peak, 1), "sizes": sizes,
                      "steps_timed_per_variant": args.rounds}, indent=2))


if __name__ == "__main__":
    main()
