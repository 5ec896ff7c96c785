"""``build_report``: classify a load's keys against the model's state dict and compute parameter coverage.

Coverage counts parameter *elements* per top-level module (buffers never count against it), a tied
tensor once, and as loaded when any of its names loaded.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model_state = {"w": nn.Parameter(torch.ones(2))}
    >>> report = build_report(model_state, {"w": torch.ones(2, dtype=torch.float64)}, prefix="net.")
    >>> report.loaded, report.cast
    (['net.w'], {'net.w': ('float64', 'float32')})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from transferkit.load_report.report import LoadReport, Shape

__all__ = ["build_report"]


def build_report(
    model_state: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    *,
    renamed: Mapping[str, str] | None = None,
    mismatched: Mapping[str, tuple[Shape, Shape]] | None = None,
    unexpected: Sequence[str] | None = None,
    prefix: str = "",
    notes: Sequence[str] = (),
    dropped: Sequence[str] = (),
    source: str = "",
    dry_run: bool = False,
) -> LoadReport:
    """Classify keys and compute coverage.

    Args:
        model_state: the model's ``state_dict(keep_vars=True)`` (parameters are ``nn.Parameter``).
        checkpoint: ``{model_key: tensor}`` of what will load (model-side names, shapes already checked);
            keys not in ``model_state`` become ``unexpected``.
        renamed / mismatched: already decided by the caller.
        unexpected: extra unexpected keys found by the caller.
        prefix: prepended to every key in the report (a module nested inside a bigger model).

    Returns:
        The :class:`LoadReport`.
    """
    mismatched = dict(mismatched or {})
    loaded = [k for k in checkpoint if k in model_state]
    extra = [k for k in checkpoint if k not in model_state]
    mismatched_rel = {k[len(prefix) :] for k in mismatched}
    taken = set(loaded) | mismatched_rel
    # tied weights (one tensor under several names, e.g. an embedding and an output layer): a checkpoint
    # that stores only one name (safetensors dedupes them) loads the others too; they are not missing
    through_alias = _loaded_through_alias(model_state, set(loaded))
    missing = [k for k in model_state if k not in taken and k not in through_alias]
    cast: dict[str, tuple[str, str]] = {}
    for k in loaded:
        src, dst = checkpoint[k], model_state[k]
        if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.dtype != dst.dtype:
            cast[prefix + k] = (str(src.dtype).replace("torch.", ""), str(dst.dtype).replace("torch.", ""))
    coverage, loaded_params, total_params = _coverage(model_state, set(loaded))
    return LoadReport(
        loaded=[prefix + k for k in loaded],
        renamed=dict(renamed or {}),
        mismatched=mismatched,
        missing=[prefix + k for k in missing],
        unexpected=[*(unexpected or ()), *(prefix + k for k in extra)],
        cast=cast,
        coverage=coverage,
        notes=list(notes),
        dropped=list(dropped),
        loaded_params=loaded_params,
        total_params=total_params,
        source=source,
        dry_run=dry_run,
    )


def _loaded_through_alias(model_state: Mapping[str, Any], loaded: set[str]) -> set[str]:
    """Keys not loaded themselves whose tensor is the very tensor of a loaded key (tied weights)."""
    loaded_ids = {id(model_state[k]) for k in loaded if isinstance(model_state.get(k), torch.Tensor)}
    return {
        k
        for k, v in model_state.items()
        if k not in loaded and isinstance(v, torch.Tensor) and id(v) in loaded_ids
    }


def _coverage(model_state: Mapping[str, Any], loaded: set[str]) -> tuple[dict[str, float], int, int]:
    """Fraction of parameter elements loaded per top-level module (one level down while there is only one).

    A tensor tied under several names counts once (under its first name), and counts as loaded when any
    of its names loaded.
    """
    loaded_ids = {id(model_state[k]) for k in loaded if k in model_state}
    params, seen = [], set()
    for key, value in model_state.items():
        if isinstance(value, nn.Parameter) and id(value) not in seen:
            seen.add(id(value))
            params.append((key, value.numel(), id(value) in loaded_ids))
    depth = 1
    # A wrapper such as an Adapter holds everything under one name ("backbone"); show its parts instead.
    while len({_group(k, depth) for k, _, _ in params}) == 1 and all(
        k.count(".") >= depth for k, _, _ in params
    ):
        depth += 1
    total: dict[str, int] = {}
    done: dict[str, int] = {}
    for key, n, is_loaded in params:
        group = _group(key, depth)
        total[group] = total.get(group, 0) + n
        done[group] = done.get(group, 0) + (n if is_loaded else 0)
    coverage = {group: (done[group] / n if n else 1.0) for group, n in total.items()}
    return coverage, sum(done.values()), sum(total.values())


def _group(key: str, depth: int) -> str:
    return ".".join(key.split(".")[:depth])
