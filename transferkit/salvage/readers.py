"""The file readers and :func:`salvage_load`: torch zip files, legacy pre-1.6 torch files, plain pickles
and safetensors.

:func:`salvage_load` checks the path, tells the formats apart by their first bytes (:func:`_detect`),
hands the file to its reader and turns any parser failure into one :class:`CheckpointError` naming the
file (:func:`_describe`). The zip reader checks each storage member's size and compression ratio before
reading it; the legacy reader walks the pickle once with meta storages to learn what the raw bytes after
it must hold, then reads them and unpickles again; safetensors goes to the ordinary checkpoint reader.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from transferkit.checkpoint.formats import MapLocation, read_head, safetensors_header_fits, sniff_format
from transferkit.checkpoint.pickle_scan import LIMITS, read_capped, scan_pickle
from transferkit.checkpoint.safetensors_file import read_safetensors
from transferkit.errors import CheckpointError, TransferkitError
from transferkit.salvage.allowlist import Refused, StorageType, checked_int, typed_storage
from transferkit.salvage.devices import swap_bytes, to_device
from transferkit.salvage.placeholders import find_placeholders
from transferkit.salvage.unpickler import SalvageUnpickler, plain_load

__all__ = ["salvage_load"]

# One logger for the whole package: "transferkit.salvage" is what users see in CLI log lines.
logger = logging.getLogger("transferkit.salvage")

# Legacy (pre-1.6, non-zip) torch files start with these two pickled integers.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _read_member(archive: zipfile.ZipFile, name: str, nbytes: int) -> torch.Tensor:
    """The bytes of one storage member as a uint8 tensor, checked against the size the pickle declared."""
    try:
        member = archive.getinfo(name)
    except KeyError:
        raise Refused(f"the pickle refers to storage {name}, which the archive does not contain") from None
    if member.file_size != nbytes:
        raise Refused(f"storage {name} should hold {nbytes} bytes, the archive has {member.file_size}")
    if member.compress_type != zipfile.ZIP_STORED and LIMITS.inflates_too_much(member.compress_size, nbytes):
        raise Refused(f"storage {name} inflates {nbytes // max(member.compress_size, 1)}-fold: a zip bomb")
    buffer = bytearray(nbytes)
    with archive.open(member) as stream:  # zipfile checks the CRC once the member is read to its end
        got = stream.readinto(buffer)
        if got != nbytes or stream.read(1):
            raise Refused(f"storage {name} holds {got} bytes, expected {nbytes}")
    return torch.frombuffer(buffer, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)


def _read_pickle(archive: zipfile.ZipFile, name: str, path: Path) -> io.BytesIO:
    """``data.pkl``, streamed with a size cap and scanned within the budgets before anything unpickles it.

    Zip bombs (a member that inflates a thousand-fold), resource-exhaustion pickles (millions of
    opcodes, a huge memo) and shared-reference DAGs (6 KB describing 10^12 nodes) stop here.
    """
    member = archive.getinfo(name)
    if member.compress_type != zipfile.ZIP_STORED and LIMITS.inflates_too_much(
        member.compress_size, member.file_size
    ):
        raise Refused(f"{name} inflates {member.file_size // max(member.compress_size, 1)}-fold: a zip bomb")
    if member.file_size > LIMITS.pickle_bytes:
        raise Refused(f"{name} declares {member.file_size:,} bytes, more than a pickle may hold here")
    with archive.open(member) as stream:  # zipfile stops at the declared size and checks the CRC
        data = read_capped(stream, f"{path} ({name})")
    _budgets(data, f"{path} ({name})")
    return io.BytesIO(data)


def _budgets(data: bytes, what: str) -> None:
    """Run the static scan over one pickle's bytes; over a budget -> CheckpointError saying which."""
    scan_pickle(io.BytesIO(data), what=what)


def _load_zip(path: Path, map_location: MapLocation) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles and "data.pkl" in names:
            pickles = ["data.pkl"]  # re-zipped without the folder: storages then sit under data/
        if not pickles:
            raise Refused(
                f"it is a zip file without a torch data.pkl (members: {names[:5]}); not a torch checkpoint"
            )
        prefix = pickles[0][: -len("data.pkl")]
        big_endian = f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") == b"big"
        storages: dict[str, torch.UntypedStorage] = {}

        def persistent(pid: Any) -> Any:
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
                raise Refused(f"unexpected persistent id {str(pid)[:80]}")
            _, storage_type, key, location, numel = pid
            if not isinstance(storage_type, StorageType) or not isinstance(key, str):
                raise Refused(f"malformed storage reference {str(pid)[:80]}")
            nbytes = checked_int(numel, "storage size") * storage_type.dtype.itemsize
            if key not in storages:
                data = _read_member(archive, f"{prefix}data/{key}", nbytes)
                if big_endian != (sys.byteorder == "big"):
                    data = swap_bytes(data, storage_type.dtype.itemsize)
                storages[key] = to_device(data, str(location), map_location)
            elif storages[key].nbytes() != nbytes:  # the same storage seen again with another size
                raise Refused(
                    f"storage {key} should hold {nbytes} bytes, the archive has {storages[key].nbytes()}"
                )
            return typed_storage(storages[key], storage_type.dtype)

        return SalvageUnpickler(_read_pickle(archive, pickles[0], path), persistent).load()


def _load_legacy(path: Path, map_location: MapLocation) -> Any:
    """A pre-1.6 torch file: a header, the main pickle, a key list, then each storage's raw bytes."""
    raw = path.read_bytes()
    stream = io.BytesIO(raw)
    little = _legacy_header(stream, path)
    main_start = stream.tell()
    keys, declared = _legacy_declared(stream, len(raw))
    storages = _legacy_storages(stream, keys, declared, little, map_location)

    def resolve(pid: Any) -> Any:
        if pid[0] in ("module", b"module"):
            return pid[1]
        _, storage_type, key, _location, _numel, view = pid
        return _legacy_view(storages[key], storage_type.dtype, view)

    stream.seek(main_start)
    return SalvageUnpickler(stream, resolve).load()


def _legacy_header(stream: io.BytesIO, path: Path) -> bool:
    """Check the file's pickles against the budgets and read its header; whether its data is little-endian.

    Leaves the stream at the start of the main pickle.
    """
    for _ in range(5):  # magic, protocol, sys info, the main pickle, the key list: all within the budgets
        scan_pickle(stream, what=str(path))
    stream.seek(0)
    if plain_load(stream) != _LEGACY_MAGIC:
        raise Refused("not a legacy torch file (bad magic number)")
    if (version := plain_load(stream)) != _LEGACY_PROTOCOL:
        raise Refused(f"unsupported legacy protocol version {version!r}, expected {_LEGACY_PROTOCOL}")
    sys_info = plain_load(stream)
    return not (isinstance(sys_info, dict) and sys_info.get("little_endian") is False)


def _legacy_declared(
    stream: io.BytesIO, file_size: int
) -> tuple[list[str], dict[str, tuple[torch.dtype, int, str]]]:
    """Pass 1: the main pickle walked with meta storages, only to learn each storage's dtype, size and
    location; then the key list that follows it (the order of the raw bytes after it).

    Leaves the stream at the first storage's data.
    """
    declared: dict[str, tuple[torch.dtype, int, str]] = {}

    def declare(pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module") and len(pid) == 4:
            return pid[1]  # a whole-module pickle: the class (a placeholder) is the object itself
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise Refused(f"unexpected persistent id {str(pid)[:80]}")
        _, storage_type, key, location, numel, view = pid
        if not isinstance(storage_type, StorageType) or not isinstance(key, str):
            raise Refused(f"malformed storage reference {str(pid)[:80]}")
        nbytes = checked_int(numel, "storage size") * storage_type.dtype.itemsize
        if nbytes > file_size:  # the bytes must be in the file: refuse before allocating anything
            raise Refused(f"storage {key} claims {nbytes} bytes, more than the whole file ({file_size})")
        declared.setdefault(
            key,
            (storage_type.dtype, numel, location.decode() if isinstance(location, bytes) else str(location)),
        )
        return _legacy_view(torch.UntypedStorage(nbytes, device="meta"), storage_type.dtype, view)

    SalvageUnpickler(stream, declare).load()  # leaves the stream just after the main pickle
    keys = plain_load(stream)
    if not isinstance(keys, list) or set(keys) != set(declared):
        raise Refused("the storage key list does not match the storages the pickle refers to")
    return keys, declared


def _legacy_storages(
    stream: io.BytesIO,
    keys: list[str],
    declared: dict[str, tuple[torch.dtype, int, str]],
    little: bool,
    map_location: MapLocation,
) -> dict[str, torch.UntypedStorage]:
    """Pass 2: each storage's raw bytes, in key-list order, checked against what the pickle declared."""
    storages: dict[str, torch.UntypedStorage] = {}
    for key in keys:
        dtype, numel, location = declared[key]
        header = stream.read(8)
        if len(header) != 8:
            raise Refused(f"file ends before the data of storage {key}")
        (count,) = struct.unpack("<q" if little else ">q", header)
        if count != numel:
            raise Refused(f"storage {key} holds {count} elements, the pickle says {numel}")
        nbytes = count * dtype.itemsize
        chunk = stream.read(nbytes)
        if len(chunk) != nbytes:
            raise Refused(f"file ends inside the data of storage {key} ({len(chunk)} of {nbytes} bytes)")
        data = (
            torch.frombuffer(bytearray(chunk), dtype=torch.uint8)
            if chunk
            else torch.empty(0, dtype=torch.uint8)
        )
        if not little and sys.byteorder == "little" or little and sys.byteorder == "big":
            data = swap_bytes(data, dtype.itemsize)
        storages[key] = to_device(data, location, map_location)
    return storages


def _legacy_view(untyped: torch.UntypedStorage, dtype: torch.dtype, view: Any) -> torch.storage.TypedStorage:
    """Legacy files may refer to a slice ``(view_key, offset, size)`` of a root storage."""
    if view is None:
        return typed_storage(untyped, dtype)
    if not (isinstance(view, tuple) and len(view) == 3):
        raise Refused(f"malformed storage view {str(view)[:80]}")
    offset, size = checked_int(view[1], "view offset"), checked_int(view[2], "view size")
    start, stop = offset * dtype.itemsize, (offset + size) * dtype.itemsize
    if offset < 0 or size < 0 or stop > untyped.nbytes():
        raise Refused(f"storage view {offset}+{size} lies outside its storage")
    return typed_storage(untyped[start:stop], dtype)


def _detect(path: Path) -> str:
    """The reader to use (:func:`~transferkit.checkpoint.formats.sniff_format`), or ``Refused``."""
    head, size = read_head(path)
    kind = sniff_format(head, size)
    if kind == "empty":
        raise Refused("the file is empty")
    if kind == "safetensors" and not safetensors_header_fits(head, size):
        (header_len,) = struct.unpack("<Q", head[:8])
        raise Refused(
            f"a safetensors file whose header says {header_len} bytes but only {size - 8} "
            "follow its 8-byte length; it is truncated or damaged"
        )
    if kind in ("zip", "legacy", "safetensors", "pickle"):
        return kind  # a pickle: protocol 2+ (PROTO first) or 0/1; the scan checks the rest
    raise Refused(
        f"unrecognised format (starts with {head[:8]!r}); salvage reads torch zip files, legacy torch "
        "pickles, plain pickles and safetensors"
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return str(exc)
    if isinstance(exc, EOFError):
        return "the data ends early; the file looks truncated"
    if isinstance(exc, zipfile.BadZipFile | zipfile.LargeZipFile):
        return f"the zip archive is damaged ({exc})"
    if isinstance(exc, MemoryError):
        return "it declares sizes too large to allocate; the file is damaged"
    if isinstance(exc, RecursionError):
        return "it is nested too deeply to read"
    return f"the file is damaged or not a checkpoint ({type(exc).__name__}: {str(exc)[:200]})"


def salvage_load(path: str | os.PathLike[str], *, map_location: MapLocation = "cpu") -> Any:
    """Load a checkpoint without executing anything from it; unknown globals become :class:`Placeholder` s.

    Use it for files ``weights_only=True`` refuses only because of harmless extras. Tensors (and
    ``Parameter`` s) are rebuilt from the file's storages after bounds checks; ``OrderedDict``, ``set``,
    ``torch.Size``, dtypes and the like are real; any other object is a placeholder recording its name,
    arguments and state. Tensor subclasses come back as plain tensors and tensors' Python attributes and
    backward hooks are dropped.

    Args:
        path: a torch zip checkpoint (``.pt``, ``.pth``, ``.ckpt`` ...), a legacy pre-1.6 torch file, a
            plain pickle or a ``.safetensors`` file.
        map_location: where storages go, as in ``torch.load``: a device string or ``torch.device``, a dict
            mapping saved locations to new ones, a callable ``(storage, location) -> storage | None``, or
            ``None`` to keep the saved device.

    Returns:
        The unpickled object (usually a dict) with placeholders where globals were refused.

    Raises:
        CheckpointError: the file is missing, damaged, or asks for something salvage will not do; the
            message names the path and the reason.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "w.pt"
        >>> torch.save({"w": torch.zeros(3)}, path)
        >>> salvage_load(path)["w"].shape
        torch.Size([3])
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"cannot salvage {path}: no such file; check the path")
    if not path.is_file():
        raise CheckpointError(f"cannot salvage {path}: it is a directory, not a checkpoint file")
    readers = {"zip": _load_zip, "legacy": _load_legacy, "safetensors": read_safetensors}
    try:
        kind = _detect(path)
        if kind == "pickle":
            data = path.read_bytes()
            _budgets(data, str(path))
            result = SalvageUnpickler(io.BytesIO(data), None).load()
        else:
            result = readers[kind](path, map_location)
    except TransferkitError:
        raise
    except Exception as exc:  # every parser failure becomes one clear error naming the file
        raise CheckpointError(f"cannot salvage {path}: {_describe(exc)}") from exc
    replaced = find_placeholders(result)
    if replaced:
        logger.warning(
            "salvaged %s without running its code; %d global(s) replaced by inert placeholders: %s",
            path,
            len(replaced),
            ", ".join(replaced),
        )
    return result
