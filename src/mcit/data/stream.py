"""A stream: the ordered tasks of a benchmark, each with train and test samples, and how each is scored."""
from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from pathlib import Path

from . import coin_mini
from .benchmark import Benchmark, TaskSpec, load_benchmark
from .coin_format import read_test_json, read_train_json
from .images import set_pixel_limit
from .release import OfficialTruth, eval_file, resolve_instruction_set
from .schema import Sample
from ..config import ConfigError, config_hash, random_order_seed

def cache_dir() -> Path:
    """Where generated data and base models are cached: $MCIT_CACHE or ~/.cache/mcit."""
    return Path(os.environ.get("MCIT_CACHE", Path.home() / ".cache" / "mcit"))


@dataclass
class Stream:
    tasks: list[str]
    train: dict[str, list[Sample]]
    test: dict[str, list[Sample]]
    image_root: Path
    specs: dict[str, TaskSpec]  # how each task is scored and answered (its benchmark's entry)
    root: Path  # the benchmark folder (holds one sub-folder per instruction set)
    release: Path  # the instruction set's folder (one sub-folder per task)
    multitask: list[Sample] | None = None  # the release's Multitask/ union, when the stream is all its tasks

    @property
    def scorers(self) -> dict[str, str]:
        return {t: spec.scorer for t, spec in self.specs.items()}


def coin_mini_root(dc, seed: int) -> Path:
    if dc.root:
        return Path(dc.root)
    key = config_hash({k: getattr(dc, k) for k in ("train_per_task", "test_per_task", "pretrain_size", "image_size")} | {"seed": seed, "version": coin_mini.VERSION, "sets": list(coin_mini.INSTRUCTION_SETS)})
    return cache_dir() / f"coin-mini-{key}"


def generate_coin_mini(dc, seed: int, show_progress: bool = True) -> Path:
    """coin-mini as ``dc`` sizes it, generated at :func:`coin_mini_root` (a no-op when there).

    A ``data.root`` holding anything else (a foreign folder, another coin-mini) is a ConfigError;
    generation never touches it."""
    root = coin_mini_root(dc, seed)
    try:
        return coin_mini.generate(root, seed=seed, train_per_task=dc.train_per_task,
                                  test_per_task=dc.test_per_task, pretrain_size=dc.pretrain_size,
                                  image_size=dc.image_size, progress=show_progress)
    except FileExistsError as exc:
        where = "data.root" if dc.root else "the coin-mini cache folder"
        raise ConfigError(f"{where}: {exc} (coin-mini generates into an empty or missing folder)") from None
    except (TypeError, ValueError) as exc:  # a size the generator refuses
        raise ConfigError(f"data (coin-mini): {exc}") from None


NAMED_ORDERS = ("coin", "reverse", "random")


def stream_order(dc, seed: int, bench: Benchmark | None = None) -> list[str]:
    """The tasks in stream order: a named order of data.tasks (any subset of the benchmark's, as
    listed) or, when it is null, of all the benchmark's tasks (in its file's order, CoIN's for
    CoIN): "coin" (that order), "reverse", "random" (a permutation fixed by the seed) or
    "random-N" (fixed by N)."""
    bench = bench or load_benchmark(dc.benchmark)
    if dc.tasks:
        repeated = sorted({t for t in dc.tasks if list(dc.tasks).count(t) > 1})
        if repeated:
            raise ConfigError(f"data.tasks: {repeated} listed more than once")
        for t in dc.tasks:
            bench.spec(t)  # an unknown task is an error naming the benchmark's tasks
    order = list(dc.tasks) if dc.tasks else bench.task_names
    if dc.order == "coin":
        return order
    if dc.order == "reverse":
        return order[::-1]
    order_seed = seed if dc.order == "random" else random_order_seed(dc.order)
    if order_seed is not None:
        random.Random(f"{order_seed}:order").shuffle(order)
        return order
    raise ConfigError(f"data.order: '{dc.order}' is not one of {list(NAMED_ORDERS)} or random-<seed> "
                      "(or give data.tasks as a list)")


def train_share(samples: list[Sample], fraction: float, seed: int, task: str) -> list[Sample]:
    """data.train_fraction of a task's training records: round(fraction x n) of them (at least one),
    chosen by a seeded shuffle and kept in file order; all of them at 1."""
    if fraction >= 1 or not samples:
        return samples
    keep = max(1, round(fraction * len(samples)))
    chosen = sorted(random.Random(f"{seed}:{task}:train_fraction").sample(range(len(samples)), keep))
    return [samples[i] for i in chosen]


def data_folders(dc, bench: Benchmark, seed: int, show_progress: bool = True) -> tuple[Path, Path]:
    """(root, image_root) of the benchmark's data; a generated benchmark is generated first."""
    if bench.generator == "coin-mini":
        root = generate_coin_mini(dc, seed, show_progress)
        return root, Path(dc.image_root) if dc.image_root else root / "images"
    if not dc.root or not dc.image_root:
        raise ConfigError(f"data.benchmark={dc.benchmark} needs data.root (the data folder) and data.image_root")
    return Path(dc.root), Path(dc.image_root)


def build_stream(dc, seed: int, show_progress: bool = True) -> Stream:
    """Read (and for a generated benchmark, first generate) every task of the configured stream.

    Each task's test samples come from its evaluation file (the benchmark's, or
    ``data.eval_files``), with the official ground truth put in where a release keeps it in
    another file (CoIN: TextVQA's ten answers; ScienceQA's problems and GQA's questions when
    given, see :mod:`mcit.data.release`)."""
    bench = load_benchmark(dc.benchmark)
    set_pixel_limit(dc.max_image_pixels)  # the loaders refuse what the data check refuses
    root, image_root = data_folders(dc, bench, seed, show_progress)
    tasks = stream_order(dc, seed, bench)
    release = resolve_instruction_set(root, dc.instruction_set, tasks)
    unknown = [t for t in tasks if not (release / t).is_dir()]
    if unknown:
        raise ConfigError(f"data.tasks: no folder for {unknown} under {release}")
    specs = {t: bench.spec(t) for t in tasks}
    truth = OfficialTruth.read(dc, image_root, tasks) if bench.official_ground_truth else OfficialTruth()
    train = {t: _with_rule(train_share(read_train_json(release / t / "train.json", t, image_root),
                                       dc.train_fraction, seed, t), specs[t]) for t in tasks}
    test = {}
    for t in tasks:
        name = eval_file(specs[t], dc.eval_files)
        test[t] = _with_rule(truth.apply(t, read_test_json(release / t / name, t, image_root), f"{t}/{name}"), specs[t])
    joint = release / "Multitask" / "train.json"
    every_task = set(tasks) == set(bench.task_names)
    # a share of each task's records (data.train_fraction): the union of those shares, not the whole file
    whole = dc.train_fraction == 1.0
    multitask = read_train_json(joint, "Multitask", image_root) if joint.is_file() and every_task and whole else None
    return Stream(tasks, train, test, image_root, specs, root, release, multitask)


def _with_rule(samples: list[Sample], spec: TaskSpec) -> list[Sample]:
    """The task's instruction rule on each sample (the default rule needs nothing stored)."""
    if spec.instruction == "auto":
        return samples
    return [dataclasses.replace(s, extra=s.extra | {"instruction_rule": spec.instruction}) for s in samples]
