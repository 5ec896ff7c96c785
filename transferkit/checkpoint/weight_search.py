"""Finding the model weights inside whatever container they came in, without guessing.

:func:`find_weights` tries a transferkit training checkpoint's model, then the conventional keys
(``state_dict``, ``model``, ``net`` ... then the EMA copies), then the one tensor dict found anywhere
outside optimizer/RNG entries; several candidates are an error listing them. The search is bounded: each
container is visited once, to a fixed depth and a fixed number of entries (:class:`Walk`).

Example:
    >>> import torch
    >>> find_weights({"epoch": 3, "net": {"w": torch.zeros(2)}}, None, "ckpt.pt")[1]
    'net'
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from transferkit.checkpoint.containers import (
    key_text,
    mapping_items,
    mapping_keys,
    mapping_values,
    short_list,
    unwrap_model,
)
from transferkit.errors import CheckpointError

__all__ = ["Walk", "find_weights"]

# one logger for the whole package: the CLI quiets "transferkit.checkpoint" by name and prints the name
logger = logging.getLogger("transferkit.checkpoint")


# Keys under which people store model weights, most conventional first; the EMA copies come last so
# the raw weights win when both are present (the EMA alternative is logged).
_PRIMARY_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params")


_EMA_KEYS = ("ema", "model_ema", "state_dict_ema", "ema_state_dict")


# Keys that hold tensors which are not model weights (optimizer moments, RNG states, ...).
_NON_MODEL_KEYS = frozenset(
    {
        "optimizer",
        "optimizers",
        "optimizer_state_dict",
        "optimizer_states",
        "optim",
        "opt",
        "scheduler",
        "schedulers",
        "lr_scheduler",
        "lr_schedulers",
        "scaler",
        "grad_scaler",
        "amp",
        "rng",
        "rng_state",
        "rng_states",
        "meta",
        "extra",
        "callbacks",
        "loops",
        "hyper_parameters",
        "hparams",
        "args",
        "config",
        "metrics",
    }
)


_SEARCH_DEPTH = 4


class Walk:
    """The budget of one search through a loaded object: each container is visited once (a list that
    holds itself 100 times is one node, not 100^4), and at most ``limit`` entries are looked at."""

    limit = 1_000_000

    def __init__(self, label: str) -> None:
        self.label = label
        self.seen: set[int] = set()
        self.answers: dict[int, bool] = {}  # for _has_tensors
        self.entries = 0

    def first_visit(self, obj: Any) -> bool:
        """Whether ``obj`` (a container) is new to this walk; counts its entries against the budget."""
        if id(obj) in self.seen:
            return False
        self.seen.add(id(obj))
        self.entries += 1 + (len(obj) if isinstance(obj, Mapping | list | tuple) else 0)
        if self.entries > self.limit:
            raise CheckpointError(
                f"{self.label}: gave up looking for the weights after {self.limit:,} entries of nested "
                "containers (a checkpoint this large or this self-referencing is not a plain set of "
                "weights); pass key= to say where the weights are"
            )
        return True


def _is_state_dict(obj: Any) -> bool:
    # a module with get_extra_state() saves "<prefix>_extra_state" entries of any type beside its tensors
    if not isinstance(obj, Mapping) or len(obj) == 0:
        return False
    items = list(mapping_items(obj))
    return (
        all(isinstance(k, str) for k, _ in items)
        and all(isinstance(v, Tensor) or k.endswith("_extra_state") for k, v in items)
        and any(isinstance(v, Tensor) for _, v in items)
    )


def _has_tensors(obj: Any, walk: Walk, depth: int = 0) -> bool:
    """Whether ``obj`` holds a tensor within the search depth; answers are remembered per container, and a
    container met again on its own path (a cycle) adds nothing."""
    if isinstance(obj, Tensor | nn.Module):
        return True
    if depth >= _SEARCH_DEPTH or not isinstance(obj, Mapping | list | tuple):
        return False
    if id(obj) in walk.answers:
        return walk.answers[id(obj)]
    walk.first_visit(obj)
    walk.answers[id(obj)] = False
    values = mapping_values(obj) if isinstance(obj, Mapping) else obj
    walk.answers[id(obj)] = found = any(_has_tensors(v, walk, depth + 1) for v in list(values))
    return found


def _join(where: str | None, key: Any) -> str:
    return str(key) if where is None else f"{where}.{key}"


def _looks_like_optimizer(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "state" in obj and "param_groups" in obj


def _candidates(obj: Any, where: str | None, walk: Walk, depth: int = 0) -> list[tuple[str | None, Mapping]]:
    """Every tensor dict below ``obj`` that may be model weights, with its dotted path."""
    if isinstance(obj, Mapping | list | tuple) and not walk.first_visit(obj):
        return []  # reached before by another path (shared or self-referencing containers)
    if _is_state_dict(obj):
        return [(where, obj)]
    if depth >= _SEARCH_DEPTH or _looks_like_optimizer(obj):
        return []
    found: list[tuple[str | None, Mapping]] = []
    if isinstance(obj, Mapping):
        for key, value in list(mapping_items(obj)):
            if isinstance(key, str) and key.lower() in _NON_MODEL_KEYS:
                continue
            found.extend(_candidates(value, _join(where, key_text(key)), walk, depth + 1))
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            found.extend(_candidates(value, _join(where, index), walk, depth + 1))
    elif isinstance(obj, nn.Module):
        found.append((where, obj.state_dict()))
    return found


def find_weights(
    obj: Any, where: str | None, label: str, walk: Walk | None = None
) -> tuple[Mapping[str, Tensor], str | None]:
    """The model weights at or below ``obj`` (reached by the dotted path ``where``)."""
    walk = Walk(label) if walk is None else walk
    if isinstance(obj, nn.Module):
        return dict(unwrap_model(obj).state_dict()), where
    if _is_state_dict(obj):
        return obj, where
    if isinstance(obj, Tensor):
        raise CheckpointError(
            f"{label}: {where or 'the file'} is a single tensor of shape {tuple(obj.shape)}, not a dict of "
            "named tensors"
        )
    salvage = sys.modules.get("transferkit.salvage")  # no placeholder exists unless salvage was imported
    if salvage is not None and salvage.is_placeholder(obj):
        # a whole pickled module read by salvage: its recorded _parameters/_buffers are the weights
        state = salvage.module_state_dict(obj)
        if state:
            return state, where
    if not isinstance(obj, Mapping | list | tuple):
        raise CheckpointError(
            f"{label}: {where or 'the file'} holds a {type(obj).__name__!r} object, not a dict of named tensors"
        )
    if isinstance(obj, Mapping):
        entries = dict(mapping_items(obj)) if isinstance(obj, dict) else obj
        if str(entries.get("format", ""))[:40].startswith("transferkit.checkpoint") and isinstance(
            entries.get("models"), Mapping
        ):
            return _find_in_models(entries["models"], _join(where, "models"), label, walk)
        present = [k for k in _PRIMARY_KEYS + _EMA_KEYS if k in entries and _has_tensors(entries[k], walk)]
        if present:
            if len(present) > 1:
                others = ", ".join(repr(_join(where, k)) for k in present[1:])
                logger.info("%s: also holds %s; pass key= to use one of those instead", label, others)
            return find_weights(entries[present[0]], _join(where, present[0]), label, walk)
    found = _candidates(obj, where, walk)
    if len(found) == 1:
        return found[0][1], found[0][0]
    if found:
        listing = ", ".join(f"{path} ({len(sd)} tensors)" for path, sd in found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        raise CheckpointError(
            f"{label}: found {len(found)} model state dicts: {listing}{more}; pass key= to choose one, "
            f"e.g. key={found[0][0]!r}"
        )
    keys = mapping_keys(obj) if isinstance(obj, Mapping) else f"a {type(obj).__name__} of {len(obj)}"
    raise CheckpointError(
        f"{label}: no model weights (a dict of named tensors) found in {where or 'the file'}; it holds "
        f"{short_list(keys)}{_not_tensors(obj, walk)}"
    )


def _not_tensors(obj: Any, walk: Walk) -> str:
    """For a dict that is almost a state dict: which entries keep it from being one, and the fix."""
    if not isinstance(obj, Mapping) or not obj:
        return ""
    bad = [
        (k, v) for k, v in list(mapping_items(obj)) if not isinstance(v, Tensor) and not _has_tensors(v, walk)
    ]
    if not bad or len(bad) == len(obj) and not any(type(v).__module__ == "numpy" for _, v in bad):
        return ""
    shown = ", ".join(f"{short_list(k, 60)} ({type(v).__name__})" for k, v in bad[:4])
    numpy = any(type(v).__module__ == "numpy" for _, v in bad)
    fix = "convert them with torch.from_numpy" if numpy else "drop them (or replace them with tensors)"
    return f". {len(bad)} of its {len(obj)} entries are not tensors: {shown}; {fix} to load the weights"


def _find_in_models(models: Mapping, where: str, label: str, walk: Walk) -> tuple[Mapping[str, Tensor], str]:
    names = mapping_keys(models)
    if len(names) == 1:
        return find_weights(models[names[0]], _join(where, key_text(names[0])), label, walk)
    listing = ", ".join(_join(where, key_text(n)) for n in names[:10]) or "none"
    raise CheckpointError(
        f"{label}: a transferkit checkpoint with {len(models)} models ({listing}); pass key= to choose one, "
        f"e.g. key={_join(where, next(iter(models), 'model'))!r}"
    )
