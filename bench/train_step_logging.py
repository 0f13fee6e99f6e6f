"""What the per-step records cost a training step: the loop body as it was before train_log.jsonl
and progress lines ("plain": forward, backward, clip, AdamW, scheduler), the same with what
mcit.fit now adds each step ("logged": the pre-clip grad norm kept as a tensor, the learning
rate, a TrainLog record written every --flush-every steps to a file, a Progress update printing
lines to a null sink), and "logged_tensorboard" (the same records also sent to a TensorBoard
tracker through Accelerate). Same default-size tiny LLaVA, same batch, LoRA; timed in interleaved
rounds (bench/_tiny.py). The mean includes the flushes, the median shows the usual step.
Prints one JSON object.

    python bench/train_step_logging.py [--rounds 200] [--flush-every 50] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import get_cosine_schedule_with_warmup

from mcit import progress
from mcit.config import load_config
from mcit.methods import build_method
from mcit.tracking import RunTrackers, TrainLog

from _tiny import model_summary, parse_step_bench_args, time_interleaved, tiny_model_and_batch  # bench/_tiny.py


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flush-every", type=int, default=50, help="steps between train_log.jsonl writes")
    args = parse_step_bench_args(ap, rounds=200)
    base, _, batch = tiny_model_and_batch(args.batch_size, args.text_tokens)
    folder = Path(tempfile.mkdtemp(prefix="mcit-bench-"))
    progress.configure(every_steps=args.flush_every, every_seconds=0)
    acc = Accelerator(cpu=True)
    cfg = load_config(None, ["log.report_to=[tensorboard]"])
    trackers = RunTrackers(acc, cfg, folder / "run")

    variants = {}
    for key in ("plain", "logged", "logged_tensorboard"):
        method = build_method(cfg.method)
        model = method.setup(copy.deepcopy(base), cfg).train()
        params = [p for g in method.param_groups(model, cfg) for p in g["params"]]
        optimizer = torch.optim.AdamW(method.param_groups(model, cfg))
        total = 10 * (args.rounds + 10)
        scheduler = get_cosine_schedule_with_warmup(optimizer, 10, total)
        log = None if key == "plain" else TrainLog(folder / f"{key}.jsonl", trackers if "tensorboard" in key else None,
                                                  flush_every=args.flush_every)
        if log is not None:
            log.begin(0)
        bar = progress.Progress(key, total, enabled=key != "plain", lines=True, log=lambda line: None,
                                samples_per_unit=args.batch_size)
        variants[key] = {"model": model, "params": params, "opt": optimizer, "sched": scheduler, "log": log,
                         "bar": bar, "step": 0}

    added = {"logged": [], "logged_tensorboard": []}  # microseconds in the added calls (flushes included)

    def step(key: str) -> None:
        v = variants[key]
        out = v["model"](**batch)
        out.loss.backward()
        loss = float(out.loss.detach())  # the loop's existing per-step read of the loss
        norm = torch.nn.utils.clip_grad_norm_(v["params"], 1.0)
        lr = v["opt"].param_groups[0]["lr"]
        v["opt"].step()
        v["sched"].step()
        v["opt"].zero_grad(set_to_none=True)
        v["step"] += 1
        if v["log"] is not None:
            start = time.perf_counter()
            v["log"].add(v["step"], loss, 0.0, lr, norm)
            v["bar"].update(loss=loss, lr=lr)
            added[key].append((time.perf_counter() - start) * 1e6)

    times = time_interleaved(step, list(variants), args.rounds, warmup=3)
    trackers.finish()
    mean = {k: statistics.fmean(t) for k, t in times.items()}
    median = {k: statistics.median(t) for k, t in times.items()}
    print(json.dumps({
        "model": model_summary(base),
        "batch_size": args.batch_size,
        "flush_every": args.flush_every,
        "ms_per_step_mean": {k: round(v, 2) for k, v in mean.items()},
        "ms_per_step_median": {k: round(v, 2) for k, v in median.items()},
        "logged_over_plain_mean": round(mean["logged"] / mean["plain"], 3),
        "logged_over_plain_median": round(median["logged"] / median["plain"], 3),
        "tensorboard_over_plain_mean": round(mean["logged_tensorboard"] / mean["plain"], 3),
        "tensorboard_over_plain_median": round(median["logged_tensorboard"] / median["plain"], 3),
        # the added calls alone: a direct reading, free of the step-to-step noise of the ratios above
        "added_us_per_step_mean": {k: round(statistics.fmean(v), 1) for k, v in added.items()},
        "added_us_per_step_median": {k: round(statistics.median(v), 1) for k, v in added.items()},
        "steps_timed_per_variant": args.rounds,
        "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
