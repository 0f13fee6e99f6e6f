"""The continual loop: config -> stream -> model -> for each task: hooks, fit, save, evaluate
-> accuracy matrix -> metrics -> report. Read it top to bottom."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from . import checkpoint as ckpt
from .data.benchmark import load_benchmark
from .data.check import check_stream_config
from .data.encode import encode_for_training
from .data.stream import build_stream, cache_dir
from .config import ConfigError
from .distributed import (check_engine, gather_records, merge_shards, on_main, per_process_batch,
                          enable_gradient_checkpointing, rewrap_if_changed, shard,
                          trainable_ids)
from .emt.curve import EmtTracker
from .eval.coin_compat import MODES as SCORING_MODES
from .eval.evaluate import evaluate_task, max_new_tokens_for, trivial_baseline
from .eval.judge_backends import check_judge_config
from .fit import steps_for, train_task
from .io import atomic_write_bytes, atomic_write_text
from .methods import TaskContext, build_method
from .metrics import compute_metrics
from .models.load import load_checkpoint
from .report.matrix import format_table, save_matrix
from .rundir import RunError, create_run_dir, load_json, load_stage_info, mark_stage_done, save_json, save_run_info, stage_dir


def run_stream(cfg, log=print, resume: bool = False) -> dict:
    # split_batches: train.batch_size is the global batch, each process gets its slice of it
    # (and the LR schedule steps once per optimizer step whatever the process count).
    acc = Accelerator(cpu=not torch.cuda.is_available(), dataloader_config=DataLoaderConfiguration(split_batches=True))
    check_engine(acc)
    per_process_batch(cfg.train.batch_size, acc.num_processes)
    if cfg.train.checkpoint_every < 0:
        raise ConfigError(f"train.checkpoint_every={cfg.train.checkpoint_every} must be >= 0 (0 = off)")
    set_seed(cfg.seed)
    main = acc.is_main_process
    if not main:  # one voice: only the main process prints (and writes the run folder)
        log = lambda *args, **kwargs: None  # noqa: E731
    started = time.time()
    method = build_method(cfg.method)  # fail on a bad method name before any expensive work
    tracker = EmtTracker(cfg, log) if cfg.emt.every_steps > 0 else None  # EMT sets too (off by default)
    if cfg.eval.scoring not in SCORING_MODES:
        raise ConfigError(f"eval.scoring: '{cfg.eval.scoring}' is not one of {list(SCORING_MODES)}")
    check_judge_config(cfg.judge)  # a bad judge setting stops the run now, not after training

    # 1. The stream of tasks (generated first for coin-mini); a release on disk is validated
    #    as a whole first, so a bad file stops the run before anything is trained or written.
    if not load_benchmark(cfg.data.benchmark).generator:  # data on disk: checked as a whole first
        report = check_stream_config(cfg.data)
        if not report.ok:
            raise DataCheckFailed(report)
    with acc.main_process_first():  # coin-mini is generated once, then read by the others
        stream = build_stream(cfg.data, cfg.data_seed, show_progress=main)
    budgeted = sorted((set(cfg.train.task_steps) | set(cfg.train.task_epochs)) - set(stream.tasks))
    if budgeted:  # most likely a misspelt task name
        raise ConfigError(f"train.task_steps/task_epochs name {budgeted}, which are not in the stream {stream.tasks}")

    # 2. The model: the built-in tiny LLaVA (its base stage cached) or a local checkpoint.
    if cfg.model.name == "tiny-llava":
        from .models.base_stage import ensure_base_model

        checkpoint = ensure_base_model(cfg, stream.root, cache_dir(), acc, log)
    else:
        checkpoint = Path(cfg.model.name)
    model, processor = load_checkpoint(checkpoint, cfg.model.dtype)
    if cfg.train.gradient_checkpointing:  # activations recomputed in backward: memory for time
        enable_gradient_checkpointing(model)
    model = method.setup(model, cfg)
    model = acc.prepare_model(model)
    wrapped = trainable_ids(acc.unwrap_model(model))  # what DDP registered (see rewrap_if_changed)
    tok = getattr(processor, "tokenizer", processor)

    run_dir = on_main(acc, lambda: create_run_dir(cfg))  # created by the main process, known to all
    T = len(stream.tasks)
    # A stage trains one task of the stream, or (a joint method: multitask) all tasks at once.
    stages = [("multitask", list(stream.tasks))] if method.joint else [(t, [t]) for t in stream.tasks]
    names = [name for name, _ in stages]
    matrix: list[list[float | None]] = [[None] * T for _ in stages]
    zero_shot = None
    done = completed_stages(run_dir, names)
    if done and not resume:
        raise RunError(f"{run_dir} already has completed stages; continue it with `mcit run --resume {run_dir}`")
    if done:  # a resumed run's seconds count the earlier legs' completed stages too
        started -= done[-1].get("elapsed_seconds") or 0.0
    if main:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        info = {
            "device": str(acc.device),
            "num_processes": acc.num_processes,
            # train.batch_size is the global batch (split across processes): an optimizer step
            # sees batch_size x grad_accum samples whatever the number of processes.
            "effective_batch": cfg.train.batch_size * cfg.train.grad_accum,
            "per_process_batch": cfg.train.batch_size // acc.num_processes,
            "checkpoint": str(checkpoint),
            "parameters": {"total": total, "trainable": trainable},
            "tasks": stream.tasks,
            "stages": names,
        }
        if resume:  # the original config.yaml and environment.json stay as they were
            save_json(run_dir / f"environment-resume-{len(done)}.json", info | {"resumed_after_stage": len(done)})
        else:
            save_run_info(run_dir, cfg, info)
        baselines = {t: trivial_baseline(stream.train[t], stream.test[t], stream.scorers[t], cfg.eval.scoring)
                     for t in stream.tasks}
        save_json(run_dir / "baselines.json", {t: {"constant_answer": a, "score": v} for t, (a, v) in baselines.items()})
        log(f"run folder: {run_dir}")
        log("constant-answer baseline: " + "  ".join(f"{t} {v:.1f}" for t, (_, v) in baselines.items()))
        log(f"model: {checkpoint}  ({total / 1e6:.2f} M parameters, {trainable / 1e6:.2f} M trainable with '{method.name}')")

    def evaluate(task: str, label: str, out_dir: Path | None) -> float:
        live = acc.unwrap_model(model)
        records = []
        for subset, route in method.eval_routes(live, task, stream.test[task]):
            with route:  # each process answers its shard of every route's samples
                records += evaluate_task(live, processor, shard(subset, acc.process_index, acc.num_processes),
                                         stream.image_root, stream.scorers[task], cfg.eval, device=acc.device,
                                         desc=f"eval {label} on {task}", show_progress=main,
                                         max_new_tokens=max_new_tokens_for(cfg.eval, stream.specs[task]))[1]
        records = merge_shards(gather_records(acc, records), [s.id for s in stream.test[task]])
        if main and out_dir is not None:
            save_jsonl(out_dir / "predictions" / f"{task}.jsonl", records)
        return 100.0 * sum(r["score"] for r in records) / max(1, len(records))

    # Resuming: completed stages are read back, never recomputed; the model continues from the
    # last completed stage's weights. A stage cut off half-way is redone from its start, which
    # gives the same result as an uninterrupted run (each stage is seeded on its own).
    if done:
        for t, info in enumerate(done):
            for task, value in info["scores"].items():
                matrix[t][stream.tasks.index(task)] = value
        if cfg.eval.zero_shot:
            saved = load_json(run_dir / "zero_shot.json")
            zero_shot = [saved[t] for t in stream.tasks]
        restore_stage(method, acc.unwrap_model(model), stage_dir(run_dir, len(done) - 1, names[len(done) - 1]))
        if main:  # a stage killed between done.json and its checkpoint's removal
            for t in range(len(done)):
                ckpt.remove(stage_dir(run_dir, t, names[t]))
        log(f"resuming after stage {len(done)}/{len(stages)} ({names[len(done) - 1]})")

    # 3. Zero-shot row: the model before any stage (needed for forward transfer).
    elif cfg.eval.zero_shot:
        zero_shot = [evaluate(t, "base", run_dir / "stages" / "00-base" if main else None) for t in stream.tasks]
        if main:
            save_json(run_dir / "zero_shot.json", dict(zip(stream.tasks, zero_shot)))
            log("base model: " + "  ".join(f"{t} {v:.1f}" for t, v in zip(stream.tasks, zero_shot)))

    if tracker:  # a resumed run drops the EMT points of the stage it redoes
        tracker.begin(run_dir if main else None, [info["train"]["steps"] for info in done])

    # 4. The stream, one task after another.
    for t, (task, trained) in enumerate(stages):
        if t < len(done):
            continue
        ctx = TaskContext(task=task, index=t, tasks=names, model=model, accelerator=acc)
        method.before_task(ctx)
        joint_data = stream.multitask if method.joint and stream.multitask is not None else None
        if joint_data is not None:
            log(f"multitask: training on the release's {stream.release.name}/Multitask/train.json ({len(joint_data)} records)")
        samples = method.train_samples(ctx, joint_data or [s for name in trained for s in stream.train[name]])
        items = [encode_for_training(processor, s, stream.image_root, cfg.train.max_length) for s in samples]
        # The budget comes from the tasks' own data, so methods that add samples (replay) get
        # the same number of steps; a joint stage gets the sum of its tasks' budgets.
        steps = sum(steps_for(cfg.train, len(stream.train[name]), acc.num_processes, name) for name in trained)
        # A method that added an adapter or moved requires_grad: DDP must register the new set.
        model, wrapped = rewrap_if_changed(acc, model, wrapped)
        ctx.model = model
        on_step = tracker.stage(acc.unwrap_model(model), processor, t, task, steps, acc.device) if tracker else None
        # In-task checkpoints: only where they resume exactly (EMT points are per stage, and a
        # method may keep in-task state it does not checkpoint).
        in_task = cfg.train.checkpoint_every > 0 and tracker is None and method.resumable_mid_task
        resume_from = _in_task_checkpoint(stage_dir(run_dir, t, task), acc, log) if in_task and resume else None
        stats = train_task(model, method, ctx, items, cfg, tok.pad_token_id, seed=cfg.seed * 1000 + t,
                           desc=f"stage {t + 1}/{len(stages)} {task}", steps=steps, on_step=on_step,
                           checkpoint=stage_dir(run_dir, t, task) if in_task else None, resume_from=resume_from)
        method.after_task(ctx)

        out = stage_dir(run_dir, t, task) if main else None
        if main:
            method.save_model(acc.unwrap_model(model), out / "model")
            state = method.state_dict()
            if state:
                atomic_write_bytes(out / "method_state.safetensors",
                                   save_tensors({k: v.contiguous().cpu() for k, v in state.items()}))
            if method.json_state():
                save_json(out / "method_state.json", method.json_state())

        evaluated = range(T) if cfg.eval.upper_triangle or method.joint else range(t + 1)
        for i in evaluated:
            matrix[t][i] = evaluate(stream.tasks[i], f"stage {t + 1}", out)
        if main:
            row = {stream.tasks[i]: matrix[t][i] for i in evaluated}
            for name, records in ctx.series.items():
                save_jsonl(out / f"{name}.jsonl", records)
            mark_stage_done(out, {"task": task, "train": stats, "scores": row, "method_log": ctx.log,
                                  "elapsed_seconds": time.time() - started})
            ckpt.remove(out)  # the stage is complete: its in-task checkpoint is not needed any more
            if not method.joint:
                save_matrix(run_dir, "matrix_partial", stream.tasks[: t + 1], [r[: t + 1] for r in matrix[: t + 1]],
                            zero_shot[: t + 1] if zero_shot else None)
            log(f"stage {t + 1}/{len(stages)} {task}: loss {stats['loss_first']:.3f} -> {stats['loss_last']:.3f}; "
                + "  ".join(f"{stream.tasks[i]} {matrix[t][i]:.1f}" for i in evaluated))

    if tracker:
        tracker.close()  # the judge decider's HTTP client, if any
        if main:
            tracker.save_plot()
    if method.joint:
        result = _finish_joint(cfg, run_dir, stream.tasks, matrix[0], zero_shot, started, main, log)
        acc.wait_for_everyone()
        return result

    # 5. Matrix -> metrics -> report.
    metrics = compute_metrics(matrix, zero_shot)
    result = {"run_dir": str(run_dir), "tasks": stream.tasks, "matrix": matrix, "zero_shot": zero_shot,
              "metrics": metrics, "seconds": time.time() - started}
    if main:
        save_matrix(run_dir, "matrix", stream.tasks, matrix, zero_shot, metrics)
        for ext in ("json", "csv", "md", "png"):
            (run_dir / f"matrix_partial.{ext}").unlink(missing_ok=True)
        save_json(run_dir / "metrics.json", {"view": "instruction_following", "scoring": cfg.eval.scoring,
                                             **metrics, "seconds": result["seconds"]})
        log(format_table(stream.tasks, matrix, metrics, zero_shot))
        from .eval.judge import judge_run  # General Knowledge view from the saved predictions

        result["metrics_gk"] = judge_run(run_dir, cfg.judge, log=log)  # None when judge.backend=none
    acc.wait_for_everyone()
    return result


def _finish_joint(cfg, run_dir, tasks, row, zero_shot, started, main, log) -> dict:
    """A multitask run has one row, the upper bound the sequential methods are measured against."""
    mean = sum(row) / len(row)
    result = {"run_dir": str(run_dir), "tasks": tasks, "multitask": row, "zero_shot": zero_shot,
              "metrics": {"multitask_mean": mean}, "seconds": time.time() - started}
    if main:
        save_json(run_dir / "multitask.json", {"scores": dict(zip(tasks, row)), "zero_shot": zero_shot})
        save_json(run_dir / "metrics.json", {"view": "instruction_following", "scoring": cfg.eval.scoring,
                                             "multitask_mean": mean, "seconds": result["seconds"]})
        log("multitask (upper bound): " + "  ".join(f"{t} {v:.1f}" for t, v in zip(tasks, row)) + f"  | mean {mean:.2f}")
    return result


def _in_task_checkpoint(stage: Path, acc, log) -> Path | None:
    """The checkpoint to continue the stage from, if it has one this run can use."""
    found = ckpt.find(stage)
    if found is None:
        return None
    saved = ckpt.saved_processes(found)
    if saved != acc.num_processes:  # per-process RNG states cannot be mapped: redo the stage
        log(f"{found} was written by {saved} processes, this run has {acc.num_processes}: redoing the stage")
        return None
    log(f"continuing {stage.name} from its in-task checkpoint")
    return found


def restore_stage(method, model, stage: Path) -> None:
    """A saved stage's weights and method state into a freshly set-up model (resume, `mcit emt`)."""
    method.load_model(model, stage / "model")
    if (stage / "method_state.safetensors").is_file():
        method.load_state_dict(load_file(str(stage / "method_state.safetensors")))
    if (stage / "method_state.json").is_file():
        method.load_json_state(load_json(stage / "method_state.json"))


def completed_stages(run_dir: Path, tasks: list[str]) -> list[dict]:
    """done.json records of the stages finished in order from the first (stops at a gap)."""
    done = []
    for t, task in enumerate(tasks):
        info = load_stage_info(stage_dir(run_dir, t, task))
        if info is None:
            break
        done.append(info)
    return done


class DataCheckFailed(Exception):
    """The stream's files have problems; `report` lists every one of them."""

    def __init__(self, report):
        super().__init__("the data check found problems; nothing was trained or written\n" + report.format())
        self.report = report


def save_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
