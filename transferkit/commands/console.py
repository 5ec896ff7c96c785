"""The only place that prints: results on stdout and warnings on stderr from rank 0, tqdm bars on a
terminal, transferkit's log records held back until validation passed, errors as one line."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from transferkit.commands.flags import render_text

__all__ = ["Console", "DeferredHandler", "setup_logging", "one_line"]


class Console:
    """The only place that prints: rank 0, stdout for results, stderr for warnings and errors."""

    def __init__(self, rank: int = 0, bars: bool = False, log_handler: DeferredHandler | None = None) -> None:
        self.rank, self.bars, self.log_handler = rank, bars, log_handler

    def validated(self) -> None:
        """Validation passed: show the log records held back until now."""
        if self.log_handler is not None:
            self.log_handler.show_pending()

    def out(self, line: str) -> None:
        if self.rank != 0:
            return
        if self.bars:
            from tqdm import tqdm

            tqdm.write(render_text(line), file=sys.stdout)
        else:
            print(render_text(line), flush=True)

    def warn(self, line: str) -> None:
        if self.rank == 0:
            print(render_text(line), file=sys.stderr, flush=True)

    def progress(self, iterable: Any, total: int | None = None, desc: str = "") -> Any:
        if not self.bars:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


class _FlagFormatter(logging.Formatter):
    """Log lines in the CLI's words: a marked API parameter (`` `weights` ``) shows as its flag."""

    def format(self, record: logging.LogRecord) -> str:
        return render_text(super().format(record))


class DeferredHandler(logging.StreamHandler):
    """Holds log records until :meth:`show_pending`: a run that fails validation prints only its error line."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(_FlagFormatter("%(levelname)s %(name)s: %(message)s"))
        self.pending: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.pending is not None:
            self.pending.append(record)
        else:
            super().emit(record)

    def show_pending(self) -> None:
        pending, self.pending = self.pending or [], None
        for record in pending:
            super().emit(record)


def setup_logging(quiet: bool, rank: int) -> tuple[DeferredHandler, Callable[[], None]]:
    """Send transferkit's log records to stderr (deferred until validation passed); returns the undo."""
    level = logging.WARNING if quiet else logging.INFO
    if rank != 0:
        level = logging.ERROR
    root = logging.getLogger("transferkit")
    handler = DeferredHandler()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    # one "saved checkpoint" line per epoch says nothing the epoch line does not
    saver = logging.getLogger("transferkit.checkpoint")
    old_saver = saver.level
    saver.setLevel(max(level, logging.WARNING))

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(old_level)
        saver.setLevel(old_saver)

    return handler, undo


_WORKER_ERROR = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception): ")


def one_line(message: str) -> str:
    """One line for stderr. An error re-raised from a DataLoader worker carries the worker's traceback in its
    message ("Caught X in DataLoader worker process 0. Original Traceback ..."): only its last line counts."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Caught ") and any(ln.startswith("Original Traceback") for ln in lines):
        last = next((i for i in range(len(lines) - 1, 0, -1) if _WORKER_ERROR.match(lines[i])), None)
        if last is not None:
            lines = [_WORKER_ERROR.sub("", lines[last], count=1), *lines[last + 1 :]]
    return " | ".join(lines) if lines else "error"


@contextlib.contextmanager
def warnings_only(bars: bool = False) -> Iterator[Console]:
    """A rank-0 :class:`Console` for the commands that use a finished run (predict, evaluate, export): the
    library's warnings only (its create_model notes are noise there), held back until
    :meth:`Console.validated`; logging is put back on leaving.

    Example:
        >>> with warnings_only() as console:
        ...     console.validated()
    """
    handler, undo = setup_logging(True, rank=0)
    try:
        yield Console(0, bars, handler)
    finally:
        undo()
