"""Progress of a long phase (the base model's stages, training, evaluation, judging) in any log.

On a terminal a tqdm bar, as before. Where there is none (``mcit run > log``, CI, a batch job),
tqdm stays silent and would leave the log empty for minutes, so a plain line is printed instead
every ``log.every_steps`` steps or ``log.every_seconds`` seconds, whichever comes first:

    stage 1/8 ImageNet: 100/300 steps (33%)  loss 1.234  lr 9.7e-04  52.1 samples/s  ETA 1m04s

tqdm has no mode for this (its ``mininterval`` still writes carriage-return updates to one
line), hence the small class below. The run sets the cadence once (:func:`configure`), so the
phases deep in the code (generation, the judge) need no config passed down.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from tqdm.auto import tqdm


@dataclass
class _Cadence:
    every_steps: int = 100  # the defaults of mcit.config.LogConfig
    every_seconds: float = 60.0


_cadence = _Cadence()


def configure(every_steps: int, every_seconds: float) -> None:
    """The run's cadence of progress lines (0 turns that trigger off)."""
    _cadence.every_steps, _cadence.every_seconds = int(every_steps), float(every_seconds)


def on_terminal() -> bool:
    """Bars go to stderr (tqdm's default); they are shown only where it is a terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _print(line: str) -> None:
    print(line, flush=True)


def note(line: str) -> None:
    """A message printed while a bar may be on screen, above it instead of through it."""
    tqdm.write(line)
    sys.stdout.flush()


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3f}"
    return str(v)


class Progress:
    """``done`` out of ``total`` units of one phase. ``update(n, **postfix)`` after each unit;
    ``samples_per_unit`` turns the rate into samples/s (training). Silent where ``enabled`` is
    false (the processes other than the main one); ``lines`` forces lines (True) or a bar (False)."""

    def __init__(self, desc: str, total: int, *, initial: int = 0, unit: str = "step", enabled: bool = True,
                 samples_per_unit: int | None = None, log: Callable[[str], None] | None = None,
                 lines: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.desc, self.total, self.done, self.unit = desc, total, initial, unit
        self.samples_per_unit, self.log, self.clock = samples_per_unit, log or _print, clock
        self.started = self.last_time = clock()
        self.initial = self.last_done = initial
        self.printed = 0
        self.lines = enabled and (not on_terminal() if lines is None else lines)  # else a bar
        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, unit=unit,
                        disable=None if enabled and not self.lines else True)

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if not self.bar.disable:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: _value(v) for k, v in postfix.items()}, refresh=False)
        if self.lines and self._due():
            self._line(postfix)

    def _due(self) -> bool:
        steps, seconds = _cadence.every_steps, _cadence.every_seconds
        return bool((steps and self.done - self.last_done >= steps)
                    or (seconds and self.clock() - self.last_time >= seconds))

    def _line(self, postfix: dict) -> None:
        now = self.clock()
        parts = [f"{self.desc}: {self.done}/{self.total} {_plural(self.unit)} ({100 * self.done // max(1, self.total)}%)"]
        parts += [f"{k} {_value(v)}" for k, v in postfix.items()]
        elapsed, ran = now - self.started, self.done - self.initial
        if elapsed > 0 and ran > 0:
            rate = ran / elapsed
            if self.samples_per_unit:
                parts.append(f"{rate * self.samples_per_unit:.1f} samples/s")
            else:
                parts.append(f"{rate:.2f} {_plural(self.unit)}/s")
            parts.append(f"ETA {duration((self.total - self.done) / rate)}" if self.done < self.total
                         else f"took {duration(elapsed)}")
        self.log("  ".join(parts))
        self.last_done, self.last_time, self.printed = self.done, now, self.printed + 1

    def close(self, **postfix) -> None:
        """Ends the phase; a phase that printed lines gets a last one at its end."""
        self.bar.close()
        if self.lines and self.printed and self.last_done != self.done:
            self._line(postfix)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable, desc: str, total: int, **kwargs) -> Iterator:
    """``items``, one unit of progress each (a loop over batches)."""
    with Progress(desc, total, **kwargs) as progress:
        for item in items:
            yield item
            progress.update()


def reporter(desc: str, unit: str, log: Callable[[str], None] | None = None) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback for code that reports counts itself (the judge):
    lines at the run's cadence, whatever the terminal (such code has no bar)."""
    state: dict = {}

    def report(done: int, total: int) -> None:
        if "p" not in state:
            state["p"] = Progress(desc, total, unit=unit, log=log, lines=True)
        p = state["p"]
        p.update(done - p.done)
        if done >= total:
            p.close()
    return report
