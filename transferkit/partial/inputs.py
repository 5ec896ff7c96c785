"""The two inputs of a load, checked before anything else: the model's state and the checkpoint's tensors.

:func:`resolve_source` turns whatever ``load_partial`` was given (a path, a module, a state dict or a
checkpoint dict) into a flat ``{key: tensor}`` dict; the checks here refuse what no later step could
handle: lazy parameters (no shapes to compare), keys that are not dotted names, and sparse tensors
(made dense, since copying one into a dense parameter fails mid-load).

Example:
    >>> import torch
    >>> from torch import nn
    >>> sorted(resolve_source(nn.Linear(2, 1), key=None, map_location="cpu", salvage=False, trusted=False))
    ['bias', 'weight']
    >>> describe_source({"weight": torch.ones(1)})
    'state dict'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from transferkit.checkpoint import extract_state_dict, load_checkpoint
from transferkit.errors import ConfigError
from transferkit.load_report import compact_keys

__all__ = ["describe_source", "resolve_source", "check_no_lazy", "check_state_keys", "make_dense"]


def describe_source(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    if isinstance(source, nn.Module):
        return f"module {type(source).__name__}"
    if isinstance(source, Mapping):
        return (
            "state dict" if all(isinstance(v, torch.Tensor) for v in source.values()) else "checkpoint dict"
        )
    return type(source).__name__


def _is_state_value(key: Any, value: Any) -> bool:
    # `get_extra_state()` values (any picklable object) sit in real state dicts next to the tensors
    return isinstance(value, torch.Tensor) or (isinstance(key, str) and key.endswith("_extra_state"))


def check_no_lazy(model_state: Mapping[str, Any]) -> None:
    """Refuse lazy (uninitialised) parameters up front: their shapes, which every check needs, are unknown."""
    lazy = [k for k, v in model_state.items() if isinstance(v, torch.Tensor) and is_lazy(v)]
    if lazy:
        raise ConfigError(
            f"the model has {len(lazy)} uninitialised lazy parameter(s) or buffer(s) "
            f"({', '.join(compact_keys(lazy)[:4])}); load_partial needs their shapes to match the checkpoint. "
            "Run one forward pass on a dummy input first, or use the non-lazy module (e.g. nn.Linear)"
        )


def check_state_keys(state: Mapping[Any, Any], description: str) -> None:
    """Refuse non-string keys up front (every rule, match and message works on dotted names)."""
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        shown = ", ".join(f"{k!r} ({type(k).__name__})" for k in bad[:4])
        raise ConfigError(
            f"the {description} has {len(bad)} key(s) that are not strings: {shown}; state dict keys are "
            "dotted parameter names such as 'layer1.0.conv1.weight'. Convert them first, e.g. "
            "{str(k): v for k, v in state.items()}, or drop them"
        )


def make_dense(state: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Sparse checkpoint tensors made dense: copying one into a dense parameter fails mid-load otherwise."""
    sparse = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.layout != torch.strided]
    if not sparse:
        return state
    out = dict(state)
    for k in sparse:
        out[k] = state[k].to_dense()
    notes.append(f"made {len(sparse)} sparse checkpoint tensor(s) dense: {', '.join(compact_keys(sparse))}")
    return out


def resolve_source(
    source: Any, *, key: str | None, map_location: Any, salvage: bool, trusted: bool
) -> dict[str, Any]:
    """Turn a path, module, state dict or checkpoint dict into a flat ``{key: tensor}`` dict."""
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, (str, os.PathLike)):
        obj = load_checkpoint(source, map_location=map_location, trusted=trusted, salvage=salvage)
        return dict(extract_state_dict(obj, key))
    if isinstance(source, Mapping):
        if key is None and all(_is_state_value(k, v) for k, v in source.items()):
            return dict(source)
        return dict(extract_state_dict(source, key))
    raise ConfigError(
        "load_partial source must be a path, a state dict, a checkpoint dict or an nn.Module; "
        f"got {type(source).__name__}"
    )
