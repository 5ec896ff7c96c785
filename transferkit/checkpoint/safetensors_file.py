"""Reading a ``.safetensors`` file: no pickle, no code, so every reader may use it as it is.

:func:`load_checkpoint` and :func:`transferkit.salvage.salvage_load` both read safetensors through
:func:`read_safetensors`, which honours every ``map_location`` form (device, dict, callable).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from transferkit.checkpoint._files import remember_source
from transferkit.checkpoint.formats import MapLocation
from transferkit.errors import CheckpointError

__all__ = ["read_safetensors", "read_safetensors_metadata"]


def read_safetensors(path: Path, map_location: MapLocation, source: str | None = None) -> dict[str, Tensor]:
    """The tensors of the safetensors file at ``path`` (read through ``source`` when given), moved."""
    from safetensors.torch import load_file

    device: Any = "cpu"
    if isinstance(map_location, str | torch.device):
        device = str(map_location)
    elif isinstance(map_location, Mapping):
        device = str(map_location.get("cpu", "cpu"))
    try:
        tensors = load_file(str(path if source is None else source), device=device)
    except Exception as err:  # SafetensorError, OSError, ...: one clear error
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({type(err).__name__}: {err})"
        ) from err
    if callable(map_location) and not isinstance(map_location, Mapping):
        for name, tensor in tensors.items():
            moved = map_location(tensor.untyped_storage(), "cpu")
            if isinstance(moved, torch.UntypedStorage) and moved.device != tensor.device:
                tensors[name] = tensor.to(moved.device)
    remember_source(tensors, path)
    return tensors


def read_safetensors_metadata(path: Path | str) -> dict[str, str]:
    """The string metadata of a safetensors file's header (``{}`` when it has none); reads no tensor.

    Raises:
        CheckpointError: ``path`` is not a readable safetensors file.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # SafetensorError, OSError, ...: one clear error
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({type(err).__name__}: {err})"
        ) from err
