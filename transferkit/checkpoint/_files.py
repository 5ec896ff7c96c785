"""The file side of reading a checkpoint: path checks, format detection and where a loaded object came from.

* :func:`check_file` turns a path into a ``Path`` or a :class:`CheckpointError` saying why nothing
  readable is there (missing, a folder, empty).
* :func:`pinned` gives a name that stays bound to one inode while the file is read.
* :func:`detect_format` tells ``"zip"``, ``"legacy"`` and ``"safetensors"`` apart by their first bytes;
  :func:`check_torch_zip` refuses zips that are not torch checkpoints (TorchScript, other archives).
* :func:`remember_source` / :func:`source_label` recall which file a loaded object was read from, so
  later errors about it can name the file.

The module is private to :mod:`transferkit.checkpoint` (its siblings import it); its names are not re-exported.
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

from transferkit.checkpoint.formats import (
    is_checkpoint_name,
    read_head,
    safetensors_header_fits,
    sniff_format,
)
from transferkit.errors import CheckpointError, ConfigError

__all__ = [
    "as_path",
    "check_file",
    "pinned",
    "detect_format",
    "check_torch_zip",
    "remember_source",
    "source_label",
]


def as_path(path: Any, what: str = "path") -> Path:
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def check_file(path: Any) -> Path:
    """The path as a Path, or CheckpointError saying why there is no readable file there."""
    path = as_path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        hint = "" if path.parent.is_dir() else f" (the folder {path.parent} does not exist either)"
        raise CheckpointError(f"{path}: no such file{hint}; check the path") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot access it ({err.strerror or err})") from err
    if stat.S_ISDIR(info.st_mode):
        found = sorted(p.name for p in path.iterdir() if is_checkpoint_name(p.name))[:5]
        hint = f"; checkpoint files in it: {', '.join(found)}" if found else ""
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file{hint}")
    if info.st_size == 0:
        raise CheckpointError(
            f"{path}: the file is empty (0 bytes); the save that wrote it was probably interrupted"
        )
    return path


@contextlib.contextmanager
def pinned(path: Path) -> Iterator[str]:
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


def detect_format(path: Path, source: str | Path | None = None) -> str:
    """``"zip"``, ``"legacy"``, ``"safetensors"`` or ``"pickle"`` (:func:`.formats.sniff_format`, checked)."""
    source = path if source is None else source
    try:
        head, size = read_head(source)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror or err})") from err
    kind = sniff_format(head, size)
    if kind == "zip":
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
    if kind == "safetensors":
        if not safetensors_header_fits(head, size):
            (header_len,) = struct.unpack("<Q", head[:8])
            raise CheckpointError(
                f"{path}: a safetensors file whose header says {header_len} bytes but only {size - 8} follow "
                "its 8-byte length; it is truncated or damaged"
            )
        return "safetensors"
    if kind in ("legacy", "tar") or head[:1] == b"\x80":
        return "legacy"  # a pickle stream (torch.save before 1.6) or the even older tar layout
    if kind == "pickle" and _is_old_pickle(source):
        return "pickle"  # protocol 0 or 1: not a torch file, but it can be scanned and described
    raise CheckpointError(f"{path}: not a PyTorch or safetensors checkpoint: {_describe_head(head)}")


def _is_old_pickle(source: str | Path) -> bool:
    """Whether the file parses as one protocol 0/1 pickle within small budgets (nothing is executed)."""
    from transferkit.checkpoint.pickle_scan import Limits, PickleBudgetError, scan_pickle

    with open(source, "rb") as handle:
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


def check_torch_zip(path: Path, source: str | Path | None = None) -> list[str]:
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


def remember_source(obj: Any, path: Path) -> None:
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


def source_label(obj: Any) -> str:
    entry = _SOURCES.get(id(obj))
    if entry is not None and entry[0](obj):
        return str(entry[1])
    return "checkpoint"
