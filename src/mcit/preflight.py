"""Start-up checks of a run's settings against the benchmark file and the disk, before anything is
generated, trained or written. mcit.config checks everything that needs neither (ranges, kinds,
rules across fields) when a config is loaded; these need the benchmark's task list or the file
system, which `mcit judge` (re-reading a finished run's config elsewhere) must not depend on.

`check_run_settings` imports neither torch nor transformers: `mcit run` calls it right after reading
the config, before the heavy imports, and mcit.train again before any work (for the Python API).
`check_max_length` needs the model's processor and runs once it is built.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError


def check_run_settings(cfg: Any) -> None:
    """ConfigError listing every problem of ``cfg`` (a RunConfig) found against the benchmark
    (task names, per-task settings, coin-mini's own limits and folder) and the output folder; then
    the judge's settings (endpoint, key variable, rules file), so a bad one stops the run now, not
    after training."""
    from .eval.judge_backends import check_judge_config

    problems = [*_benchmark_problems(cfg), *_output_problems(cfg)]
    if problems:
        raise ConfigError.of(problems)
    check_judge_config(cfg.judge)


def _benchmark_problems(cfg: Any) -> Iterator[str]:
    from .data.benchmark import load_benchmark

    dc = cfg.data
    try:
        bench = load_benchmark(dc.benchmark)
    except ConfigError as exc:
        yield from exc.problems
        return
    for task in dc.tasks or ():
        try:
            bench.spec(task)  # an unknown task: an error naming the benchmark's tasks
        except ConfigError as exc:
            yield str(exc)
    stream = dc.tasks or bench.task_names
    for key, per_task in (("train.task_steps", cfg.train.task_steps), ("train.task_epochs", cfg.train.task_epochs),
                          ("eval.task_max_new_tokens", cfg.eval.task_max_new_tokens),
                          ("data.eval_files", dc.eval_files)):
        stray = [t for t in per_task if t not in stream]
        if stray:  # most likely a misspelt task name
            yield f"{key} names {stray}, which {'is' if len(stray) == 1 else 'are'} not in the stream {list(stream)}"
    if bench.generator == "coin-mini":
        yield from _coin_mini_problems(cfg)


def _coin_mini_problems(cfg: Any) -> Iterator[str]:
    """What coin-mini's generator would refuse mid-run, asked of the generator itself."""
    from .data import coin_mini
    from .data.release import INSTRUCTION_SET_FOLDERS
    from .data.stream import coin_mini_root

    dc = cfg.data
    try:
        params = coin_mini._params(cfg.data_seed, dc.train_per_task, dc.test_per_task, dc.pretrain_size,
                                   dc.image_size)
    except ValueError as exc:  # "image_size must be >= 32 so that objects stay visible, got 16"
        yield f"data.{exc}"
        return
    tried = INSTRUCTION_SET_FOLDERS.get(dc.instruction_set, (dc.instruction_set,))
    if not set(tried) & set(coin_mini.INSTRUCTION_SETS):
        yield (f"data.instruction_set={dc.instruction_set!r}: coin-mini's instruction sets are "
               f"{', '.join(coin_mini.INSTRUCTION_SETS)}")
    root = coin_mini_root(dc, cfg.data_seed)
    occupied = root.exists() and (not root.is_dir() or any(root.iterdir()))
    if dc.root and occupied and not coin_mini._complete(root, params):
        yield (f"data.root: {root} already holds something other than coin-mini generated with these data "
               "settings; coin-mini is generated into a new or empty folder: choose another data.root, or null "
               "(the cache)")


def _output_problems(cfg: Any) -> Iterator[str]:
    """output_dir must be a folder, or creatable as one; the run folder must not be a file."""
    out = Path(cfg.output_dir)
    blocked = _file_in_the_way(out)
    if blocked is not None:
        yield (f"output_dir: {out} is a file, not a folder" if blocked == out
               else f"output_dir: {out} cannot be created: {blocked} is a file")
        return
    if cfg.name and (out / cfg.name).exists() and not (out / cfg.name).is_dir():
        yield f"name: the run folder {out / cfg.name} is a file, not a folder"
        return
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        yield f"output_dir: {out} cannot be created or written: {existing} is not writable"


def _file_in_the_way(folder: Path) -> Path | None:
    """The folder itself or its nearest parent when it exists and is not a folder, else None."""
    return next((p for p in (folder, *folder.absolute().parents) if p.exists() and not p.is_dir()), None)


def output_folder(path: str | Path, what: str) -> Path:
    """``path`` as a folder to write into (it need not exist yet); ConfigError naming ``what`` when a
    file is in the way (the folder itself or one of its parents), found now rather than at the first write."""
    blocked = _file_in_the_way(Path(path))
    if blocked is not None:
        raise ConfigError(f"{what}: {path}: {blocked} exists and is not a folder")
    return Path(path)


def check_max_length(cfg: Any, stream: Any, processor: Any) -> None:
    """ConfigError (every task at once) when train.max_length cannot hold a task's samples, found
    before any stage trains rather than at that task's stage. Encoding every sample twice would
    cost a pass over the data, so each task's shortest and longest samples by text are encoded:
    the shortest one over the limit means no sample fits, the longest one would stop the run."""
    from .data.encode import encode_for_training

    limit = cfg.train.max_length
    problems = []
    for task in stream.tasks:
        samples = stream.train.get(task) or []
        if not samples:  # an empty task is the data check's to report
            continue
        by_text = sorted(samples, key=lambda s: sum(len(q) + len(a) for q, a in s.conversation))
        for which, sample in (("shortest", by_text[0]), ("longest", by_text[-1])):
            tokens = len(encode_for_training(processor, sample, stream.image_root, 2**31)["input_ids"])
            if tokens > limit:
                what = ("is shorter than every sample of task" if which == "shortest" else
                        "cannot hold every sample of task")
                problems.append(f"train.max_length={limit} {what} {task}: its {which} by text, record {sample.id}, "
                                f"has {tokens} tokens; raise train.max_length to at least {tokens}")
                break
    if problems:
        raise ConfigError.of(problems)
