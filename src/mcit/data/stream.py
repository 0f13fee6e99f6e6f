"""A stream: the ordered tasks, each with train and test samples, and how each is scored."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..eval.scorers import DEFAULT_TASK_SCORER
from . import coin_mini
from .coin_format import read_test_json, read_train_json
from .release import OfficialTruth, eval_file, resolve_instruction_set
from .schema import Sample
from ..config import ConfigError, config_hash

COIN_ORDER = list(coin_mini.TASKS)  # CoIN's default order; coin-mini mirrors it task for task


def cache_dir() -> Path:
    """Where generated data and base models are cached: $MCIT_CACHE or ~/.cache/mcit."""
    return Path(os.environ.get("MCIT_CACHE", Path.home() / ".cache" / "mcit"))


@dataclass
class Stream:
    tasks: list[str]
    train: dict[str, list[Sample]]
    test: dict[str, list[Sample]]
    image_root: Path
    scorers: dict[str, str]
    root: Path  # the benchmark folder (holds one sub-folder per instruction set)
    release: Path  # the instruction set's folder (one sub-folder per task)
    multitask: list[Sample] | None = None  # the release's Multitask/ union, when the stream is all its tasks


def coin_mini_root(dc, seed: int) -> Path:
    if dc.root:
        return Path(dc.root)
    key = config_hash({k: getattr(dc, k) for k in ("train_per_task", "test_per_task", "pretrain_size", "image_size")} | {"seed": seed, "version": coin_mini.VERSION, "sets": list(coin_mini.INSTRUCTION_SETS)})
    return cache_dir() / f"coin-mini-{key}"


def generate_coin_mini(dc, seed: int, show_progress: bool = True) -> Path:
    """coin-mini as ``dc`` sizes it, generated at :func:`coin_mini_root` (a no-op when there)."""
    return coin_mini.generate(coin_mini_root(dc, seed), seed=seed, train_per_task=dc.train_per_task,
                              test_per_task=dc.test_per_task, pretrain_size=dc.pretrain_size,
                              image_size=dc.image_size, progress=show_progress)


NAMED_ORDERS = ("coin", "reverse", "random")


def stream_order(dc, seed: int) -> list[str]:
    """The tasks in stream order: data.tasks as given (any subset), else a named order of
    CoIN's eight ("random" is a permutation fixed by the seed)."""
    if dc.tasks:
        repeated = sorted({t for t in dc.tasks if list(dc.tasks).count(t) > 1})
        if repeated:
            raise ConfigError(f"data.tasks: {repeated} listed more than once")
        return list(dc.tasks)
    if dc.order == "coin":
        return list(COIN_ORDER)
    if dc.order == "reverse":
        return COIN_ORDER[::-1]
    if dc.order == "random":
        order = list(COIN_ORDER)
        random.Random(f"{seed}:order").shuffle(order)
        return order
    raise ConfigError(f"data.order: '{dc.order}' is not one of {list(NAMED_ORDERS)} (or give data.tasks as a list)")


def build_stream(dc, seed: int, show_progress: bool = True) -> Stream:
    """Read (and for coin-mini, first generate) every task of the configured stream.

    Each task's test samples come from its evaluation file (the official one for a release, see
    :mod:`mcit.data.release`) with the official ground truth put in where the release keeps it in
    another file (TextVQA's ten answers; ScienceQA's problems and GQA's questions when given)."""
    if dc.benchmark == "coin-mini":
        root = generate_coin_mini(dc, seed, show_progress)
        image_root = Path(dc.image_root) if dc.image_root else root / "images"
    elif dc.benchmark == "coin":
        if not dc.root or not dc.image_root:
            raise ConfigError("data.benchmark=coin needs data.root (the release folder) and data.image_root")
        root, image_root = Path(dc.root), Path(dc.image_root)
    else:
        raise ConfigError(f"data.benchmark: '{dc.benchmark}' is not one of ['coin-mini', 'coin']")

    release = resolve_instruction_set(root, dc.instruction_set)
    tasks = stream_order(dc, seed)
    unknown = [t for t in tasks if not (release / t).is_dir()]
    if unknown:
        raise ConfigError(f"data.tasks: no folder for {unknown} under {release}")
    scorers = {}
    for t in tasks:
        if t not in DEFAULT_TASK_SCORER:
            raise ConfigError(f"data.tasks: no scorer known for task '{t}' (known: {sorted(DEFAULT_TASK_SCORER)})")
        scorers[t] = DEFAULT_TASK_SCORER[t]
    truth = OfficialTruth.read(dc, image_root, tasks)
    train = {t: read_train_json(release / t / "train.json", t, image_root) for t in tasks}
    test = {}
    for t in tasks:
        name = eval_file(t, dc.eval_files, dc.benchmark)
        test[t] = truth.apply(t, read_test_json(release / t / name, t, image_root), f"{t}/{name}")
    joint = release / "Multitask" / "train.json"
    multitask = read_train_json(joint, "Multitask", image_root) if joint.is_file() and set(tasks) == set(COIN_ORDER) else None
    return Stream(tasks, train, test, image_root, scorers, root, release, multitask)
