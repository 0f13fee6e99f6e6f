"""The user-error exception classes: bad input, reported by ``mcit`` in one line with exit code 2.

They live here, in a module that imports nothing heavy, so the command line's error handler can
catch them without importing torch, transformers or PEFT. The modules that raise them import them
from here (and keep the old names importable: ``mcit.config.ConfigError`` is this ConfigError).
"""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ["ConfigError", "DataCheckFailed", "DataError", "JudgeError", "RunError", "USER_ERRORS", "UserError"]


class UserError(Exception):
    """Bad input from the user: reported in one line, no traceback, exit code 2."""


class ConfigError(ValueError):
    """A configuration file or override is malformed, has an unknown key, a wrong type or a value
    out of range. ``problems`` lists every problem found (one line each; the message shows them all)."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems) or [message]

    @classmethod
    def of(cls, problems: Sequence[str]) -> "ConfigError":
        """One error reporting every problem: the problem itself if there is one, else a count and
        one indented line each (like `mcit data check`)."""
        if len(problems) == 1:
            return cls(problems[0])
        lines = "\n".join(f"  {p}" for p in problems)
        return cls(f"{len(problems)} problems in the config:\n{lines}", problems)


class RunError(RuntimeError):
    """The run folder cannot be used as asked."""


class JudgeError(RuntimeError):
    """The judge cannot run as configured (bad run folder, prediction file or backend setting)."""


class DataError(ValueError):
    """A problem with the content of a data file.

    Attributes: ``file`` (the file as shown in the message, or None), ``record`` (the record's
    id when it has one, else its index, or None), ``index`` (the record's position in the list,
    or None), ``field`` (the offending field, or None) and ``reason`` (the bare problem).
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        record: Any = None,
        index: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = file
        self.record = record
        self.index = index
        self.field = field
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(str(self.file))
        if self.index is not None:
            where = f"record {self.index}"
            if self.record is not None and self.record != self.index:
                where += f" (id {self.record!r})"
            parts.append(where)
        elif self.record is not None:
            parts.append(f"record {self.record!r}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return (", ".join(parts) + ": " + self.reason) if parts else self.reason

    def located(
        self, *, file: str | None = None, record: Any = None, index: int | None = None,
        field: str | None = None,
    ) -> "DataError":
        """A copy with the missing location parts filled in."""
        return DataError(
            self.reason,
            file=self.file if self.file is not None else file,
            record=self.record if self.record is not None else record,
            index=self.index if self.index is not None else index,
            field=self.field if self.field is not None else field,
        )


class DataCheckFailed(Exception):
    """A run's data has problems; ``report`` (a mcit.data.check.CheckReport) lists every one of
    them (nothing was trained or written)."""

    def __init__(self, report: Any):
        super().__init__("the data check found problems; nothing was trained or written\n" + report.format())
        self.report = report


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ConfigError, DataError, RunError, DataCheckFailed, JudgeError)
"""What `mcit` reports as a one-line error with exit code 2 (mcit.cli.main)."""
