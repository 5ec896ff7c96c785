"""What a pickle-based checkpoint would import, and whether it is safe to hand to a reader, found
statically (nothing is imported or executed).

:func:`describe_unsafe_globals` is the public entry. :func:`scan_file` is what :mod:`.reading` runs
before ``torch.load``: it scans every pickle in the file within :data:`~.pickle_scan.LIMITS` (opcodes,
memo, bytes streamed with a cap, shared-reference expansion), and for zip files checks each storage
member's compression and declared size against what the pickle says, so a deflated member is never
memory-mapped (``torch.load(mmap=True)`` would read its compressed bytes as weights) and a storage
claiming 2^62 elements or a zip bomb is refused before any allocation. Formats: torch zip files
(``<name>/data.pkl``, and odd zips with ``data.pkl`` at the root), legacy pre-1.6 pickles, the even older
tar layout, and plain pickles of any protocol (0 and 1 included).
"""

from __future__ import annotations

import io
import mmap
import os
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from transferkit.checkpoint._files import check_file, detect_format, pinned
from transferkit.checkpoint.formats import PathLike
from transferkit.checkpoint.pickle_scan import LIMITS, PickleScan, read_capped, scan_pickle
from transferkit.errors import CheckpointError, TransferkitError

__all__ = ["describe_unsafe_globals"]

_ITEMSIZE = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
    "QUInt8Storage": 1,
    "QInt8Storage": 1,
    "QInt32Storage": 4,
    "QUInt4x2Storage": 1,
    "QUInt2x4Storage": 1,
    "UntypedStorage": 1,
}


@dataclass(frozen=True)
class FileScan:
    """What the static scan learned about one file."""

    kind: str  # "zip", "zip-root" (data.pkl at the root), "legacy", "tar", "pickle", "safetensors"
    globals: tuple[str, ...] = ()
    mmap_safe: bool = True  # every storage member is stored uncompressed
    compressed: int = 0  # storage members that are compressed
    protocol: int = 0


def describe_unsafe_globals(path: PathLike, *, allowed: Iterable[Any] = ()) -> list[str]:
    """The globals a file needs beyond what ``weights_only=True`` accepts, read without executing it.

    The pickle opcodes are scanned statically (``GLOBAL``, ``STACK_GLOBAL`` with its operands as the
    pickle machine would compute them, ``INST``, extension codes); nothing is imported or called. A
    ``STACK_GLOBAL`` whose operands are computed at load time is listed as ``"module.<computed>"``.
    :func:`transferkit.checkpoint.verdicts.classify_global` says which are dangerous.

    Args:
        path: a torch zip file, a legacy torch file (pickle or tar) or a plain pickle of any protocol
            (safetensors files have none).
        allowed: extra objects (or ``"module.Name"`` strings) to treat as allowed.

    Returns:
        Fully qualified names (``"module.Name"``) in order of first appearance; empty when the file
        loads with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, damaged, not a pickle-based checkpoint, or beyond the scan's
            budgets (a zip bomb, a resource-exhaustion pickle; the message says which).

    Example:
        >>> import tempfile, torch, collections
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "c.pt"
        >>> torch.save({"c": collections.namedtuple("P", "x")(1)}, path)  # doctest: +SKIP
        >>> describe_unsafe_globals(path)  # doctest: +SKIP
        ['__main__.P']
    """
    path = check_file(path)
    with pinned(path) as source:
        return unsafe_globals_in(path, source, allowed)


def unsafe_globals_in(
    path: Path, source: str, allowed: Iterable[Any], scan: FileScan | None = None
) -> list[str]:
    scan = scan_file(path, source) if scan is None else scan
    safe = _safe_global_names()
    for item in allowed:
        if isinstance(item, str):
            safe.add(item)
        else:
            safe.add(
                f"{getattr(item, '__module__', '')}.{getattr(item, '__qualname__', getattr(item, '__name__', ''))}"
            )
    return [name for name in scan.globals if name not in safe]


def scan_file(path: Path, source: str | None = None) -> FileScan:
    """Scan every pickle of the file within the budgets; CheckpointError when it is damaged or hostile."""
    source = str(path) if source is None else source
    kind = detect_format(path, source)
    if kind == "safetensors":
        return FileScan(kind)
    try:
        if kind == "zip":
            return _scan_zip(path, source)
        if kind == "legacy" and tarfile.is_tarfile(source):
            return _scan_tar(path, source)
        return _scan_pickles(path, source, kind)
    except TransferkitError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot scan its pickle for globals; it is damaged ({type(err).__name__}: {err})"
        ) from err


def _safe_global_names() -> set[str]:
    try:  # private torch API, the same source torch.serialization.get_unsafe_globals_in_checkpoint uses
        from torch import _weights_only_unpickler as wou

        return set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except Exception:  # pragma: no cover - torch internals moved: report every global instead
        return set()


def _check_ratio(path: Path, info: zipfile.ZipInfo) -> None:
    if info.compress_type != zipfile.ZIP_STORED and LIMITS.inflates_too_much(
        info.compress_size, info.file_size
    ):
        raise CheckpointError(
            f"{path}: the zip member {info.filename} inflates {info.file_size // max(info.compress_size, 1):,}"
            f"-fold ({info.compress_size:,} -> {info.file_size:,} bytes): a zip bomb, not weights. Nothing was "
            "read from it"
        )


def _scan_zip(path: Path, source: str) -> FileScan:
    with zipfile.ZipFile(source) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        pickles = [name for name in infos if name.endswith(".pkl")]
        main = next((n for n in pickles if n.endswith("/data.pkl") and n.count("/") == 1), None)
        root = main is None and "data.pkl" in infos
        main = "data.pkl" if root else main
        if main is None:
            shown = ", ".join(list(infos)[:5]) or "none"
            raise CheckpointError(
                f"{path}: a zip archive but not a PyTorch checkpoint (no data.pkl inside; members: {shown})"
            )
        found: dict[str, None] = {}
        scans: dict[str, PickleScan] = {}
        for name in pickles:
            _check_ratio(path, infos[name])
            with archive.open(infos[name]) as stream:  # zipfile stops at the declared size
                data = read_capped(stream, f"{path} ({name})")
            scans[name] = scan_pickle(io.BytesIO(data), what=f"{path} ({name})")
            found.update(dict.fromkeys(scans[name].globals))
        prefix = main[: -len("data.pkl")]
        compressed = _check_storages(path, infos, prefix, scans[main], os.path.getsize(source))
    return FileScan(
        "zip-root" if root else "zip",
        tuple(found),
        mmap_safe=compressed == 0,
        compressed=compressed,
        protocol=scans[main].protocol,
    )


def _check_storages(
    path: Path, infos: dict[str, zipfile.ZipInfo], prefix: str, scan: PickleScan, size: int
) -> int:
    """Check each storage the pickle names against its zip member; the number of compressed members."""
    for key, kind, numel in scan.storages:
        info = infos.get(f"{prefix}data/{key}")
        itemsize = _ITEMSIZE.get(kind)
        if info is None or itemsize is None:
            continue  # torch's own reader names a missing member
        if numel < 0 or numel * itemsize > info.file_size:
            raise CheckpointError(
                f"{path}: storage {key} claims {numel:,} elements ({numel * itemsize:,} bytes) but its zip "
                f"member holds {info.file_size:,} bytes; the file is damaged or crafted. Nothing was read"
            )
        if (
            size is not None
            and info.compress_type == zipfile.ZIP_STORED
            and info.header_offset + info.file_size > size
        ):
            raise CheckpointError(
                f"{path}: storage {key} lies beyond the end of the file; the file is truncated or crafted"
            )
    storage_members = [i for n, i in infos.items() if n.startswith(f"{prefix}data/")]
    for info in storage_members:
        _check_ratio(path, info)
    return sum(i.compress_type != zipfile.ZIP_STORED for i in storage_members)


def compressed_storages(source: str) -> int:
    """How many storage members of a torch zip are compressed (what a full scan also counts)."""
    with zipfile.ZipFile(source) as archive:
        return sum(
            "/data/" in f"/{i.filename}" and i.compress_type != zipfile.ZIP_STORED for i in archive.infolist()
        )


def _scan_pickles(path: Path, source: str, kind: str) -> FileScan:
    # A legacy torch file is five pickles (magic, protocol, sys info, the object, storage keys) followed
    # by raw storage bytes; a plain pickle is one. Scan pickles until the stream stops being one.
    found: dict[str, None] = {}
    declared = 0
    protocol = 0
    with open(source, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as stream:
        # an mmap reads like a file, but a declared length beyond the end returns what is there
        size = len(stream)
        for index in range(5 if kind == "legacy" else 1):
            start = stream.tell()
            if not stream.read(1):
                break
            stream.seek(start)
            scan = scan_pickle(stream, what=str(path))
            found.update(dict.fromkeys(scan.globals))
            if index in (0, 3):
                protocol = protocol or scan.protocol
            itemsizes = (_ITEMSIZE.get(kind_, 1) * max(n, 0) for _, kind_, n in scan.storages)
            declared += sum(itemsizes)
            if kind == "legacy" and index == 0 and not _starts_legacy(source):
                break  # a plain pickle that happens to start with PROTO: one pickle, no storages after it
    if declared > size:
        raise CheckpointError(
            f"{path}: its storages declare {declared:,} bytes but the whole file has {size:,}; it is damaged "
            "or crafted. Nothing was read"
        )
    return FileScan(
        kind if kind == "pickle" or _starts_legacy(source) else "pickle", tuple(found), protocol=protocol
    )


def _starts_legacy(source: str) -> bool:
    with open(source, "rb") as stream:
        return stream.read(4) == b"\x80\x02\x8a\x0a"  # PROTO 2, LONG1 of 10 bytes: the magic number


def _scan_tar(path: Path, source: str) -> FileScan:
    """The tar layout of torch before 0.4: members ``sys_info``, ``pickle``, ``storages``, ``tensors``."""
    found: dict[str, None] = {}
    with tarfile.open(source, mode="r:") as archive:
        members = archive.getmembers()[:16]
        for member in members:
            if member.name not in ("pickle", "sys_info") or not member.isfile():
                continue
            stream: BinaryIO | None = archive.extractfile(member)
            if stream is None:
                continue
            data = read_capped(stream, f"{path} ({member.name})")
            found.update(dict.fromkeys(scan_pickle(io.BytesIO(data), what=f"{path} ({member.name})").globals))
    if not found and not any(m.name == "pickle" for m in members):
        raise CheckpointError(f"{path}: a tar archive but not a legacy torch checkpoint (no 'pickle' member)")
    return FileScan("tar", tuple(found))
