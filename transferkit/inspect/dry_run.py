"""Dry runs for ``inspect``: what a load into a model (or into another checkpoint's layout) would do.

The target is a meta-device build of a backbone (:func:`build_meta_model`), any ``nn.Module``, or a
:func:`skeleton_from_state_dict` of another checkpoint; :func:`dry_run_report` runs ``load_partial`` with
``dry_run=True`` and returns its report as text, and whether the load would fail.

Example:
    >>> import torch
    >>> target = skeleton_from_state_dict({"w": torch.ones(2)})
    >>> text, fails = dry_run_report(target, {"w": torch.zeros(3)}, rules=[])
    >>> fails
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from transferkit.errors import LoadError
from transferkit.inspect.description import STAT_SUFFIXES
from transferkit.load_report import LoadReport
from transferkit.partial import load_partial
from transferkit.rename import Rule, strip_wrappers

__all__ = ["skeleton_from_state_dict", "build_meta_model", "load_target", "dry_run_report"]


def skeleton_from_state_dict(state: Mapping[str, Any]) -> nn.Module:
    """A meta-device module with one parameter (or buffer, for BatchNorm statistics) per state-dict entry.

    Lets a checkpoint stand in for a model in a dry run (``inspect --against``) without allocating.

    Example:
        >>> m = skeleton_from_state_dict({"0.weight": torch.ones(2, 3), "0.running_mean": torch.zeros(2)})
        >>> m.state_dict()["0.weight"].shape, m.state_dict()["0.weight"].is_meta
        (torch.Size([2, 3]), True)
    """
    root = nn.Module()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        *path, leaf = key.split(".")
        module = root
        for part in path:
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        tensor = torch.empty(value.shape, dtype=value.dtype, device="meta")
        if key.endswith(STAT_SUFFIXES) or not tensor.is_floating_point():
            module.register_buffer(leaf, tensor)
        else:
            module.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
    return root


def build_meta_model(name: str, num_classes: int) -> nn.Module:
    from transferkit.backbones import create_model

    # Built on the meta device: the layout and shapes without allocating or initialising any weight.
    with torch.device("meta"):
        return create_model(name, num_classes, weights=None)


def load_target(adapter: nn.Module, state: Mapping[str, Any]) -> nn.Module:
    """The module ``create_model(weights=...)`` would load this checkpoint into.

    A checkpoint in the network's own layout (``features.0.weight``) loads into the network inside the
    Adapter, so the report reads in the checkpoint's names; one saved from an Adapter
    (``backbone.features.0.weight``) loads into the Adapter itself.
    """
    inner = getattr(adapter, "backbone", None)
    if not isinstance(inner, nn.Module):
        return adapter
    adapter_layout = any(strip_wrappers(str(k)).startswith("backbone.") for k in state)
    return adapter if adapter_layout else inner


def dry_run_report(
    target: nn.Module, state: Mapping[str, Any], rules: Sequence[Rule], source: str = "", align: str = "auto"
) -> tuple[str, bool]:
    """The dry run's report as text, and whether the load would fail."""
    try:
        report: LoadReport = load_partial(target, dict(state), rules=rules, dry_run=True, align=align)
    except LoadError as exc:
        report = getattr(exc, "report", None)  # type: ignore[assignment]
        if report is None:
            return f"a load would fail: {exc}", True
        report.source = source or report.source
        return f"{report}\na load would fail: {str(exc).splitlines()[0]}", True
    report.source = source or report.source
    return str(report), False
