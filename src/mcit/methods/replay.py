"""Replay, an addition: a small buffer of earlier tasks' samples mixed into each new task's
training data (on sequential LoRA when named alone, `method.name=replay`).

Per task t: the loop trains on the task's own samples plus round(replay_ratio * n_t) samples
drawn from the buffer (no step is added: train.py fixes the budget from the task's own data).
After the task, the task's own samples (never the replayed ones) update the buffer:

  reservoir  classic reservoir sampling (Algorithm R) over every sample seen so far: after N
             samples each one is in the buffer with probability replay_size / N.
  balanced   an equal share of replay_size per task seen so far; when a task is added the
             older tasks give up slots (each keeps a prefix of its randomly ordered list, which
             is again a uniform random subset). A task with fewer samples than its share keeps
             them all and the spare slots go to the others (water-filling).

Every random draw comes from its own RNG seeded by (run seed, task index, purpose), so a
resumed run, which restores the buffer from `json_state`, draws exactly what an uninterrupted
run draws.
"""
from __future__ import annotations

import random
from dataclasses import asdict

from ..config import ConfigError
from ..data.schema import Sample
from .base import Addition, TaskContext


def sample_to_dict(s: Sample) -> dict:
    d = asdict(s)
    d["answers"] = list(s.answers)
    return d


def sample_from_dict(d: dict) -> Sample:
    return Sample(id=str(d["id"]), task=str(d["task"]), image=d.get("image"), text=str(d["text"]),
                  answers=tuple(d["answers"]), extra=dict(d.get("extra") or {}))


def draw(buffer: list, k: int, rng: random.Random) -> list:
    """k samples from `buffer`: without replacement while k <= len(buffer); beyond that whole
    shuffled copies of the buffer plus a random remainder, so no sample repeats more than
    another by more than one."""
    if not buffer or k <= 0:
        return []
    full, rest = divmod(k, len(buffer))
    out = []
    for _ in range(full):
        out += rng.sample(buffer, len(buffer))
    return out + rng.sample(buffer, rest)


def reservoir_update(buffer: list, seen: int, new: list, size: int, rng: random.Random) -> int:
    """Algorithm R over `new`, in place; `seen` samples came before. Returns the new count."""
    for s in new:
        if len(buffer) < size:
            buffer.append(s)
        else:
            j = rng.randint(0, seen)  # uniform over the seen + 1 samples so far
            if j < size:
                buffer[j] = s
        seen += 1
    return seen


def balanced_shares(available: list[int], size: int) -> list[int]:
    """Equal shares of `size` slots, capped by what each task has; spare slots are re-shared
    among the tasks that can take more; a remainder goes to the earliest tasks."""
    shares = [0] * len(available)
    free = size
    open_ = [i for i, a in enumerate(available) if a > 0]
    while free > 0 and open_:
        each, extra = divmod(free, len(open_))
        given = 0
        for rank, i in enumerate(open_):
            want = each + (1 if rank < extra else 0)
            take = min(want, available[i] - shares[i])
            shares[i] += take
            given += take
        free -= given
        open_ = [i for i in open_ if shares[i] < available[i]]
        if given == 0:
            break
    return shares


def balanced_update(buffer: list, new: list, size: int, rng: random.Random) -> list:
    """The balanced buffer after adding task `new` (all samples of one task)."""
    groups: dict[str, list] = {}
    for s in buffer:
        groups.setdefault(s.task, []).append(s)
    fresh = rng.sample(new, len(new))  # random order: any prefix is a uniform random subset
    tasks = list(groups)
    key = new[0].task if new else None
    if key in groups:  # a task seen again (a repeated task in the stream) pools its samples
        kept = {g.id for g in groups[key]}
        pool = groups[key] + [s for s in fresh if s.id not in kept]
        groups[key] = rng.sample(pool, len(pool))
    elif key is not None:
        tasks.append(key)
        groups[key] = fresh
    shares = balanced_shares([len(groups[t]) for t in tasks], size)
    return [s for t, n in zip(tasks, shares) for s in groups[t][:n]]


class Replay(Addition):
    name = "replay"

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)  # settings checked at config load (methods/registry.py)
        self.seed = 0
        self.buffer: list[Sample] = []
        self.seen = 0  # samples offered to the buffer so far (reservoir's N)
        self._current: list[Sample] = []  # this task's own samples, for after_task

    def setup(self, model, run_cfg):
        self.seed = int(run_cfg.seed)
        return super().setup(model, run_cfg)

    def _rng(self, index: int, purpose: str) -> random.Random:
        # String seeds are hashed with SHA-512 by `random`: stable across processes and runs.
        return random.Random(f"mcit-replay/{self.seed}/{index}/{purpose}")

    def train_samples(self, ctx: TaskContext, samples: list) -> list:
        samples = super().train_samples(ctx, samples)
        self._current = list(samples)
        k = round(self.cfg.replay_ratio * len(samples))
        mixed = draw(self.buffer, k, self._rng(ctx.index, "mix"))
        ctx.log["replay_mixed"] = len(mixed)
        ctx.log["replay_buffer"] = len(self.buffer)
        return list(samples) + mixed

    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)
        self.update_buffer(ctx.index, self._current)
        self._current = []

    def update_buffer(self, index: int, samples: list) -> None:
        rng = self._rng(index, "update")
        size = self.cfg.replay_size
        if self.cfg.replay_selection == "reservoir":
            self.seen = reservoir_update(self.buffer, self.seen, samples, size, rng)
        else:
            self.buffer = balanced_update(self.buffer, samples, size, rng)
            self.seen += len(samples)

    def own_json_state(self) -> dict:
        return {"selection": self.cfg.replay_selection, "size": self.cfg.replay_size, "seen": self.seen,
                "buffer": [sample_to_dict(s) for s in self.buffer]}

    def load_own_json_state(self, state: dict) -> None:
        if not state:
            return
        if state.get("selection", self.cfg.replay_selection) != self.cfg.replay_selection:
            raise ConfigError(f"the saved replay buffer was built with replay_selection={state['selection']}, "
                              f"the config asks for {self.cfg.replay_selection}")
        self.seen = int(state.get("seen", 0))
        self.buffer = [sample_from_dict(d) for d in state.get("buffer", [])]
