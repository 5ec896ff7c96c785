"""What kind of file a checkpoint is, from its first bytes: the one sniffer every reader uses.

:func:`sniff_format` never raises and never trusts a suffix; each reader decides what to do with what it
says (:mod:`.reading` refuses what torch cannot read, :mod:`transferkit.salvage` picks its reader,
:mod:`transferkit.inspect` labels the file). The types and the checkpoint suffixes shared by the readers
live here too, so that nothing below :mod:`transferkit.checkpoint` needs its reading machinery.

Example:
    >>> sniff_format(b"PK\\x03\\x04", 4)
    'zip'
    >>> sniff_format(b"\\x80\\x02}q\\x00.", 6)
    'pickle'
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PathLike",
    "MapLocation",
    "CHECKPOINT_SUFFIXES",
    "HEAD_BYTES",
    "is_checkpoint_name",
    "read_head",
    "sniff_format",
    "safetensors_header_fits",
]

PathLike = str | os.PathLike

# where storages go, as torch.load's map_location: a device, a {saved: new} dict, or a callable
MapLocation = str | torch.device | Mapping[str, Any] | Callable[..., Any] | None

# names that folder listings and `transferkit scan DIR` treat as checkpoints (a hint, never a format test)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar", ".th", ".pkl", ".pickle")

HEAD_BYTES = 512  # enough for a tar header's "ustar" magic at offset 257

# torch.save before 1.6: PROTO 2, then LONG1 of 10 bytes holding the magic number
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a"

# Opcodes a protocol 0/1 pickle may start with (text and binary forms of values, MARK, GLOBAL, ...).
_OLD_PICKLE_STARTS = frozenset(b"(cN\x88\x89IJKLMFGSTUVXBC]})eh" + b"abdlpgqrst0123456789.")


def is_checkpoint_name(name: str | os.PathLike) -> bool:
    """Whether a file name carries one of :data:`CHECKPOINT_SUFFIXES` (case-insensitive)."""
    return os.fspath(name).lower().endswith(CHECKPOINT_SUFFIXES)


def read_head(source: str | Path) -> tuple[bytes, int]:
    """The file's first :data:`HEAD_BYTES` bytes and its size (``OSError`` passes through)."""
    with open(source, "rb") as f:
        return f.read(HEAD_BYTES), os.fstat(f.fileno()).st_size


def safetensors_header_fits(head: bytes, size: int) -> bool:
    """Whether a safetensors file's 8-byte header length fits in the file (else it is truncated)."""
    (header_len,) = struct.unpack("<Q", head[:8])
    return header_len <= size - 8


def sniff_format(head: bytes, size: int) -> str:
    """The kind of file whose first bytes are ``head`` (of ``size`` bytes in all).

    Returns one of ``"empty"``, ``"zip"`` (torch.save since 1.6, or any zip), ``"safetensors"`` (its
    header length may still not fit: see :func:`safetensors_header_fits`), ``"legacy"`` (torch.save before
    1.6), ``"tar"`` (the even older torch layout), ``"pickle"`` (protocol 2+ without the legacy magic, or a
    file that starts like a protocol 0/1 pickle: only a scan can tell) or ``"unknown"``.
    """
    if not head:
        return "empty"
    if head[:2] == b"PK":
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and not head.startswith(b"\x80"):
        return "safetensors"
    if head.startswith(_LEGACY_MAGIC):
        return "legacy"
    if head[257:262] == b"ustar":
        return "tar"
    if head[:1] == b"\x80" or head[0] in _OLD_PICKLE_STARTS:
        return "pickle"
    return "unknown"
