"""Where storages go: ``map_location`` in every form ``torch.load`` accepts, and byte-order swaps.

:func:`to_device` moves the bytes of one storage (a CPU ``uint8`` tensor) to a device string or
``torch.device``, through a ``{saved: new}`` dict, or through the caller's own callable; a device that is
not available here is refused with a hint. :func:`swap_bytes` converts storages saved on a machine of the
other endianness.
"""

from __future__ import annotations

from typing import Any

import torch

from transferkit.checkpoint.formats import MapLocation
from transferkit.errors import CheckpointError
from transferkit.salvage.allowlist import Refused

__all__ = ["to_device", "swap_bytes"]


def to_device(data: torch.Tensor, location: str, map_location: MapLocation) -> torch.UntypedStorage:
    """Move the uint8 tensor ``data`` (on CPU) where ``map_location`` says; returns its untyped storage."""
    if callable(map_location) and not isinstance(map_location, torch.device):
        result = map_location(data.untyped_storage(), location)  # the caller's own function, not the file's
        if isinstance(result, torch.storage.TypedStorage):
            result = result._untyped_storage
        if isinstance(result, torch.UntypedStorage):
            return result
        if result is not None:
            raise CheckpointError(
                f"map_location returned a {type(result).__name__}; it must return a storage or None"
            )
        target: Any = location
    elif isinstance(map_location, dict):
        target = map_location.get(location, location)
    elif map_location is None:
        target = location
    else:
        target = map_location
    try:
        device = torch.device(target)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise Refused(f"storage location {target!r} is not a device: {exc}") from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise Refused(
            f"the file holds tensors saved on {device} but that device is not available here; "
            "pass map_location='cpu'"
        )
    return data.to(device).untyped_storage()


def swap_bytes(data: torch.Tensor, itemsize: int) -> torch.Tensor:
    return data.view(-1, itemsize).flip(1).reshape(-1) if itemsize > 1 else data
