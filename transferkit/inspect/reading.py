"""The file as read for a description: its format label, size, where its storages were saved, and the
globals an unsafe file needs -- all without running anything from it.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "w.pt"
    >>> torch.save({"w": torch.ones(2)}, path)
    >>> format_label(path)
    'zip torch file'
"""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from transferkit.errors import UnsafeCheckpointError

__all__ = ["record_devices", "header_line", "format_label", "describe_unsafe", "describe_salvaged"]

_MAX_GLOBALS = 20  # globals listed beyond the dangerous ones


def record_devices(devices: Counter[str]) -> Any:
    """A map_location that notes where each storage was saved and keeps it on the CPU."""

    def record(storage: Any, location: str) -> Any:
        devices[str(location)] += 1
        return storage

    return record


def _size(path: Path) -> str:
    n = path.stat().st_size
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"


def header_line(path: Path) -> str:
    return f"checkpoint: {path.name} ({_size(path)}, {format_label(path)})"


_FORMAT_LABELS = {
    "safetensors": "safetensors",
    "legacy": "legacy torch pickle (pre-1.6)",
    "tar": "legacy torch pickle (pre-1.6)",
}


def format_label(path: Path) -> str:
    from transferkit.checkpoint.formats import read_head, sniff_format

    try:
        if zipfile.is_zipfile(path):
            return "zip torch file"
        head, size = read_head(path)
    except (OSError, zipfile.BadZipFile, ValueError):
        return "unknown format"
    kind = sniff_format(head, size)
    if kind == "pickle":
        return "legacy torch pickle (pre-1.6)" if head[:1] == b"\x80" else "plain pickle (protocol 0/1)"
    return _FORMAT_LABELS.get(kind, "unknown format")


def describe_unsafe(path: Path, exc: UnsafeCheckpointError) -> list[str]:
    from transferkit.checkpoint import describe_unsafe_globals
    from transferkit.checkpoint.verdicts import DANGEROUS, classify_global

    names = list(exc.globals) or describe_unsafe_globals(path)
    verdicts = sorted((classify_global(n) for n in names), key=lambda v: v.kind != DANGEROUS)
    dangerous = [v for v in verdicts if v.kind == DANGEROUS]
    labels = {"data": "harmless data type", "unknown": "unknown class"}
    shown = dangerous + [v for v in verdicts if v.kind != DANGEROUS][:_MAX_GLOBALS]
    lines = [
        "refused by weights_only=True: the file needs globals beyond plain tensors and containers "
        "(nothing from it was executed)",
        f"globals it needs ({len(names)}, {len(dangerous)} dangerous):",
        *(
            f"  {v.name}  [{('DANGEROUS: ' + v.category) if v.kind == DANGEROUS else labels[v.kind]}]"
            for v in shown[:200]
        ),
    ]
    if len(names) > len(shown[:200]):
        lines.append(f"  ... and {len(names) - len(shown[:200])} more")
    if dangerous:
        lines.append(
            "DANGEROUS: do not load this file with trusted=True or allow-list these globals; to get the "
            "tensors out without running anything: `salvage`=True (load_checkpoint(..., salvage=True))"
        )
    else:
        lines.append(
            "to get the tensors out without running code: `salvage`=True "
            "(load_checkpoint(..., salvage=True)); "
            "a full unpickle (trusted=True) runs code from the file: only for files you trust"
        )
    return lines


def describe_salvaged(obj: Any) -> list[str]:
    from transferkit.salvage import find_placeholders

    found = find_placeholders(obj)
    return [f"salvaged: {len(found)} global(s) replaced by inert placeholders: {', '.join(found) or '-'}"]
