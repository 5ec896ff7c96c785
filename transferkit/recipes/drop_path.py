"""Drop-path (stochastic depth) for timm backbones: ``drop_path_rate`` at creation, checked afterwards.

timm models take ``drop_path_rate`` in their constructor and spread it over their blocks (linearly rising
with depth in most families). torchvision builders have no such argument, so a rate for one is an error;
a ``module:callable`` factory gets it when its signature names ``drop_path_rate``.

Example:
    >>> drop_path_kwargs("timm:test_convnext", 0.1)
    {'drop_path_rate': 0.1}
    >>> drop_path_kwargs("resnet18", None)
    {}
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from torch import nn

from transferkit.errors import ConfigError

__all__ = ["drop_path_kwargs", "drop_path_layers", "check_drop_path"]


def drop_path_kwargs(backbone: str, rate: float | None) -> dict[str, Any]:
    """The builder keyword arguments that give ``backbone`` drop-path ``rate`` (none for ``None``/0).

    Raises:
        ConfigError: a rate outside [0, 1), or a backbone whose builder cannot take it.
    """
    if rate is None:
        return {}
    if not (isinstance(rate, int | float) and math.isfinite(rate) and 0 <= rate < 1):
        raise ConfigError(f"drop-path rate must be a number in [0, 1), e.g. 0.1, got {rate!r}")
    if rate == 0:
        return {}
    from transferkit.backbones.registry import resolve_backbone

    spec = resolve_backbone(backbone)
    if spec.source == "timm":
        return {"drop_path_rate": float(rate)}
    if spec.source == "user":
        try:
            params = inspect.signature(spec.builder).parameters
        except (TypeError, ValueError):
            params = {}
        if "drop_path_rate" in params:
            return {"drop_path_rate": float(rate)}
        raise ConfigError(
            f"drop-path {rate:g}: the factory {backbone!r} takes no drop_path_rate argument; add one to its "
            "signature (and pass it to your blocks), or drop the option"
        )
    raise ConfigError(
        f"drop-path {rate:g}: {backbone!r} is a torchvision backbone, whose builders take no drop_path_rate; "
        "use a timm backbone (timm:NAME, e.g. timm:convnext_tiny) or drop the option"
    )


def drop_path_layers(model: nn.Module) -> list[tuple[str, float]]:
    """``(module name, drop probability)`` of every timm ``DropPath`` in ``model``.

    Example:
        >>> import timm
        >>> len(drop_path_layers(timm.create_model("test_convnext", drop_path_rate=0.1))) > 0
        True
    """
    from timm.layers import DropPath

    return [(n, float(m.drop_prob)) for n, m in model.named_modules() if isinstance(m, DropPath)]


def check_drop_path(model: nn.Module, backbone: str, rate: float | None) -> str:
    """Make sure a model built with drop-path ``rate`` really drops paths; returns a line for the records.

    Raises:
        ConfigError: ``rate > 0`` but the model has no active ``DropPath`` layer (its family ignores
            ``drop_path_rate``).
    """
    if not rate:
        return "off"
    layers = [(n, p) for n, p in drop_path_layers(model) if p > 0]
    if not layers:
        raise ConfigError(
            f"drop-path {rate:g}: {backbone!r} was built with drop_path_rate={rate:g} but has no active "
            "DropPath layer (its family ignores the argument); drop the option for this backbone"
        )
    top = max(p for _, p in layers)
    return f"rate {rate:g}: {len(layers)} DropPath layers, up to {top:.3g}"
