"""The file side of reading a checkpoint: path checks, format detection and where a loaded object came from.

* :func:`_check_file` turns a path into a ``Path`` or a :class:`CheckpointError` saying why nothing
  readable is there (missing, a folder, empty).
* :func:`_pinned` gives a name that stays bound to one inode while the file is read.
* :func:`_detect_format` tells ``"zip"``, ``"legacy"`` and ``"safetensors"`` apart by their first bytes;
  :func:`_check_torch_zip` refuses zips that are not torch checkpoints (TorchScript, other archives).
* :func:`_remember_source` / :func:`_source_label` recall which file a loaded object was read from, so
  later errors about it can name the file.

Everything here is private to :mod:`transferkit.checkpoint`; the siblings import it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
import weakref
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from transferkit.errors import CheckpointError, ConfigError

__all__ = [
    "PathLike",
    "MapLocation",
    "_as_path",
    "_check_file",
    "_pinned",
    "_detect_format",
    "_check_torch_zip",
    "_remember_source",
    "_source_label",
]


PathLike = str | os.PathLike

MapLocation = str | torch.device | Mapping[str, Any] | Callable[..., Any] | None

_CKPT_SUFFIXES = frozenset({".pt", ".pth", ".tar", ".th", ".bin", ".ckpt", ".safetensors", ".pkl"})


def _as_path(path: Any, what: str = "path") -> Path:
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _check_file(path: Any) -> Path:
    """The path as a Path, or CheckpointError saying why there is no readable file there."""
    path = _as_path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        hint = "" if path.parent.is_dir() else f" (the folder {path.parent} does not exist either)"
        raise CheckpointError(f"{path}: no such file{hint}; check the path") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot access it ({err.strerror or err})") from err
    if stat.S_ISDIR(info.st_mode):
        found = sorted(p.name for p in path.iterdir() if p.suffix in _CKPT_SUFFIXES)[:5]
        hint = f"; checkpoint files in it: {', '.join(found)}" if found else ""
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file{hint}")
    if info.st_size == 0:
        raise CheckpointError(
            f"{path}: the file is empty (0 bytes); the save that wrote it was probably interrupted"
        )
    return path


@contextlib.contextmanager
def _pinned(path: Path) -> Iterator[str]:
    """A name for the file that stays bound to the same inode while it is read.

    ``torch.load(mmap=True)`` opens its path twice (zip reader, then the storage mapping); a save
    replacing the file in between would mix two files. Reading through ``/proc/self/fd/N`` of one open
    descriptor makes every open see the same file. Elsewhere the path itself is used.
    """
    if not os.path.isdir("/proc/self/fd"):
        yield str(path)
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot open it ({err.strerror or err})") from err
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _detect_format(path: Path, source: str | Path | None = None) -> str:
    """``"zip"``, ``"legacy"`` or ``"safetensors"``, from the file's first bytes (never its suffix)."""
    source = path if source is None else source
    try:
        with open(source, "rb") as f:
            head = f.read(512)
            size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror or err})") from err
    if head[:2] == b"PK":
        try:
            complete = zipfile.is_zipfile(source)
        except Exception:  # is_zipfile itself raises BadZipFile on some damaged archives
            complete = False
        if not complete:
            raise CheckpointError(
                f"{path}: a zip archive that is truncated or damaged (no end-of-archive record); "
                "re-download or re-save it"
            )
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > size - 8:
            raise CheckpointError(
                f"{path}: a safetensors file whose header says {header_len} bytes but only {size - 8} follow "
                "its 8-byte length; it is truncated or damaged"
            )
        return "safetensors"
    if head[:1] == b"\x80" or head[257:262] == b"ustar":
        return "legacy"  # a pickle stream (torch.save before 1.6) or the even older tar layout
    if _is_old_pickle(source):
        return "pickle"  # protocol 0 or 1: not a torch file, but it can be scanned and described
    raise CheckpointError(f"{path}: not a PyTorch or safetensors checkpoint: {_describe_head(head)}")


# Opcodes a protocol 0/1 pickle may start with (text and binary forms of values, MARK, GLOBAL, ...).
_PICKLE_STARTS = frozenset(b"(cN\x88\x89IJKLMFGSTUVXBC]})eh" + b"abdlpgqrst0123456789.")


def _is_old_pickle(source: str | Path) -> bool:
    """Whether the file parses as one protocol 0/1 pickle within small budgets (nothing is executed)."""
    from transferkit.checkpoint.pickle_scan import Limits, PickleBudgetError, scan_pickle

    with open(source, "rb") as handle:
        if handle.read(1)[:1] not in {bytes([b]) for b in _PICKLE_STARTS}:
            return False
        # an mmap, not the file: a declared length of 4 GiB then reads what is there, allocating nothing
        stream = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            scan_pickle(stream, limits=Limits(opcodes=200_000, pickle_bytes=64 << 20))
        except PickleBudgetError:
            return True  # a pickle, but a large or hostile one: the full scan says which
        except CheckpointError:
            return False
        finally:
            stream.close()
    return True


def _describe_head(head: bytes) -> str:
    text = head.lstrip()[:64].lower()
    if text.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the file itself; run `git lfs pull`"
    if text.startswith((b"<!doctype", b"<html", b"<?xml")):
        return "it is an HTML/XML page (a failed download?), not weights"
    return (
        f"it starts with {head[:8]!r}; expected a zip archive (torch.save since 1.6), a pickle "
        "(legacy torch.save) or a safetensors header"
    )


def _check_torch_zip(path: Path, source: str | Path | None = None) -> list[str]:
    """The zip's member names; CheckpointError when it cannot be a torch checkpoint."""
    try:
        with zipfile.ZipFile(path if source is None else source) as archive:
            names = archive.namelist()
    except Exception as err:  # zipfile raises many types on damaged archives
        raise CheckpointError(f"{path}: the zip archive is damaged ({type(err).__name__}: {err})") from err
    if any(name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(
            f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint; load it with torch.jit.load"
        )
    if not any(name.endswith("data.pkl") for name in names):
        shown = ", ".join(names[:5]) or "none"
        raise CheckpointError(
            f"{path}: a zip archive but not a PyTorch checkpoint (no data.pkl inside; members: {shown})"
        )
    return names


# ------------------------------------------------------------------------------------------ source labels


# Which file a loaded object came from, so extract_state_dict's errors can name it. Keyed by id(), with
# a check that it is still the same object: a weak reference where the type allows one, else the
# top-level keys (plain dicts cannot be weakly referenced).
_SOURCES: OrderedDict[int, tuple[Callable[[Any], bool], Path]] = OrderedDict()


def _remember_source(obj: Any, path: Path) -> None:
    try:
        ref = weakref.ref(obj)
        same: Callable[[Any], bool] = lambda other: ref() is other  # noqa: E731
    except TypeError:
        signature = _key_signature(obj)
        same = lambda other: _key_signature(other) == signature  # noqa: E731
    _SOURCES[id(obj)] = (same, path)
    while len(_SOURCES) > 16:
        _SOURCES.popitem(last=False)


def _key_signature(obj: Any) -> frozenset | None:
    if not isinstance(obj, Mapping):
        return None
    try:  # dict.keys: a loaded OrderedDict may carry an attribute that shadows the method
        return frozenset(dict.keys(obj) if isinstance(obj, dict) else obj.keys())
    except Exception:
        return None


def _source_label(obj: Any) -> str:
    entry = _SOURCES.get(id(obj))
    if entry is not None and entry[0](obj):
        return str(entry[1])
    return "checkpoint"
