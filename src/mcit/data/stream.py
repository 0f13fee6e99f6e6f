"""A stream: the ordered tasks, each with train and test samples, and how each is scored."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..eval.scorers import DEFAULT_TASK_SCORER
from . import coin_mini
from .coin_format import read_task
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


def coin_mini_root(dc, seed: int) -> Path:
    if dc.root:
        return Path(dc.root)
    key = config_hash({k: getattr(dc, k) for k in ("train_per_task", "test_per_task", "pretrain_size", "image_size")} | {"seed": seed, "version": coin_mini.VERSION, "sets": list(coin_mini.INSTRUCTION_SETS)})
    return cache_dir() / f"coin-mini-{key}"


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
    """Read (and for coin-mini, first generate) every task of the configured stream."""
    if dc.benchmark == "coin-mini":
        root = coin_mini.generate(coin_mini_root(dc, seed), seed=seed, train_per_task=dc.train_per_task,
                                  test_per_task=dc.test_per_task, pretrain_size=dc.pretrain_size,
                                  image_size=dc.image_size, progress=show_progress)
        image_root = Path(dc.image_root) if dc.image_root else root / "images"
    elif dc.benchmark == "coin":
        if not dc.root or not dc.image_root:
            raise ConfigError("data.benchmark=coin needs data.root (the release folder) and data.image_root")
        root, image_root = Path(dc.root), Path(dc.image_root)
    else:
        raise ConfigError(f"data.benchmark: '{dc.benchmark}' is not one of ['coin-mini', 'coin']")

    release = root / dc.instruction_set
    tasks = stream_order(dc, seed)
    unknown = [t for t in tasks if not (release / t).is_dir()]
    if unknown:
        raise ConfigError(f"data.tasks: no folder for {unknown} under {release}")
    train = {t: read_task(release / t, t, "train", image_root) for t in tasks}
    test = {t: read_task(release / t, t, "test", image_root) for t in tasks}
    scorers = {}
    for t in tasks:
        if t not in DEFAULT_TASK_SCORER:
            raise ConfigError(f"data.tasks: no scorer known for task '{t}' (known: {sorted(DEFAULT_TASK_SCORER)})")
        scorers[t] = DEFAULT_TASK_SCORER[t]
    return Stream(tasks, train, test, image_root, scorers, root)
