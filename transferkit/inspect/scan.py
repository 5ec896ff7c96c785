"""``transferkit scan``: whether a checkpoint would load safely, decided without running anything.

:func:`scan_checkpoint` gives one :class:`ScanResult` per file: ``ok``, ``refused`` (unknown globals,
damaged, beyond a budget) or ``dangerous`` (globals that can run code or touch files or the network),
with a one-line reason for CI logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from transferkit.errors import CheckpointError, UnsafeCheckpointError

__all__ = ["ScanResult", "scan_checkpoint"]


@dataclass(frozen=True)
class ScanResult:
    """A scanner's verdict on one file (:func:`scan_checkpoint`).

    Attributes:
        path: the file.
        verdict: ``"ok"`` (the default reader accepts it), ``"refused"`` (it would be refused: unknown
            globals, damaged, or beyond a budget) or ``"dangerous"`` (it names globals that can run code,
            import modules or touch files or the network).
        reason: one line saying why (empty when ok).
        globals: the globals it needs beyond ``weights_only`` (the full list, however long).
    """

    path: Path
    verdict: str
    reason: str = ""
    globals: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the file passes (what ``transferkit scan`` exits 0 for)."""
        return self.verdict == "ok"

    def line(self) -> str:
        """``PATH: ok``, ``PATH: refused: why`` or ``PATH: DANGEROUS: which``: one line for CI logs."""
        label = "DANGEROUS" if self.verdict == "dangerous" else self.verdict
        return f"{self.path}: {label}" + (f": {self.reason}" if self.reason else "")


def scan_checkpoint(path: str | os.PathLike[str]) -> ScanResult:
    """Say whether a checkpoint would load safely, as a pickle scanner would, without running anything.

    The file's pickles are scanned statically (every global classified, budgets checked, zip members
    checked); a file with no unsafe global is then read with ``weights_only=True`` and mmap, as
    :func:`~transferkit.checkpoint.load_checkpoint` would.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "w.pt"
        >>> torch.save({"w": torch.ones(2)}, path)
        >>> scan_checkpoint(path).verdict
        'ok'
    """
    from transferkit.checkpoint import describe_unsafe_globals, load_checkpoint
    from transferkit.checkpoint.verdicts import DANGEROUS, classify_global, summarize_globals

    path = Path(path)
    try:
        names = describe_unsafe_globals(path)
        if not names:
            load_checkpoint(path, mmap=True)
    except UnsafeCheckpointError as exc:
        names = list(exc.globals)
    except CheckpointError as exc:
        return ScanResult(path, "refused", _without_path(str(exc), path))
    if not names:
        return ScanResult(path, "ok")
    dangerous = any(classify_global(n).kind == DANGEROUS for n in names)
    reason = summarize_globals(names)
    if not dangerous:
        reason = f"weights_only would refuse it: {reason}"
    return ScanResult(path, "dangerous" if dangerous else "refused", reason, tuple(names))


def _without_path(message: str, path: Path) -> str:
    text = " ".join(message.split())
    return text[len(str(path)) + 2 :] if text.startswith(f"{path}: ") else text
