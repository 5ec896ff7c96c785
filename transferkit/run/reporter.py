"""Where a run's lines go: a :class:`Reporter` -- the CLI's console, or the log (:class:`LogReporter`).

A run says what it does in lines of the library's words: options are marked API parameters
(`` `resume`=runs/a ``, see :mod:`transferkit.errors`); the CLI's console shows each as its flag, the log
keeps the marks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["Reporter", "LogReporter"]

logger = logging.getLogger("transferkit.run")


class Reporter(Protocol):
    """What a run tells its caller, as it goes."""

    def out(self, line: str) -> None:
        """A result: the plan, an epoch, the best accuracy."""

    def warn(self, line: str) -> None:
        """Something the run cannot do as asked, or that will not work well."""

    def progress(self, iterable: Iterable[Any], total: int | None = None, desc: str = "") -> Iterable[Any]:
        """``iterable``, shown as it is consumed (a progress bar), or as it is."""

    def validated(self) -> None:
        """Every input was checked and the job is built: what is held back until now may be shown."""


class LogReporter:
    """A :class:`Reporter` for :func:`transferkit.finetune`: results as INFO records of ``transferkit.run``,
    warnings as WARNING records, from rank 0 only."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank

    def out(self, line: str) -> None:
        if self.rank == 0:
            logger.info("%s", line)

    def warn(self, line: str) -> None:
        if self.rank == 0:
            logger.warning("%s", line.removeprefix("WARNING: "))

    def progress(self, iterable: Iterable[Any], total: int | None = None, desc: str = "") -> Iterable[Any]:
        return iterable

    def validated(self) -> None:
        pass
