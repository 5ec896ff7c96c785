"""``transferkit finetune``: the flags layered into options, the run (:func:`transferkit.run.runner.run`),
its lines on the console.

Everything is validated -- data folder, classes, rules, device, backbone, init checkpoint, resume
checkpoint -- before the run folder is created, so bad input writes nothing (see
:mod:`transferkit.run.job`). Under torchrun only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from transferkit.commands.console import Console, setup_logging
from transferkit.run.options import layered_options
from transferkit.run.spec import FinetuneSpec

if TYPE_CHECKING:
    from transferkit.run.training import RunInterrupted

__all__ = ["run_finetune", "Interrupted"]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during the epochs, with what was kept and how to continue."""


def run_finetune(ns: argparse.Namespace) -> int:
    """``transferkit finetune``: layer and validate the options, join torchrun's group, run the job."""
    from transferkit.distributed import process_group
    from transferkit.run.runner import run
    from transferkit.run.training import RunInterrupted

    given = {k: v for k, v in vars(ns).items() if k not in ("func", "command", "argv")}
    options, resume_path = layered_options(given)
    spec = FinetuneSpec.from_dict(options)  # checks every value that needs no model or data
    command = " ".join(["transferkit", "finetune", *ns.argv])
    with process_group(spec.device) as (dist, device), _console(spec.quiet, dist.rank) as console:
        try:
            run(
                spec.to_dict(),
                resume_path=resume_path,
                dist=dist,
                device=device,
                reporter=console,
                command=command,
            )
        except RunInterrupted as exc:
            raise Interrupted(_interrupted(exc)) from None
    return 0


@contextlib.contextmanager
def _console(quiet: bool, rank: int) -> Iterator[Console]:
    """The console of rank ``rank``: bars on a terminal, transferkit's log records held back until the job
    is validated."""
    log_handler, undo_logging = setup_logging(quiet, rank)
    bars = rank == 0 and not quiet and sys.stderr.isatty()
    try:
        yield Console(rank, bars, log_handler)
    finally:
        undo_logging()


def _interrupted(exc: RunInterrupted) -> str:
    """What an interrupted run kept, and how to continue it."""
    run_dir, saved, epochs = exc.run_dir, exc.saved, exc.epochs
    if saved == 0:
        kept = f"the earlier run in {run_dir} is back as it was" if exc.restored else "nothing was kept"
        return f"interrupted before the first epoch finished; {kept}: run the command again to start over"
    return (
        f"interrupted: {run_dir / 'last.pt'} holds epoch {saved}/{epochs}; continue with "
        f"transferkit finetune --resume {run_dir}"
    )
