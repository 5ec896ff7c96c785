"""Reading what a loaded checkpoint holds without trusting it, and the model inside training wrappers.

A pickle's ``BUILD`` can plant attributes named ``items``, ``keys`` or ``values`` on a mapping, and a
loaded object can be a DAG of shared (or self-referencing) lists: :func:`mapping_items` and friends read
past the first, :func:`short_list` describes the second in bounded text. :func:`unwrap_model` removes
DataParallel / DDP / ``torch.compile`` wrappers, for the loaders and the savers alike.

Example:
    >>> from collections import OrderedDict
    >>> odd = OrderedDict(a=1)
    >>> odd.items = "planted"
    >>> list(mapping_items(odd)), short_list(list(range(100)), 30)
    ([('a', 1)], '[0, 1, 2, 3, 4, 5, 6, 7, 8,...')
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["mapping_items", "mapping_values", "mapping_keys", "short_list", "key_text", "unwrap_model"]


def mapping_items(obj: Mapping) -> Any:
    """A mapping's items, read without calling anything the file could have replaced.

    A pickle's ``BUILD`` can give an ``OrderedDict`` instance attributes named ``items``, ``keys`` or
    ``values`` (torch's ``weights_only`` allows it), which shadow the methods; ``dict.items`` cannot be
    shadowed.
    """
    return dict.items(obj) if isinstance(obj, dict) else obj.items()


def mapping_values(obj: Mapping) -> Any:
    """A mapping's values, read as :func:`mapping_items` reads its items."""
    return dict.values(obj) if isinstance(obj, dict) else obj.values()


def mapping_keys(obj: Mapping) -> list[Any]:
    """A mapping's keys as a list, read as :func:`mapping_items` reads its items."""
    return list(dict.keys(obj) if isinstance(obj, dict) else obj.keys())


_REPR = reprlib.Repr()
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 12
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


def short_list(value: Any, limit: int = 200) -> str:
    # reprlib, not repr: a loaded object may be a DAG of shared lists that a full repr would expand
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def key_text(key: Any) -> str:
    return key if isinstance(key, str) and len(key) <= 200 else short_list(key, 60)


def unwrap_model(module: nn.Module, notes: list[str] | None = None) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers.

    Each wrapper taken off is described in ``notes`` when given (``load_partial`` reports them).
    """
    while True:
        if isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
            if notes is not None:
                notes.append(f"loaded into the module inside {type(module).__name__}")
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            if notes is not None:
                notes.append("loaded into the original module inside torch.compile's wrapper")
            module = module._orig_mod
        else:
            return module
