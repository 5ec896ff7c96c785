"""Tied weights (several names, one tensor) through a load: noted when the checkpoint disagrees, kept tied.

A checkpoint may give the names of one tied tensor different values (:func:`note_tied_conflicts` says
which one stays), and ``assign=True`` sets each name to its own checkpoint tensor, which breaks the tie
(:func:`retie` restores it).

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    >>> model[1].weight = model[0].weight
    >>> tied_groups(model.state_dict(keep_vars=True))
    [['0.weight', '1.weight']]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from transferkit.load_report import LoadReport

__all__ = ["tied_groups", "note_tied_conflicts", "retie", "get_tensor"]


def tied_groups(model_state: Mapping[str, Any]) -> list[list[str]]:
    """Model keys that name one tensor object (tied weights), each group in state-dict order."""
    by_id: dict[int, list[str]] = defaultdict(list)
    for k, v in model_state.items():
        if isinstance(v, torch.Tensor):
            by_id[id(v)].append(k)
    return [keys for keys in by_id.values() if len(keys) > 1]


def note_tied_conflicts(report: LoadReport, fits: Mapping[str, Any], model_state: Mapping[str, Any]) -> None:
    """Say so when a checkpoint gives a tied tensor two different values: only one of them can stay."""
    for keys in tied_groups(model_state):
        given = [k for k in keys if isinstance(fits.get(k), torch.Tensor)]
        if len(given) < 2:
            continue
        first = fits[given[0]]
        differ = (
            [
                k
                for k in given[1:]
                if fits[k].shape != first.shape or not torch.equal(fits[k].to(first.dtype), first)
            ]
            if not first.is_meta
            else []
        )
        if differ:
            report.notes.append(
                f"tied weights {', '.join(given)} are one tensor in the model but differ in the checkpoint; "
                f"the value of {given[-1]!r} (loaded last) is the one kept"
            )


def retie(target: nn.Module, model_state: Mapping[str, Any]) -> None:
    """Restore weight tying that ``assign=True`` broke (it sets each name to its own checkpoint tensor).

    All names of a tied group are pointed at the tensor now held by the first of them that changed, so
    the model keeps one tensor per group, as it was built.
    """
    for keys in tied_groups(model_state):
        old = model_state[keys[0]]
        now = {k: get_tensor(target, k) for k in keys}
        if all(v is now[keys[0]] for v in now.values()):
            continue
        winner = next((now[k] for k in reversed(keys) if now[k] is not old), now[keys[0]])
        for k in keys:
            module_name, _, attr = k.rpartition(".")
            module = target.get_submodule(module_name) if module_name else target
            if attr in module._parameters:
                module._parameters[attr] = winner  # type: ignore[assignment]
            elif attr in module._buffers:
                module._buffers[attr] = winner


def get_tensor(target: nn.Module, key: str) -> Any:
    module_name, _, attr = key.rpartition(".")
    module = target.get_submodule(module_name) if module_name else target
    return module._parameters.get(attr, module._buffers.get(attr))
