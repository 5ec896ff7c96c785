"""A wall-clock limit for one read in the hostile-file tests (``test_fuzz``, ``test_hostile``)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so a reader's ``except Exception`` cannot swallow a hang."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the main thread when the block runs longer than ``seconds``."""

    def on_alarm(signum: int, frame: object) -> None:
        raise CaseTimeout(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
