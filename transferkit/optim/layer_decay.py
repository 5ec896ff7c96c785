"""Layer-wise learning-rate decay: a rate multiplier per parameter, falling layer by layer from the head.

Layers are timm's fine layers for a timm network or an adapter of one (the map timm's own
``param_groups_layer_decay`` uses), else the model's layer groups, one layer each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from transferkit.errors import ConfigError
from transferkit.optim.param_groups import group_layout

__all__ = ["layer_decay_scales"]


def _timm_network(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The timm network inside ``model`` (itself, or an adapter's ``backbone``) and its name prefix."""
    if callable(getattr(model, "group_matcher", None)):
        return model, ""
    inner = getattr(model, "backbone", None)
    if isinstance(inner, nn.Module) and callable(getattr(inner, "group_matcher", None)):
        return inner, "backbone."
    return None


def _layer_ids(model: nn.Module, groups: Mapping[str, Any] | None) -> tuple[dict[str, int], int]:
    """Parameter name -> layer index (0 = input side), and the number of layers."""
    names = [n for n, _ in model.named_parameters()]
    found = _timm_network(model) if groups is None else None
    if found is not None:
        from timm.models import group_parameters

        net, prefix = found
        # the layer map timm's own param_groups_layer_decay uses: its fine matcher, one block a layer
        layer_map = group_parameters(net, net.group_matcher(coarse=False), reverse=True)
        top = max(layer_map.values(), default=0)
        head = set(getattr(model, "head_parameter_names", lambda: [])())
        ids = {}
        for n in names:
            inner = n[len(prefix) :] if n.startswith(prefix) else n
            # the classifier trains at the full rate, wherever timm's matcher put it
            ids[n] = top if n in head else min(int(layer_map.get(inner, top)), top)
        return ids, top + 1
    fn = getattr(model, "layer_groups", None)
    if groups is None and not callable(fn):
        raise ConfigError(
            f"layer_decay needs a block structure, but {type(model).__name__} is not a timm network (no "
            "group_matcher) and has no layer_groups(); pass groups={'name': selector, ...} ordered from "
            "input to output, or build it with create_model"
        )
    layout = group_layout(model, groups, need_groups=True)
    ids = {n: i for i, members in enumerate(layout.values()) for n in members}
    return ids, len(layout)


def layer_decay_scales(
    model: nn.Module, factor: float, *, groups: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """Layer-wise learning-rate decay: each parameter's rate multiplier ``factor ** (layers above it)``.

    Layers are timm's fine layers for a timm network or an adapter of one (``group_matcher(coarse=False)``,
    the map timm's ``param_groups_layer_decay`` uses: the stem, then one layer a block); the classifier is
    the top layer, at the full rate. Other models use their layer groups (``groups=`` or
    ``layer_groups()``), one layer each. Every parameter gets a scale, trainable or not, so a group thawed
    later trains at its own layer's rate.

    Args:
        model: a timm network, an adapter, or any module with ``layer_groups()``.
        factor: the decay per layer, in (0, 1].
        groups: ``{group_name: selector}`` ordered input -> output, overriding the layers above.

    Raises:
        ConfigError: ``factor`` out of range, or a model with neither a timm matcher nor layer groups.

    Example:
        >>> class Net(nn.Sequential):
        ...     def layer_groups(self):
        ...         return {"a": ["0.weight"], "b": ["1.weight"], "head": ["2.weight"]}
        >>> net = Net(*(nn.Linear(2, 2, bias=False) for _ in range(3)))
        >>> layer_decay_scales(net, 0.5)
        {'0.weight': 0.25, '1.weight': 0.5, '2.weight': 1.0}
    """
    if not (isinstance(factor, int | float) and not isinstance(factor, bool) and 0 < factor <= 1):
        raise ConfigError(
            f"layer_decay must be in (0, 1] (each layer trains at the rate of the one above times it), "
            f"got {factor!r}"
        )
    ids, count = _layer_ids(model, groups)
    return {n: float(factor) ** (count - 1 - i) for n, i in ids.items()}
