"""Continuing a run: the checkpoint ``resume`` names, read and checked, and where its best weights are.

Everything here runs before anything is written: a resume that cannot finish (a damaged ``last.pt``, the
best epoch's ``best.pt`` gone) is refused up front, never after the epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transferkit.errors import CheckpointError, ConfigError
from transferkit.run.folder import RunFolder

__all__ = ["resume_source", "load_resume", "best_source", "restore_label"]


def resume_source(options: Mapping[str, Any]) -> Path:
    """The checkpoint ``resume`` names: a file, a run folder's ``last.pt``, ``output``'s, or the newest run
    of the backbone (``resume="auto"``)."""
    from transferkit.run.start import safe_name

    value = options["resume"]
    if value != "auto":
        path = Path(value)
        if path.is_dir():
            return _last_of(path, f"`resume`={value}:")
        if not path.is_file():
            raise ConfigError(
                f"`resume`={value}: no checkpoint at {path}; give a run folder or its last.pt", param="resume"
            )
        return path
    if options.get("output"):
        return _output_last(Path(options["output"]))
    pattern = f"*-{safe_name(options['backbone'] or '')}/{RunFolder.LAST}"
    runs = Path("runs")
    found = sorted(runs.glob(pattern), key=lambda p: p.stat().st_mtime) if runs.is_dir() else []
    if not found:
        raise ConfigError(
            f"`resume`: no runs/{pattern} found; give `resume`=PATH or `output`=DIR", param="resume"
        )
    return found[-1]


def _output_last(folder: Path) -> Path:
    """``resume`` without a path, with ``output``: that folder's ``last.pt``."""
    if not folder.is_dir():
        raise ConfigError(
            f"`resume`: no run folder {folder} (from `output`); give the folder of an earlier run, or drop "
            "`resume` to start a new run there",
            param="resume",
        )
    return _last_of(folder, "`resume`:")


def _last_of(folder: Path, said: str) -> Path:
    """A run folder's ``last.pt``; ``said`` opens the error when the run there never finished an epoch."""
    run = RunFolder(folder)
    if not run.last.is_file():
        raise ConfigError(
            f"{said} {folder} has no last.pt (the run there never finished an epoch); drop `resume` to start "
            "it again (with `overwrite`=True if the folder holds files)" + run.aside_hint(),
            param="resume",
        )
    return run.last


def load_resume(path: Path) -> dict[str, Any]:
    """Read a ``resume`` checkpoint, refusing one that is not a run's ``last.pt``/``best.pt``."""
    from transferkit.checkpoint.training import require_training_checkpoint

    try:
        ckpt = RunFolder(path.parent).read_checkpoint(path.name)
    except CheckpointError as exc:
        best = RunFolder(path.parent).best
        other = (
            f"; {best} may still be intact: `resume`={best} continues from the best epoch"
            if best.is_file() and path.name != best.name
            else ""
        )
        detail = str(exc).removeprefix(f"{path}: ")
        raise CheckpointError(f"`resume`={path}: {detail}{other}", param="resume") from None
    hint = f"to start a new run from its weights use `init_checkpoint`={path}"
    return dict(require_training_checkpoint(ckpt, f"`resume`={path}", epoch=True, hint=hint))


def restore_label(path: Path, backbone: str, num_classes: int) -> tuple[str, str]:
    """``(label, hint)`` of a restore error when the checkpoint ``resume`` names is not of this run."""
    label = f"`resume`={path}: the checkpoint does not fit this run ({backbone}, {num_classes} classes)"
    hint = (
        "Was it written by a run of another backbone, class count or freeze plan? To start from its weights "
        f"instead: `init_checkpoint`={path}"
    )
    return label, hint


def best_source(ckpt: Mapping[str, Any], resume_path: Path, run_dir: Path) -> Path | None:
    """The checkpoint holding a resumed run's best epoch so far (``None`` before any epoch was evaluated).

    It becomes the run folder's ``best.pt`` when the run starts (:meth:`RunFolder.keep_best`), so the export
    has it if no later epoch does better. Checked before anything is written: finding out after the last
    epoch would leave a trained run without its export.
    """
    best_epoch = int((ckpt.get("extra") or {}).get("best_epoch", -1))
    if best_epoch < 0:
        return None  # no epoch evaluated yet: the first one resumed becomes the best
    if best_epoch == int(ckpt["epoch"]):
        # the checkpoint resumed is the best epoch's (best.pt may be older, if the run was killed before
        # linking it, and last.pt is replaced by the next epoch)
        return resume_path
    for folder in (RunFolder(run_dir), RunFolder(resume_path.parent)):
        if folder.best.is_file():
            return folder.best
    raise ConfigError(
        f"`resume`={resume_path}: {RunFolder(resume_path.parent).best} is missing, and it holds the best "
        f"epoch's weights (epoch {best_epoch + 1}) that the export needs; put it back, or start a new run "
        f"from these weights with `init_checkpoint`={resume_path}",
        param="resume",
    )
