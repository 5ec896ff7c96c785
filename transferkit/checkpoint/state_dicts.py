"""Finding and copying model weights: :func:`extract_state_dict` and :func:`snapshot_state`.

:func:`extract_state_dict` looks through whatever container the weights came in (conventional keys,
EMA copies, a transferkit training checkpoint, nested dicts and lists, modules) and raises instead of
guessing when there are several candidates (the search itself is in :mod:`.weight_search`), and
refuses tensor kinds no model parameter takes.

Example:
    >>> import torch
    >>> sorted(extract_state_dict({"model": {"w": torch.zeros(2)}, "optimizer": {}}))
    ['w']
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from transferkit.checkpoint._files import source_label
from transferkit.checkpoint.containers import key_text, mapping_items, short_list, unwrap_model
from transferkit.checkpoint.weight_search import find_weights
from transferkit.errors import CheckpointError, ConfigError

__all__ = ["extract_state_dict", "snapshot_state", "module_or_state"]

# one logger for the whole package: the CLI quiets "transferkit.checkpoint" by name and prints the name
logger = logging.getLogger("transferkit.checkpoint")


def _follow(obj: Any, key: str, label: str) -> tuple[Any, str]:
    """Walk the dotted path ``key``; a part may itself contain dots (``"module.fc"``), longest first."""
    parts = key.split(".")
    node, walked, i = obj, [], 0
    while i < len(parts):
        where = ".".join(walked) or "the top level"
        if isinstance(node, Mapping):
            for j in range(len(parts), i, -1):
                name = ".".join(parts[i:j])
                hit = name if name in node else int(name) if name.isdigit() and int(name) in node else None
                if hit is not None:
                    node, i = node[hit], j
                    walked.append(name)
                    break
            else:
                raise CheckpointError(
                    f"{label}: `key` {key!r}: no {parts[i]!r} at {where}; keys there: {short_list(list(node))}",
                    param="key",
                )
        elif isinstance(node, list | tuple) and parts[i].isdigit() and int(parts[i]) < len(node):
            node = node[int(parts[i])]
            walked.append(parts[i])
            i += 1
        else:
            raise CheckpointError(
                f"{label}: `key` {key!r}: {where} is a {type(node).__name__}, which has no {parts[i]!r}",
                param="key",
            )
    return node, ".".join(walked)


def extract_state_dict(
    obj: Any, key: str | None = None, *, return_key: bool = False
) -> dict[str, Tensor] | tuple[dict[str, Tensor], str | None]:
    """Find the model weights (a dict of named tensors) inside a loaded checkpoint.

    A plain state dict is returned as is. Otherwise the usual containers are tried: the model of a
    transferkit checkpoint, then ``state_dict``, ``model_state_dict``, ``model``, ``net``, ``network``,
    ``module``, ``weights``, ``params``, then the EMA copies (``ema``, ``model_ema``,
    ``state_dict_ema``). Failing those, the one tensor dict found anywhere outside optimizer/RNG
    entries. Several candidates (``modelA``/``modelB``, ``G``/``D``) raise instead of guessing.

    Args:
        obj: what :func:`load_checkpoint` returned (or any nested container, or an ``nn.Module``).
        key: dotted path to the weights, e.g. ``"state_dict"``, ``"models.G"``, ``"model.ema"``.
        return_key: also return the dotted path used (``None`` when ``obj`` itself is the state dict).

    Returns:
        The state dict, or ``(state_dict, key_path)`` with ``return_key=True``.

    Raises:
        CheckpointError: no tensors, several candidates (listed), or ``key`` does not exist.

    Example:
        >>> import torch
        >>> ckpt = {"epoch": 3, "net": {"fc.weight": torch.zeros(2, 2)}}
        >>> extract_state_dict(ckpt, return_key=True)[1]
        'net'
    """
    label = source_label(obj)
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"key must be a non-empty dotted path such as 'state_dict', got {key!r}")
        node, start = _follow(obj, key, label)
        state, where = find_weights(node, start, label)
    else:
        state, where = find_weights(obj, None, label)
    state = _checked(state, where, label)
    logger.info("%s: using the %d tensors at %s", label, len(state), where or "the top level")
    return (state, where) if return_key else state  # type: ignore[return-value]


def _checked(state: Mapping[str, Any], where: str | None, label: str) -> Mapping[str, Any]:
    """The state dict as plain data: exotic tensor kinds refused, attributes a pickle planted dropped.

    Nested and sparse tensors load into no ``nn.Module`` parameter, and would fail later with torch's own
    errors; an ``OrderedDict`` whose ``BUILD`` state shadowed ``items``/``keys`` is rebuilt (keeping a
    well-formed ``_metadata``, which ``load_state_dict`` uses for module versions).
    """
    exotic = [
        (k, "nested" if v.is_nested else str(v.layout).replace("torch.", ""))
        for k, v in mapping_items(state)
        if isinstance(v, Tensor) and (v.is_nested or v.layout != torch.strided)
    ]
    if exotic:
        shown = ", ".join(f"{key_text(k)} ({kind})" for k, kind in exotic[:5])
        raise CheckpointError(
            f"{label}: {len(exotic)} tensor(s) at {where or 'the top level'} are not dense tensors: {shown}; "
            "model weights are dense (strided) tensors. Convert them before saving (to_dense(), "
            "to_padded_tensor()) or drop them"
        )
    extra = getattr(state, "__dict__", None)
    if type(state) is dict or not isinstance(state, dict) or not extra:
        return state
    metadata = extra.get("_metadata")
    if set(extra) == {"_metadata"} and _plain_metadata(metadata):
        return state
    logger.warning(
        "%s: the state dict at %s carries attributes %s; they were dropped",
        label,
        where or "the top level",
        short_list(sorted(map(str, extra)), 120),
    )
    clean: OrderedDict[str, Any] = OrderedDict(mapping_items(state))
    if _plain_metadata(metadata):
        clean._metadata = metadata  # type: ignore[attr-defined]
    return clean


def _plain_metadata(value: Any) -> bool:
    """``{prefix: {"version": int}}``, as nn.Module.state_dict writes it."""
    return type(value) in (dict, OrderedDict) and all(
        isinstance(k, str) and type(v) is dict for k, v in dict.items(value)
    )


def module_or_state(obj: Any, caller: str) -> Mapping[str, Any]:
    """The state dict of a module (wrappers removed), or ``obj`` itself when it already is one."""
    if isinstance(obj, nn.Module):
        return unwrap_model(obj).state_dict()
    if isinstance(obj, Mapping):
        return obj
    raise ConfigError(f"{caller} takes an nn.Module or a state dict, got {type(obj).__name__}")


def snapshot_state(model_or_state_dict: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """A detached deep copy of a model's state, e.g. for "best so far" tracking.

    ``model.state_dict()`` returns tensors that share memory with the live parameters, so it keeps
    changing as training continues; this copy does not.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> best = snapshot_state(model)
        >>> with torch.no_grad():
        ...     _ = model.weight.add_(1.0)
        >>> bool(torch.equal(best["weight"], model.weight))
        False
    """
    source = module_or_state(model_or_state_dict, "snapshot_state")
    import copy

    return {k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in source.items()}
