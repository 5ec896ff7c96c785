"""Starting a run in its folder without losing what was there: claim, set aside, commit or roll back.

``--overwrite`` used to delete the old run's files before the first epoch, so a Ctrl-C (or a crash) in
epoch 1 left neither run. Now the old run's files are moved into a hidden sibling folder
(``.<name>.replaced-<pid>``) when the new run starts, and deleted only once the new run has written its
first checkpoint (:meth:`RunStart.commit`). Until then, any failure or interrupt puts them back
(:meth:`RunStart.rollback`); after a ``kill -9`` they are still in the sibling folder, named in the log.
A run that fails before its first checkpoint also removes what it wrote, and the folder when it made it,
so running the same command again (or ``--resume``) is never refused because of a half-started run.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> run = Path(tempfile.mkdtemp()) / "run"
    >>> start = RunStart(run, overwrite=False)
    >>> start.begin()
    >>> _ = (run / "args.yaml").write_text("args: {}")
    >>> start.rollback()  # failed before the first checkpoint: nothing is left behind
    >>> run.exists()
    False
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from transferkit.errors import ConfigError

__all__ = ["RunStart", "numbered"]

logger = logging.getLogger("transferkit.cli")


def numbered(run_dir: Path) -> Path:
    """``run_dir``, or the first free ``run_dir-2``, ``-3``, ... (two runs started in the same second)."""
    candidate, n = run_dir, 1
    while candidate.exists():
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
    return candidate


class RunStart:
    """The start of a run in ``run_dir``, undone on failure until its first checkpoint exists.

    Args:
        run_dir: the run folder.
        overwrite: the folder holds an earlier run whose files the new run replaces.
        auto_named: the folder name was chosen automatically; when another run claimed it meanwhile, the
            next free number is used (see :attr:`run_dir`).
    """

    def __init__(self, run_dir: Path, *, overwrite: bool, auto_named: bool = False) -> None:
        self.run_dir, self.overwrite, self.auto_named = run_dir, overwrite, auto_named
        self.created = False
        self.aside: Path | None = None
        self.committed = False

    def begin(self) -> None:
        """Create (claim) the folder, or move the earlier run's files aside."""
        from transferkit.report import RUN_FILES

        try:
            if self.auto_named:
                self.run_dir.parent.mkdir(parents=True, exist_ok=True)
                while (
                    True
                ):  # mkdir is the atomic claim: a run started in the same second takes the next number
                    try:
                        self.run_dir.mkdir()
                        break
                    except FileExistsError:
                        self.run_dir = numbered(self.run_dir)
                self.created = True
            elif not self.run_dir.is_dir():
                self.run_dir.mkdir(parents=True)
                self.created = True
        except OSError as exc:  # checked up front; this is a race or a file system that changed since
            raise ConfigError(
                f"--output {self.run_dir}: cannot create the run folder ({exc.strerror or exc})"
            ) from None
        if not self.overwrite:
            return
        present = [n for n in RUN_FILES if (self.run_dir / n).exists()]
        if not present:
            return
        aside = self.run_dir.with_name(f".{self.run_dir.name}.replaced-{os.getpid()}")
        aside.mkdir()
        self.aside = aside
        for name in present:
            os.replace(self.run_dir / name, aside / name)
        logger.info(
            "--overwrite: the earlier run's files are kept in %s until this run writes its first checkpoint",
            aside,
        )

    def commit(self) -> None:
        """The new run has a checkpoint: the earlier run's files can go."""
        if self.committed:
            return
        self.committed = True
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def rollback(self) -> None:
        """Before the first checkpoint: remove what this run wrote, put the earlier run's files back."""
        from transferkit.report import RUN_FILES

        if self.committed:
            return
        if (self.run_dir / "last.pt").is_file():  # interrupted right after the first save: keep the new run
            self.commit()
            return
        for name in RUN_FILES:
            (self.run_dir / name).unlink(missing_ok=True)
        if self.aside is not None:
            for entry in self.aside.iterdir():
                os.replace(entry, self.run_dir / entry.name)
            self.aside.rmdir()
            self.aside = None
        if self.created:
            with contextlib.suppress(OSError):  # only when empty: never anything someone else put there
                self.run_dir.rmdir()
