"""The built-in model's base stage: the analogue of LLaVA's alignment pretraining.

A freshly initialised tiny LLaVA cannot see. Before the continual stream starts it is
trained on a caption/question mixture over the same visual world (coin-mini's pretrain.json),
without the task instructions or answer formats, so the stream starts from a model that
knows what is in an image but not yet how each task wants the answer. The result is cached
under a hash of everything that shaped it and reused by later runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import set_seed

from ..config import config_hash
from ..data import coin_mini
from ..data.coin_format import read_train_json
from ..data.encode import encode_for_training
from ..data.benchmark import load_benchmark
from ..data.stream import coin_mini_root, generate_coin_mini
from ..distributed import SingleProcess, uses_deepspeed
from ..io import atomic_write_text
from ..methods.base import Method, TaskContext
from ..fit import train_task
from ..models.tiny_llava import build_model, build_processor, train_tokenizer
from ..threads import thread_cap, usable_cores
from .shipped_base import install_shipped, write_manifest
from .vision_encoder import pretrain_vision


class _TrainEverything(Method):
    """Alignment: projector and LM learn (whatever still requires grad; the tower is frozen)."""

    name = "base-stage"

    def param_groups(self, model, run_cfg):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": run_cfg.train.lr}]


def base_stage_key(model_cfg, data_cfg, seed: int) -> str:
    shape = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in ("name", "dtype", "shipped_base")}
    world = {k: getattr(data_cfg, k) for k in ("pretrain_size", "image_size", "train_per_task")}
    world["coin_mini_version"] = coin_mini.VERSION
    return config_hash({"model": shape, "world": world, "seed": seed, "version": 4})


def ensure_base_model(run_cfg, data_root: Path, cache_dir: Path, accelerator: Accelerator, log=print) -> Path:
    """Path of the cached base checkpoint for this config; copied from the shipped one or trained
    first if missing.

    ``data_root`` is coin-mini's folder. On a CoIN release, which holds no alignment data for the
    built-in model, the base stage learns from coin-mini generated with the same data settings
    (so it is the same cached base model the default coin-mini run uses)."""
    mc, dc = run_cfg.model, run_cfg.data
    key = base_stage_key(mc, dc, run_cfg.data_seed)
    target = cache_dir / f"tiny-llava-{key}"
    if (target / "done").is_file():
        return target
    if accelerator.is_main_process and not (mc.shipped_base and install_shipped(key, target, log)):
        if load_benchmark(dc.benchmark).generator != "coin-mini":
            world = dataclasses.replace(dc, benchmark="coin-mini", root=None, image_root=None)
            log(f"model.name=tiny-llava on data.benchmark={dc.benchmark}: its base model learns from coin-mini, "
                f"generated at {coin_mini_root(world, run_cfg.data_seed)} (the release has no alignment data for it)")
            data_root = generate_coin_mini(world, run_cfg.data_seed)
        log(f"building the base model (once: cached afterwards in {target} for every run with these model and "
            f"data settings): 1/2 vision encoder, {mc.vision_steps} steps; 2/2 alignment, {mc.base_steps} steps")
        _train_base(run_cfg, data_root, target, accelerator, log)
        log(f"base model cached in {target}")
    accelerator.wait_for_everyone()
    return target


def build_base_model(run_cfg, out: Path, threads: int, log=print) -> dict:
    """`mcit base-model`: train this config's base model from nothing into ``out`` (no cache, nothing
    shipped), on coin-mini generated with the config's data settings, at a fixed number of torch
    threads (some CPU kernels round differently at another count, and train.threads=0 follows the
    load: a fixed count makes the build repeatable bit for bit); writes its manifest."""
    run_cfg = dataclasses.replace(run_cfg, train=dataclasses.replace(run_cfg.train, threads=threads))
    dc = dataclasses.replace(run_cfg.data, benchmark="coin-mini", root=None, image_root=None)
    data_root = generate_coin_mini(dc, run_cfg.data_seed)
    accelerator = Accelerator(cpu=True)
    _train_base(run_cfg, data_root, out, accelerator, log)
    return write_manifest(out, base_stage_key(run_cfg.model, run_cfg.data, run_cfg.data_seed), threads)


def _train_base(run_cfg, data_root: Path, target: Path, accelerator: Accelerator, log=print) -> None:
    mc, dc = run_cfg.model, run_cfg.data
    image_root = data_root / "images"
    pretrain = read_train_json(data_root / "pretrain.json", "pretrain", image_root)
    # The tokenizer learns the benchmark's whole vocabulary (as a real LLM's tokenizer would
    # already cover it): pretraining text plus every task's training text.
    corpus = [s.text + " " + s.answer for s in pretrain]
    # Always the Original instructions, so one cached base model serves every instruction set.
    for task_dir in sorted((data_root / "Original").iterdir()):
        corpus += [s.text + " " + s.answer for s in read_train_json(task_dir / "train.json", task_dir.name, image_root)]
    set_seed(run_cfg.data_seed)  # the initial weights: fixed by the seed the cache key names, not by the caller
    tokenizer = train_tokenizer(corpus, mc.vocab_size)
    processor = build_processor(tokenizer, dc.image_size, mc.patch_size)
    model = build_model(mc, processor, dc.image_size)
    # LLaVA's recipe: a vision encoder pretrained on its own, then frozen during alignment.
    log(f"base model 1/2: vision encoder pretraining ({mc.vision_steps} steps, {mc.vision_images} images)")
    vision = pretrain_vision(model, processor.image_processor,
                             coin_mini.vision_items(run_cfg.data_seed, mc.vision_images, dc.image_size),
                             steps=mc.vision_steps, batch_size=mc.vision_batch_size, lr=mc.base_lr,
                             seed=run_cfg.data_seed, show_progress=accelerator.is_main_process,
                             # a fixed count, not the load's: this stage's weights change in their last
                             # bits with the thread count (the alignment stage's do not, tests/test_threads.py)
                             threads=run_cfg.train.threads or thread_cap(len(usable_cores())))
    model.model.vision_tower.requires_grad_(False)

    stage_cfg = dataclasses.replace(
        run_cfg,
        train=dataclasses.replace(run_cfg.train, steps_per_task=mc.base_steps, lr=mc.base_lr,
                                  batch_size=mc.base_batch_size, grad_accum=1, projector_lr=None),
    )
    items = [encode_for_training(processor, s, image_root, run_cfg.train.max_length) for s in pretrain]
    if accelerator.num_processes > 1 or uses_deepspeed(run_cfg, accelerator):  # trained here alone (the others
        # wait): no DDP, no sharding, no DeepSpeed engine
        accelerator = SingleProcess(accelerator.device)
    model = accelerator.prepare_model(model)
    ctx = TaskContext(task="pretrain", index=-1, tasks=[], model=model, accelerator=accelerator)
    log(f"base model 2/2: alignment ({mc.base_steps} steps, {len(items)} captioning samples)")
    stats = train_task(model, _TrainEverything(None), ctx, items, stage_cfg,
                       tokenizer.pad_token_id, seed=run_cfg.data_seed, desc="base model, alignment")

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    atomic_write_text(tmp / "done", json.dumps({"vision_encoder": vision, "alignment": stats}, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
