"""Atomic writes: a temporary file in the target folder, flushed, fsynced and ``os.replace``-d.

:func:`atomic_write` yields a file object; :func:`atomic_path` yields a path for writers that need one
(safetensors); :func:`atomic_torch_save` is ``torch.save`` through :func:`atomic_write`. A failure at any step
leaves the previous file at the path intact and no temporary file behind (only a SIGKILL can leave a
``.<name>.tmp-*`` file); ``OSError`` s become :class:`CheckpointError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from transferkit.checkpoint._files import as_path
from transferkit.checkpoint.formats import PathLike
from transferkit.errors import CheckpointError

__all__ = ["atomic_write", "atomic_copy"]

# one logger for the whole package: the CLI quiets "transferkit.checkpoint" by name and prints the name
logger = logging.getLogger("transferkit.checkpoint")


_TEMP_INFIX = ".tmp-"


def _file_mode(path: Path) -> int:
    """Permissions for the new file: the old file's, else what ``open`` would give (0o666 - umask)."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _describe_os_error(err: BaseException) -> str:
    if isinstance(err, OSError):
        reason = err.strerror or str(err)
        if err.errno == 28:
            reason += " (the disk is full)"
        return reason
    return f"{type(err).__name__}: {err}"


def _resolve_link(path: Path) -> Path:
    """Write through a symlink (``last.pt -> epoch_9.pt``) like ``open`` would, instead of replacing it."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _make_temp(path: Path) -> tuple[int, str]:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: cannot create folder {folder} ({err.strerror})") from err
    if path.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a directory")
    try:
        return tempfile.mkstemp(prefix=f".{path.name}{_TEMP_INFIX}", dir=folder)
    except OSError as err:
        raise CheckpointError(
            f"cannot write {path}: creating a temporary file in {folder} failed ({_describe_os_error(err)})"
        ) from err


def _discard(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable. Some file systems cannot fsync a folder: then warn, the file is in place."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as err:
        logger.warning(
            "could not open %s to fsync it (%s); the rename may not survive a power loss", folder, err
        )
        return
    try:
        os.fsync(fd)
    except OSError as err:
        logger.warning("could not fsync folder %s (%s); the rename may not survive a power loss", folder, err)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[BinaryIO]:
    """Write a file atomically: all of it appears at ``path``, or nothing changes there.

    Yields a binary file object on a temporary file ``.<name>.tmp-<random>`` in the same folder (created
    if missing). On a clean exit the data is flushed and fsynced, the temp file is ``os.replace``-d over
    ``path`` (through a symlink, as ``open`` would) and the folder is fsynced. On any exception the
    temp file is removed and the old file at ``path`` is untouched; ``OSError`` s (disk full, permission
    denied) become :class:`CheckpointError`, other exceptions propagate unchanged.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> with atomic_write(path) as f:
        ...     _ = f.write(b"hello")
        >>> path.read_bytes()
        b'hello'
    """
    path = _resolve_link(as_path(path))
    mode = _file_mode(path)
    fd, tmp = _make_temp(path)
    with _discarded_on_failure(tmp, path):
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """Like :func:`atomic_write`, for writers that insist on a path (safetensors' ``save_file``)."""
    path = _resolve_link(path)
    mode = _file_mode(path)
    fd, tmp = _make_temp(path)
    with _discarded_on_failure(tmp, path):
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` with :func:`atomic_write`'s guarantee, by hard link where possible.

    A replaced ``src`` (``os.replace`` of the next ``last.pt``) leaves a hard-linked ``dst`` pointing at the
    old data: a full copy of a large checkpoint for the price of a directory entry. Where links are not
    allowed the bytes are copied through a fsynced temporary file.
    """
    dst = _resolve_link(Path(dst))
    fd, tmp = _make_temp(dst)
    os.close(fd)
    with _discarded_on_failure(tmp, dst):
        os.unlink(tmp)  # the unique name stays ours: mkstemp made it in a folder we write alone
        try:
            os.link(src, tmp)
        except OSError:
            with atomic_path(dst) as target:
                shutil.copyfile(src, target)
            return
        os.replace(tmp, dst)
    _fsync_dir(dst.parent)


@contextlib.contextmanager
def _discarded_on_failure(tmp: str, path: Path) -> Iterator[None]:
    """On any exception remove the temp file; an ``OSError`` becomes a CheckpointError naming ``path``."""
    try:
        yield
    except BaseException as err:
        _discard(tmp)
        if isinstance(err, OSError):
            raise CheckpointError(f"cannot write {path}: {_describe_os_error(err)}") from err
        raise


class _RecordingWriter:
    """A file wrapper that remembers the OSError behind a failed write; torch.save reports it vaguely."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._f.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_write(path) as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]
        except OSError:
            raise
        except Exception as err:
            if writer.error is not None:
                raise writer.error from err  # atomic_write turns it into CheckpointError
            raise CheckpointError(
                f"cannot write {path}: serialising failed ({type(err).__name__}: {err})"
            ) from err
