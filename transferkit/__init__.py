"""transferkit: transfer learning on PyTorch.

Adapters for pretrained torchvision and timm backbones, partial checkpoint loading that says exactly
what happened, freeze/unfreeze schedules that resume exactly, and safe atomic checkpoints.

Public names are resolved lazily (PEP 562), so ``import transferkit`` stays cheap and each submodule
is imported the first time one of its names is used.

Example:
    >>> import transferkit
    >>> "load_partial" in transferkit.__all__
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "TransferkitError": "errors",
    "CheckpointError": "errors",
    "UnsafeCheckpointError": "errors",
    "LoadError": "errors",
    "ConfigError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"transferkit.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from transferkit.errors import (  # noqa: F401
        CheckpointError,
        ConfigError,
        LoadError,
        TransferkitError,
        UnsafeCheckpointError,
    )
