"""Saving weights alone: :func:`save_weights` writes a ``.safetensors`` or torch file atomically."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from transferkit.checkpoint.atomic import atomic_path, atomic_torch_save
from transferkit.checkpoint.containers import short_list
from transferkit.checkpoint.formats import PathLike
from transferkit.checkpoint.state_dicts import module_or_state
from transferkit.checkpoint.training import checked_save_path, to_weights_only
from transferkit.errors import CheckpointError, ConfigError

__all__ = ["save_weights"]

# one logger for the whole package: the CLI quiets "transferkit.checkpoint" by name and prints the name
logger = logging.getLogger("transferkit.checkpoint")


def _tensor_dict(state_dict_or_module: Any) -> dict[str, Tensor]:
    state = module_or_state(state_dict_or_module, "save_weights")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ConfigError(f"save_weights needs a dict of named tensors; not tensors: {short_list(bad)}")
    meta = [k for k, v in state.items() if v.is_meta]
    if meta:
        raise ConfigError(
            f"save_weights: {len(meta)} tensor(s) are on the meta device and hold no values (e.g. "
            f"{meta[0]!r}); materialise the model first (load weights with assign=True, or "
            "model.to_empty(device='cpu') and initialise it)"
        )
    return dict(state)


def save_weights(
    path: PathLike,
    state_dict_or_module: nn.Module | Mapping[str, Tensor],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save weights alone, atomically: ``.safetensors`` by suffix, else a torch file.

    For safetensors, tensors are moved to the CPU and made contiguous; tensors sharing memory (tied
    weights) are stored as separate copies so every name loads back; metadata values that are not
    strings are JSON-encoded. A torch file holds the plain state dict, or
    ``{"state_dict": ..., "meta": metadata}`` when metadata is given.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from transferkit.checkpoint import load_checkpoint
        >>> path = save_weights(Path(tempfile.mkdtemp()) / "m.safetensors", torch.nn.Linear(2, 1))
        >>> sorted(load_checkpoint(path))
        ['bias', 'weight']
    """
    path = checked_save_path(path)
    state = _tensor_dict(state_dict_or_module)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors: dict[str, Tensor] = {}
        seen: set[tuple[str, int]] = set()
        for name, tensor in state.items():
            t = tensor.detach().cpu()
            storage = (str(t.device), t.untyped_storage().data_ptr()) if t.numel() else None
            if storage is not None and storage in seen:
                t = t.clone()  # safetensors refuses tensors that share memory
            elif storage is not None:
                seen.add(storage)
            tensors[name] = t.contiguous()
        text_meta = {
            str(k): v if isinstance(v, str) else json.dumps(_plain_json(v))
            for k, v in (metadata or {}).items()
        }
        with atomic_path(path) as tmp:
            try:
                save_file(tensors, tmp, metadata=text_meta or None)
            except OSError:
                raise
            except Exception as err:
                raise CheckpointError(f"cannot write {path}: {type(err).__name__}: {err}") from err
    else:
        payload: Any = (
            state if not metadata else {"state_dict": state, "meta": to_weights_only(dict(metadata), "meta")}
        )
        atomic_torch_save(payload, path)
    logger.info("saved %d tensors to %s", len(state), path)
    return path


def _plain_json(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
