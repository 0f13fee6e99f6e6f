"""The continual loop, as the README draws it: config -> stream -> model -> for each stage:
method hooks, fit, save, evaluate -> accuracy matrix -> metrics -> report.

``run_stream`` reads top to bottom; each step is a named function below it. The loop never asks
which method it runs: the method's ``plan`` says what each stage trains (one task, or all of them
for the multitask upper bound) and its hooks do the rest. Only the main process prints and writes
the run folder (``_Run.writing``); every process trains and answers its shard of each test set.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

from . import checkpoint as ckpt
from .config import ConfigError
from .data.benchmark import load_benchmark
from .data.check import DataCheckFailed, check_stream_config
from .data.encode import encode_for_training
from .data.stream import Stream, build_stream, cache_dir
from .distributed import (accelerator_options, check_deepspeed, check_engine, check_engine_settings,
                          copy_for_engine, enable_gradient_checkpointing, engine_in_use, gather_into, gather_records,
                          merge_shards, on_main, rewrap_if_changed, shard, shard_for_training,
                          trainable_ids, uses_deepspeed, uses_fsdp, whole_models)
from .emt.curve import EmtTracker
from .eval.evaluate import evaluate_task, max_new_tokens_for, trivial_baseline
from .eval.generate import EvalTiming, PromptCache
from .export import base_model_record
from .fit import steps_for, train_task
from .launch import per_process_batch
from .methods import Method, TaskContext, build_method
from .metrics import compute_metrics
from .models.folder_check import check_run_models
from .models.load import load_checkpoint
from .preflight import check_max_length, check_run_settings
from .progress import configure as configure_progress
from .report.curves import save_loss_curve
from .report.matrix import format_table, load_matrix, save_form_content, save_matrix
from .rundir import (BASE_STAGE, ENVIRONMENT_FILE, RunError, completed_stages, create_run_dir, load_json,
                     mark_stage_done, remove_write_leftovers, restore_stage, save_environment, save_json, save_jsonl,
                     save_stage, stage_dir)
from .runstate import write_state
from .tracking import TRAIN_LOG, RunTrackers, TrainLog, check_installed


def run_stream(cfg, log=print, resume: bool = False) -> dict:
    run = _set_up(cfg, log, resume)
    started = False
    try:
        if run.done:
            _resume(run)  # checks the folder first: a refused resume leaves every file, state.json too, as it was
        if run.main:
            write_state(run.run_dir, "running")  # `mcit ls`: running, or stopped if this process dies unannounced
            started = True
        if not run.done and cfg.eval.zero_shot:
            _zero_shot(run)
        if run.tracker:  # a resumed run drops the EMT points of the stage it redoes
            run.tracker.begin(run.writing, [info["train"]["steps"] for info in run.done])
        for t, (name, trained) in enumerate(run.stages):
            if t >= len(run.done):
                ctx, stats = _train_stage(run, t, name, trained)
                _save_and_evaluate_stage(run, t, name, trained, ctx, stats)
        result = _finish(run)
    except BaseException as exc:
        if started:
            write_state(run.run_dir, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                        error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if run.trackers:  # also when a stage fails: what was logged is kept
            run.trackers.finish()
    if run.main:
        write_state(run.run_dir, "done")
    return result


@dataclass
class _Run:
    """Everything the steps share: the settings, the stream, the model, the run folder."""

    cfg: Any
    acc: Accelerator
    log: Callable[..., None]
    stream: Stream
    method: Method
    model: torch.nn.Module
    processor: Any
    wrapped: frozenset[int]  # the parameters DDP registered (see rewrap_if_changed)
    run_dir: Path
    stages: list[tuple[str, list[str]]]  # (stage name, tasks it trains), the method's plan
    tracker: EmtTracker | None
    started: float
    resume: bool  # continuing a run folder (stages done, or an in-task checkpoint)
    done: list[dict] = field(default_factory=list)  # done.json of the stages already completed
    matrix: list[list[float | None]] = field(default_factory=list)  # row per stage, column per task
    zero_shot: list[float] | None = None
    trackers: RunTrackers | None = None  # log.report_to (TensorBoard, MLflow, W&B, ...)
    prompts: PromptCache | None = None  # the test prompts, encoded once per run (made at the first evaluation)
    eval_seconds: dict[str, dict] = field(default_factory=dict)  # each task's last evaluation: EvalTiming.record()

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    @property
    def writing(self) -> Path | None:
        """The run folder on the main process; None on the others, which write nothing."""
        return self.run_dir if self.main else None

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.stages]


# --------------------------------------------------------------------------------------------
# 1. set up: settings checked, the stream read, the model built, the run folder made


def _set_up(cfg, log, resume: bool) -> _Run:
    check_run_settings(cfg)  # the benchmark's task names, coin-mini's limits, the output folder: before any work
    check_deepspeed(cfg)  # no GPU or no deepspeed: refused before the accelerator would fail on it
    # split_batches: train.batch_size is the global batch, each process gets its slice of it
    # (and the LR schedule steps once per optimizer step whatever the process count).
    acc = Accelerator(cpu=not torch.cuda.is_available(), dataloader_config=DataLoaderConfiguration(split_batches=True),
                      **accelerator_options(cfg))
    _check_settings(cfg, acc)
    check_installed(cfg.log.report_to)  # a tracker's missing package stops the run now
    configure_progress(cfg.log.every_steps, cfg.log.every_seconds)
    set_seed(cfg.seed)
    if not acc.is_main_process:  # one voice: only the main process prints
        log = lambda *args, **kwargs: None  # noqa: E731
    if uses_deepspeed(cfg, acc) and cfg.train.checkpoint_every:
        log(f"train.engine={cfg.train.engine} writes no in-task checkpoints (DeepSpeed's own format pickles): "
            "a stage cut off is redone from its start")
    started = time.time()
    method = build_method(cfg.method)  # fail on a bad method before any expensive work
    tracker = EmtTracker(cfg, log) if cfg.emt.every_steps > 0 else None  # EMT sets too (off by default)
    stream = _read_stream(cfg, acc)
    with whole_models(cfg, acc):  # deepspeed-zero3: not partitioned at load
        checkpoint, model, processor = _build_model(cfg, stream, acc, log)
    check_max_length(cfg, stream, processor)  # every task's samples fit, or stop before stage 1
    model = method.setup(model, cfg)
    # fsdp, deepspeed: the whole model stays unwrapped between stages; each stage trains a copy
    per_stage = uses_fsdp(cfg, acc) or uses_deepspeed(cfg, acc)
    model = model.to(acc.device) if per_stage else acc.prepare_model(model)
    run_dir = on_main(acc, lambda: create_run_dir(cfg))  # created by the main process, known to all
    stages = method.plan(stream.tasks)
    run = _Run(cfg=cfg, acc=acc, log=log, stream=stream, method=method, model=model, processor=processor,
               wrapped=trainable_ids(acc.unwrap_model(model)), run_dir=run_dir, stages=stages, tracker=tracker,
               started=started, resume=resume, matrix=[[None] * len(stream.tasks) for _ in stages])
    run.done = completed_stages(run_dir, run.names)
    if run.done and not resume:
        raise RunError(f"{run_dir} already has completed stages; continue it with `mcit run --resume {run_dir}`")
    if resume and run.main:  # what a killed process was writing when it died
        remove_write_leftovers(run_dir)
    if run.done:  # a resumed run's seconds count the earlier legs' completed stages too
        run.started -= run.done[-1].get("elapsed_seconds") or 0.0
    if run.main:
        _describe_run(run, checkpoint, resume)
    if cfg.log.report_to:
        run.trackers = RunTrackers(acc, cfg, run_dir)
    return run


def _check_settings(cfg, acc) -> None:
    """Settings that need the accelerator or the judge's files (the rest is checked at config load and by
    mcit.preflight): the engine, the batch split, the judge."""
    check_engine(acc, cfg.train.engine)
    check_engine_settings(cfg, acc)
    per_process_batch(cfg.train.batch_size, acc.num_processes)
    check_run_settings(cfg)  # the torch-free checks, also made by `mcit run` before importing torch
    check_run_models(cfg)  # model.name and a local judge's folder, before anything is built or written


def _read_stream(cfg, acc) -> Stream:
    """The stream of tasks; data on disk is checked as a whole first, so a bad file stops the run
    before anything is trained or written; a generated benchmark is generated once."""
    if not load_benchmark(cfg.data.benchmark).generator:
        report = check_stream_config(cfg.data)
        if not report.ok:
            raise DataCheckFailed(report)
    with acc.main_process_first():
        stream = build_stream(cfg.data, cfg.data_seed, show_progress=acc.is_main_process)
    budgeted = sorted((set(cfg.train.task_steps) | set(cfg.train.task_epochs)) - set(stream.tasks))
    if budgeted:  # most likely a misspelt task name
        raise ConfigError(f"train.task_steps/task_epochs name {budgeted}, which are not in the stream {stream.tasks}")
    return stream


def _build_model(cfg, stream: Stream, acc, log) -> tuple[Path, torch.nn.Module, Any]:
    """The built-in tiny LLaVA (its base stage trained once and cached) or a local checkpoint."""
    if cfg.model.name == "tiny-llava":
        from .recipes.base_model import ensure_base_model

        checkpoint = ensure_base_model(cfg, stream.root, cache_dir(), acc, log)
    else:
        checkpoint = Path(cfg.model.name)
    model, processor = load_checkpoint(checkpoint, cfg.model.dtype)
    if cfg.train.gradient_checkpointing:  # activations recomputed in backward: memory for time
        enable_gradient_checkpointing(model)
    return checkpoint, model, processor


def _describe_run(run: _Run, checkpoint: Path, resume: bool) -> None:
    """environment.json (or, resuming, environment-resume-N.json), the constant-answer baselines."""
    cfg, acc, stream = run.cfg, run.acc, run.stream
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in run.model.parameters())
    info = {
        "device": str(acc.device),
        "num_processes": acc.num_processes,
        "engine": engine_in_use(cfg, acc),  # fsdp, deepspeed-zero2|3: each stage trained sharded
        # train.batch_size is the global batch (split across processes): an optimizer step
        # sees batch_size x grad_accum samples whatever the number of processes.
        "effective_batch": cfg.train.batch_size * cfg.train.grad_accum,
        "per_process_batch": cfg.train.batch_size // acc.num_processes,
        "checkpoint": str(checkpoint),
        "base_model": base_model_record(checkpoint),  # path and sha256: `mcit export` finds it by either
        "parameters": {"total": total, "trainable": trainable},
        "tasks": stream.tasks,
        "stages": run.names,
    }
    # config.yaml was written with the folder (create_run_dir); a resumed run keeps the original
    # environment.json, unless the first leg was killed before writing it.
    if resume and (run.run_dir / ENVIRONMENT_FILE).is_file():
        save_json(run.run_dir / f"environment-resume-{len(run.done)}.json", info | {"resumed_after_stage": len(run.done)})
    else:
        save_environment(run.run_dir, cfg, info)
    baselines = {t: trivial_baseline(stream.train[t], stream.test[t], stream.scorers[t], cfg.eval.scoring)
                 for t in stream.tasks}
    save_json(run.run_dir / "baselines.json", {t: {"constant_answer": a, "score": v} for t, (a, v) in baselines.items()})
    run.log(f"run folder: {run.run_dir}")
    run.log("constant-answer baseline: " + "  ".join(f"{t} {v:.1f}" for t, (_, v) in baselines.items()))
    label = " + ".join([cfg.method.name, *cfg.method.with_])  # the base and what is added to it
    run.log(f"model: {checkpoint}  ({total / 1e6:.2f} M parameters, {trainable / 1e6:.2f} M trainable "
            f"with '{label}')")


# --------------------------------------------------------------------------------------------
# 2. resume, or the zero-shot row


def _resume(run: _Run) -> None:
    """Completed stages are read back, never recomputed; the model continues from the last
    completed stage's weights. A stage cut off half-way is redone from its start (or from its
    in-task checkpoint), which gives the same result as an uninterrupted run."""
    tasks = run.stream.tasks
    for t, info in enumerate(run.done):
        for task, value in info["scores"].items():
            run.matrix[t][tasks.index(task)] = value
    if run.cfg.eval.zero_shot:
        saved = load_json(run.run_dir / "zero_shot.json")
        run.zero_shot = [saved[t] for t in tasks]
    last = len(run.done) - 1
    restore_stage(run.method, run.acc.unwrap_model(run.model), stage_dir(run.run_dir, last, run.names[last]))
    if run.main:  # a stage killed between done.json and its checkpoint's removal
        for t in range(len(run.done)):
            ckpt.remove(stage_dir(run.run_dir, t, run.names[t]))
    run.log(f"resuming after stage {len(run.done)}/{len(run.stages)} ({run.names[last]})")


def _zero_shot(run: _Run) -> None:
    """The model before any stage, on every task (needed for forward transfer)."""
    out = run.writing and run.run_dir / "stages" / BASE_STAGE
    run.zero_shot = [_evaluate(run, task, "base", out) for task in run.stream.tasks]
    if run.main:
        save_json(out / "eval_seconds.json", run.eval_seconds)
        save_json(run.run_dir / "zero_shot.json", dict(zip(run.stream.tasks, run.zero_shot)))
    if run.trackers:
        run.trackers.log_row("if", 0, dict(zip(run.stream.tasks, run.zero_shot)))
    run.log("base model: " + "  ".join(f"{t} {v:.1f}" for t, v in zip(run.stream.tasks, run.zero_shot)))


# --------------------------------------------------------------------------------------------
# 3. one stage: train, save, evaluate


def _train_stage(run: _Run, t: int, name: str, trained: list[str]) -> tuple[TaskContext, dict]:
    cfg, acc, stream, method = run.cfg, run.acc, run.stream, run.method
    ctx = TaskContext(task=name, index=t, tasks=run.names, model=run.model, accelerator=acc)
    method.before_task(ctx)
    samples = method.train_samples(ctx, _training_data(run, trained))
    items = [encode_for_training(run.processor, s, stream.image_root, cfg.train.max_length) for s in samples]
    steps = _stage_steps(run, trained)
    # A method that added an adapter or moved requires_grad: DDP must register the new set.
    run.model, run.wrapped = rewrap_if_changed(acc, run.model, run.wrapped)
    sharded, deepspeed = uses_fsdp(cfg, acc), uses_deepspeed(cfg, acc)
    trainee = (shard_for_training(run.model, cfg, acc.device) if sharded
               else copy_for_engine(run.model) if deepspeed else run.model)
    ctx.model = trainee
    on_step = (run.tracker.stage(acc.unwrap_model(run.model), run.processor, t, name, steps, acc.device)
               if run.tracker else None)
    # In-task checkpoints only where they resume exactly (EMT points are per stage, and a method
    # may keep in-task state it does not checkpoint). fsdp: written from the whole model `run.model`.
    in_task = (cfg.train.checkpoint_every > 0 and run.tracker is None and method.resumable_mid_task
               and not deepspeed)
    stage = stage_dir(run.run_dir, t, name)
    resume_from = _in_task_checkpoint(stage, acc, run.log) if in_task and run.resume else None
    # Per-step records: the stage's train_log.jsonl and the trackers, at the run's step count.
    train_log = TrainLog(run.writing and stage / TRAIN_LOG, run.trackers,
                         step_offset=sum(_stage_steps(run, tasks) for _, tasks in run.stages[:t]),
                         flush_every=cfg.log.every_steps or 100)
    stats = train_task(trainee, method, ctx, items, cfg, _pad_id(run),
                       seed=cfg.seed * 1000 + t, desc=f"stage {t + 1}/{len(run.stages)} {name}", steps=steps,
                       on_step=on_step, checkpoint=stage if in_task else None, resume_from=resume_from,
                       train_log=train_log, whole=run.model if sharded else None)
    method.after_task(ctx)
    if sharded or deepspeed:  # the stage's weights back into the whole model, which is saved and evaluated
        gather_into(trainee, run.model, acc.device, trainable_only=deepspeed)  # deepspeed: see mcit.distributed
        ctx.model = run.model
    return ctx, stats


def _stage_steps(run: _Run, trained: list[str]) -> int:
    """A stage's optimizer steps. The budget comes from the tasks' own data, so methods that add
    samples (replay) get the same number of steps; a stage training several tasks gets the sum
    of their budgets."""
    return sum(steps_for(run.cfg.train, len(run.stream.train[task]), task) for task in trained)


def _training_data(run: _Run, trained: list[str]) -> list:
    """The samples of the tasks a stage trains; a stage training the whole stream uses the
    release's own Multitask/ union where there is one (CoIN ships it)."""
    if run.stream.multitask is not None and set(trained) == set(run.stream.tasks) and len(trained) > 1:
        run.log(f"multitask: training on the release's {run.stream.release.name}/Multitask/train.json "
                f"({len(run.stream.multitask)} records)")
        return run.stream.multitask
    return [s for task in trained for s in run.stream.train[task]]


def _pad_id(run: _Run) -> int:
    return getattr(run.processor, "tokenizer", run.processor).pad_token_id


def _save_and_evaluate_stage(run: _Run, t: int, name: str, trained: list[str], ctx: TaskContext, stats: dict) -> None:
    """The stage's weights and method state, its evaluation on every task trained so far (all of
    them with eval.upper_triangle), then done.json: a stage is complete only once it is written."""
    stage = stage_dir(run.run_dir, t, name)
    live = run.acc.unwrap_model(run.model)
    if run.main:
        save_stage(stage, run.method, live, ctx.series)
    tasks = run.stream.tasks
    seen = {task for _, stage_tasks in run.stages[: t + 1] for task in stage_tasks}
    evaluated = [i for i, task in enumerate(tasks) if run.cfg.eval.upper_triangle or task in seen]
    for i in evaluated:
        run.matrix[t][i] = _evaluate(run, tasks[i], f"stage {t + 1}", run.writing and stage)
    if run.main:
        row = {tasks[i]: run.matrix[t][i] for i in evaluated}
        if run.trackers:
            run.trackers.log_row("if", t + 1, row)
        # done.json records the sha256 of the stage's files; the first stage's also those of the
        # zero-shot row it builds on, so that a resumed run finds them as they were.
        builds_on = (run.run_dir / "zero_shot.json", run.run_dir / "stages" / BASE_STAGE) if t == 0 else ()
        mark_stage_done(stage, {"task": name, "train": stats, "scores": row, "method_log": ctx.log,
                                "eval": {tasks[i]: run.eval_seconds[tasks[i]] for i in evaluated},
                                "elapsed_seconds": time.time() - run.started}, also=builds_on)
        ckpt.remove(stage)  # the stage is complete: its in-task checkpoint is not needed any more
        if _sequential(run):
            k = t + 1  # the square of the tasks trained so far
            save_matrix(run.run_dir, "matrix_partial", tasks[:k], [r[:k] for r in run.matrix[:k]],
                        run.zero_shot[:k] if run.zero_shot else None)
    run.log(f"stage {t + 1}/{len(run.stages)} {name}: loss {stats['loss_first']:.3f} -> {stats['loss_last']:.3f}; "
            + "  ".join(f"{tasks[i]} {run.matrix[t][i]:.1f}" for i in evaluated))


def _evaluate(run: _Run, task: str, label: str, out: Path | None) -> float:
    """The task's score (0-100); every process answers its shard, the main one saves them all."""
    acc, stream, live = run.acc, run.stream, run.acc.unwrap_model(run.model)
    if run.prompts is None:
        run.prompts = PromptCache(run.cfg.eval.prompt_cache_mb * 2**20)
        if run.cfg.eval.dtype == "bfloat16":
            run.log("eval.dtype=bfloat16: answers generated under bf16 autocast; this changes some of them "
                    "(17 of 480 on the default model)")
    records, timing = [], EvalTiming()
    for subset, route in run.method.eval_routes(live, task, stream.test[task]):
        with route:  # each process answers its shard of every route's samples
            records += evaluate_task(live, run.processor, shard(subset, acc.process_index, acc.num_processes),
                                     stream.image_root, stream.scorers[task], run.cfg.eval, device=acc.device,
                                     desc=f"eval {label} on {task}", show_progress=run.main,
                                     max_new_tokens=max_new_tokens_for(run.cfg.eval, stream.specs[task]),
                                     prompts=run.prompts, timing=timing)[1]
    run.eval_seconds[task] = timing.record()  # this process's shard
    records = merge_shards(gather_records(acc, records), [s.id for s in stream.test[task]])
    if out is not None:
        save_jsonl(out / "predictions" / f"{task}.jsonl", records)
    return 100.0 * sum(r["score"] for r in records) / max(1, len(records))


def _in_task_checkpoint(stage: Path, acc, log) -> Path | None:
    """The checkpoint to continue the stage from, if it has one this run can use."""
    found = ckpt.find(stage)
    if found is None:
        return None
    saved = ckpt.saved_processes(found)
    if saved != acc.num_processes:  # per-process RNG states cannot be mapped: redo the stage
        log(f"{found} was written by {saved} processes, this run has {acc.num_processes}: redoing the stage")
        return None
    log(f"continuing {stage.name} from its in-task checkpoint (step {ckpt.saved_step(found)})")
    return found


# --------------------------------------------------------------------------------------------
# 4. finish: the accuracy matrix, its metrics, the report, the General Knowledge view


def _sequential(run: _Run) -> bool:
    """One task per stage: a matrix with forgetting metrics (else the joint upper-bound row)."""
    return all(len(trained) == 1 for _, trained in run.stages)


def _finish(run: _Run) -> dict:
    if run.tracker:
        run.tracker.close()  # the judge decider's HTTP client, if any
        if run.main:
            run.tracker.save_plot()
    try:
        result = _finish_sequence(run) if _sequential(run) else _finish_joint(run)
    finally:  # an invalid GK view (JudgeInvalid) still gets its loss curve and report
        if run.main:
            _save_figures_and_report(run)
    run.acc.wait_for_everyone()
    return result


def _save_figures_and_report(run: _Run) -> None:
    from .report.html import write_report

    title = f"{run.run_dir.name}: {' + '.join([run.cfg.method.name, *run.cfg.method.with_])}"
    save_loss_curve(run.run_dir, [(name, stage_dir(run.run_dir, t, name)) for t, name in enumerate(run.names)],
                    title)
    write_report(run.run_dir)  # report.html: one self-contained page (`mcit report` writes it again)


def _finish_sequence(run: _Run) -> dict:
    cfg, tasks, matrix, zero_shot = run.cfg, run.stream.tasks, run.matrix, run.zero_shot
    metrics = compute_metrics(matrix, zero_shot)
    result = {"run_dir": str(run.run_dir), "tasks": tasks, "matrix": matrix, "zero_shot": zero_shot,
              "metrics": metrics, "seconds": time.time() - run.started}
    if run.main:
        save_matrix(run.run_dir, "matrix", tasks, matrix, zero_shot, metrics)
        save_form_content(run.run_dir, tasks)  # format-valid rate and content accuracy per task and stage
        for ext in ("json", "csv", "md", "png"):
            (run.run_dir / f"matrix_partial.{ext}").unlink(missing_ok=True)
        save_json(run.run_dir / "metrics.json", {"view": "instruction_following", "scoring": cfg.eval.scoring,
                                                 **metrics, "seconds": result["seconds"]})
        run.log(format_table(tasks, matrix, metrics, zero_shot))
        from .eval.judge import judge_run  # General Knowledge view from the saved predictions

        result["metrics_gk"] = judge_run(run.run_dir, cfg.judge, log=run.log)  # None when judge.backend=none
        if run.trackers:
            _track_results(run, metrics, result["metrics_gk"])
    return result


def _track_results(run: _Run, metrics: dict, metrics_gk: dict | None) -> None:
    """The trackers get the final metrics of both views and the judge's matrix row by row
    (the instruction-following rows were logged as each stage ended)."""
    stages = len(run.stages)
    run.trackers.log_metrics("if", stages, metrics)
    gk = run.run_dir / "matrix_gk.json"
    if metrics_gk is None or not gk.is_file():
        return
    tasks, matrix, zero_shot, _ = load_matrix(gk)
    if zero_shot is not None:
        run.trackers.log_row("gk", 0, dict(zip(tasks, zero_shot)))
    for t, row in enumerate(matrix):
        run.trackers.log_row("gk", t + 1, dict(zip(tasks, row)))
    run.trackers.log_metrics("gk", stages, metrics_gk)


def _finish_joint(run: _Run) -> dict:
    """A joint run has one row, the upper bound the sequential methods are measured against."""
    tasks, row = run.stream.tasks, run.matrix[-1]
    mean = sum(row) / len(row)
    result = {"run_dir": str(run.run_dir), "tasks": tasks, "multitask": row, "zero_shot": run.zero_shot,
              "metrics": {"multitask_mean": mean}, "seconds": time.time() - run.started}
    if run.main:
        save_json(run.run_dir / "multitask.json", {"scores": dict(zip(tasks, row)), "zero_shot": run.zero_shot})
        save_json(run.run_dir / "metrics.json", {"view": "instruction_following", "scoring": run.cfg.eval.scoring,
                                                 "multitask_mean": mean, "seconds": result["seconds"]})
        run.log("multitask (upper bound): " + "  ".join(f"{t} {v:.1f}" for t, v in zip(tasks, row))
                + f"  | mean {mean:.2f}")
    if run.trackers:
        run.trackers.log_metrics("if", len(run.stages), {"multitask_mean": mean})
    return result
