"""Starting a run in its folder without losing what was there: decide, claim, set aside, commit or roll back.

:func:`decide_run_dir` picks the folder (``output``, the resumed run's, or ``runs/<time>-<backbone>``) and
refuses, before any work, one that cannot be used: a file, not writable, someone's files, a complete run.

``overwrite`` used to delete the old run's files before the first epoch, so a Ctrl-C (or a crash) in
epoch 1 left neither run. Now the old run's files are moved into a hidden sibling folder
(``.<name>.replaced-<pid>``) when the new run starts, and deleted only once the new run has written its
first checkpoint (:meth:`RunStart.commit`). Until then, any failure or interrupt puts them back
(:meth:`RunStart.rollback`); after a ``kill -9`` they are still in the sibling folder, named in the log.
A run that fails before its first checkpoint also removes what it wrote, and the folder when it made it,
so running the same command again (or ``resume``) is never refused because of a half-started run.

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
import datetime
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError
from transferkit.run.folder import RunFolder

__all__ = ["RunStart", "create_run_dir", "decide_run_dir", "numbered", "safe_name"]

logger = logging.getLogger(__name__)


def safe_name(backbone: str) -> str:
    """A backbone name as a folder-name part: ``timm:convnext_atto`` -> ``timm-convnext_atto``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", backbone).strip("-.") or "model"


def numbered(run_dir: Path) -> Path:
    """``run_dir``, or the first free ``run_dir-2``, ``-3``, ... (two runs started in the same second)."""
    candidate, n = run_dir, 1
    while candidate.exists():
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
    return candidate


def decide_run_dir(options: Mapping[str, Any], resume_path: Path | None) -> Path:
    """The run folder: ``output``, the resumed run's, or a new ``runs/<YYYYmmdd-HHMMSS>-<backbone>``.

    Validates, creating nothing.

    Raises:
        ConfigError: a folder that cannot be created or written, or whose files the run would replace
            without ``overwrite`` or ``resume``.
    """
    if options["output"]:
        run_dir = Path(options["output"])
    elif resume_path is not None:
        run_dir = resume_path.parent
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        # two runs started in the same second: -2, -3, ... (claimed atomically when the folder is made)
        run_dir = numbered(Path("runs") / f"{stamp}-{safe_name(options['backbone'])}")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"`output`={run_dir} is a file; give a folder", param="output")
    _check_creatable(run_dir)
    # hidden entries (.DS_Store, .ipynb_checkpoints) do not make a folder someone's work
    entries = (
        sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) if run_dir.is_dir() else []
    )
    if entries:
        _check_replaceable(run_dir, entries, options["overwrite"], resume_path)
    return run_dir


def _check_replaceable(run_dir: Path, entries: list[str], overwrite: bool, resume_path: Path | None) -> None:
    """A folder that holds files: only a run's own, replaced with ``overwrite`` or continued by ``resume``."""
    folder = RunFolder(run_dir)
    if not (overwrite or resume_path is not None):
        if folder.is_run() and (run_dir / folder.WEIGHTS).is_file():
            # never advise `overwrite` for a finished run: following that advice would destroy it
            raise ConfigError(
                f"run folder {run_dir} holds a complete run; give a new `output` for this one (to re-check "
                f"that run: `resume`={run_dir} `eval_only`=True)",
                param="output",
            )
        raise ConfigError(
            f"run folder {run_dir} already exists and is not empty; use `resume` to continue it, "
            "`overwrite` to replace it, or another `output`" + folder.aside_hint(),
            param="output",
        )
    if resume_path is not None and run_dir.resolve() != resume_path.parent.resolve():
        raise ConfigError(
            f"`output`={run_dir} is not the folder of the run resumed ({resume_path.parent}) and is not empty; "
            "its files would be replaced: drop `output` to continue in the run's own folder, or give an "
            "empty `output`",
            param="output",
        )
    if overwrite and not folder.is_run():
        # `overwrite` replaces a run's own files and keeps the rest; in a folder that is not a run's, a file
        # named like one (someone's metrics.csv and labels.json) is not the run's to replace
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(
            f"`overwrite`: {run_dir} is not a transferkit run folder (no args.yaml of a run) and holds "
            f"files ({shown}); nothing was touched. Give a new or empty `output` folder",
            param="overwrite",
        )


def _check_creatable(run_dir: Path) -> None:
    """Refuse, before any work, a run folder that cannot be created or written (under a file, read-only)."""
    probe = run_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(
            f"`output`={run_dir}: cannot create the run folder, {probe} is a file; give a folder path",
            param="output",
        )
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"`output`={run_dir}: {probe} is not writable (permission denied); give a folder you can write to",
            param="output",
        )


def create_run_dir(run_dir: Path) -> None:
    """Create a resumed run's folder (``output`` may name a new one)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # checked up front; this is a race or a file system that changed since
        raise ConfigError(
            f"`output`={run_dir}: cannot create the run folder ({exc.strerror or exc})", param="output"
        ) from None


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
                f"`output`={self.run_dir}: cannot create the run folder ({exc.strerror or exc})",
                param="output",
            ) from None
        if not self.overwrite:
            return
        present = [n for n in RUN_FILES if (self.run_dir / n).exists()]
        if not present:
            return
        aside = RunFolder(self.run_dir).aside(os.getpid())
        aside.mkdir()
        self.aside = aside
        for name in present:
            os.replace(self.run_dir / name, aside / name)
        logger.info(
            "`overwrite`: the earlier run's files are kept in %s until this run writes its first checkpoint",
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
