"""A loaded checkpoint described as text: structure, weights, dtypes, devices, prefixes, metadata, optimizer.

:func:`describe_object` is the body of ``transferkit inspect``'s output. Everything here reads the object
defensively: it may be a salvaged pickle with placeholders, mappings with planted attributes, or
containers that hold themselves.

Example:
    >>> import torch
    >>> lines = describe_object({"epoch": 3, "model": {"w": torch.ones(2, 3)}})
    >>> lines[0], lines[3]
    ('structure:', "weights: at 'model': 1 tensors, 6 parameters, 0.0 KiB")
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from transferkit.checkpoint.containers import mapping_items, mapping_values
from transferkit.errors import CheckpointError
from transferkit.inspect.reading import format_label
from transferkit.load_report import compact_keys

__all__ = ["STAT_SUFFIXES", "describe_object"]


# Buffers that are not parameters: excluded from the parameter count.
STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_OPTIMIZER_KEYS = ("optimizer", "optimizers", "optimizer_states", "optimizer_state_dict", "optim", "opt")
_MAX_LINES = 40


def describe_object(
    obj: Any, *, key: str | None = None, devices: Mapping[str, int] | None = None, path: Path | None = None
) -> list[str]:
    """Describe a loaded checkpoint: structure, weights, dtypes, devices, prefixes, metadata, optimizer.

    Returns:
        Lines of text.
    """
    from transferkit.checkpoint import extract_state_dict

    if _is_weights(obj):
        lines = [f"structure: a plain state dict ({len(obj)} tensors)"]
    else:
        lines = ["structure:", *_tree(obj, depth=0)]
    try:
        state, where = extract_state_dict(obj, key, return_key=True)
    except CheckpointError as exc:
        if key is not None:
            raise  # a --key that names nothing is the caller's mistake, not a fact about the file
        lines.append(f"weights: not found ({exc})")
        return lines
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    elements = sum(v.numel() for v in tensors.values())
    params = sum(v.numel() for k, v in tensors.items() if not k.endswith(STAT_SUFFIXES))
    with_stats = f" ({elements:,} elements with BatchNorm statistics)" if elements != params else ""
    lines.append(
        f"weights: {'at ' + repr(where) if where else 'the top-level dict'}: {len(tensors)} tensors, "
        f"{params:,} parameters{with_stats}, {_bytes(tensors)}"
    )
    dtypes = Counter(str(v.dtype).replace("torch.", "") for v in tensors.values())
    lines.append("dtypes: " + ", ".join(f"{d} ({n})" for d, n in dtypes.most_common()))
    if path is not None and format_label(path) == "safetensors":
        lines.append("saved on: safetensors records no device (tensors load on the CPU)")
    elif devices:
        lines.append(
            "saved on: " + ", ".join(f"{d} ({n} storages)" for d, n in Counter(devices).most_common())
        )
    lines.append("key prefixes:")
    lines.extend(_prefixes(list(state)))
    lines.append("keys (grouped):")
    grouped = compact_keys(list(state))
    lines.extend("  " + k for k in grouped[:_MAX_LINES])
    if len(grouped) > _MAX_LINES:
        lines.append(f"  ... {len(grouped) - _MAX_LINES} more groups")
    lines.extend(_metadata(obj, where, path))
    lines.append(_optimizer(obj))
    return lines


def _bytes(tensors: Mapping[str, torch.Tensor]) -> str:
    n = sum(v.numel() * v.element_size() for v in tensors.values())
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _summary(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return f"tensor {value.item()!r} ({str(value.dtype).replace('torch.', '')})"
        return f"tensor {list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, Mapping):
        n_tensors = sum(isinstance(v, torch.Tensor) for v in list(mapping_values(value)))
        if value and n_tensors == len(value):
            return f"dict of {n_tensors} tensors"
        return f"dict ({len(value)} keys)"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, (int, float, bool, str)) or value is None:
        text = repr(value)
        return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
    stand_in = _placeholder(value)
    if stand_in is not None:
        return stand_in
    return type(value).__module__ + "." + type(value).__qualname__


def _placeholder(value: Any) -> str | None:
    """``Placeholder(__main__.Backbone)`` for a salvage stand-in (instance or class), else ``None``: its own
    type is a generated class in transferkit.salvage, which would look like a real transferkit class."""
    from transferkit.salvage import is_placeholder

    if is_placeholder(value):
        return f"Placeholder({value.target})"
    return None


def _label(name: Any) -> str:
    stand_in = _placeholder(name)  # e.g. Lightning keys its callbacks by class: the dotted name is the point
    if stand_in is not None:
        return stand_in
    return str(name) if len(str(name)) <= 60 else str(name)[:57] + "..."


def _is_weights(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in list(mapping_values(value)))
    )


def _tree(
    obj: Any, depth: int, max_depth: int = 2, max_items: int = 12, seen: set[int] | None = None
) -> list[str]:
    indent = "  " * (depth + 1)
    if not isinstance(obj, Mapping):
        return [f"{indent}{_summary(obj)}"]
    seen = set() if seen is None else seen
    seen.add(id(obj))
    lines = []
    items = list(mapping_items(obj))
    for name, value in items[:max_items]:
        label = _label(name)
        if isinstance(value, Mapping | list | tuple) and id(value) in seen:
            # a container shown already (shared, or the dict itself): once is enough
            lines.append(f"{indent}{label}: {_summary(value)} (shown above)")
            continue
        lines.append(f"{indent}{label}: {_summary(value)}")
        # weights and optimizer state are summarised on their own lines below; do not list them here
        expand = isinstance(value, Mapping) and not _is_weights(value) and not _is_optimizer(value)
        if expand and depth < max_depth:
            lines.extend(_tree(value, depth + 1, max_depth, max_items, seen))
    if len(items) > max_items:
        lines.append(f"{indent}... {len(items) - max_items} more")
    return lines


def _prefixes(keys: list[str]) -> list[str]:
    top = Counter(k.split(".", 1)[0] for k in keys)
    lines = []
    for name, n in list(top.items())[:_MAX_LINES]:
        second = Counter(".".join(k.split(".")[:2]) for k in keys if k.split(".", 1)[0] == name and "." in k)
        detail = ""
        if 1 < len(second) <= 12:
            detail = "  [" + ", ".join(f"{s.split('.', 1)[1]} ({c})" for s, c in second.items()) + "]"
        lines.append(
            f"  {name}{'.' if any(k.startswith(name + '.') for k in keys) else ''}  {n} tensors{detail}"
        )
    return lines


def _metadata(obj: Any, where: str | None, path: Path | None) -> list[str]:
    lines = []
    if isinstance(obj, Mapping) and not _is_weights(obj):
        skip = {(where or "").split(".", 1)[0], *_OPTIMIZER_KEYS}
        for name, value in list(mapping_items(obj)):
            if name in skip or isinstance(value, Mapping) and _is_optimizer(value):
                continue
            if isinstance(value, (int, float, str, bool)) or (
                isinstance(value, torch.Tensor) and value.dim() == 0
            ):
                lines.append(f"  {name}: {_summary(value)}")
            elif isinstance(value, Mapping) and name in (
                "meta",
                "hyper_parameters",
                "hparams",
                "config",
                "args",
            ):
                for sub, v in list(mapping_items(value))[:12]:
                    lines.append(f"  {name}.{sub}: {_summary(v)}")
    if path is not None and format_label(path) == "safetensors":
        from transferkit.checkpoint.safetensors_file import read_safetensors_metadata

        meta = read_safetensors_metadata(path)
        lines.extend(f"  {k}: {v[:80]}" for k, v in meta.items())
        if not meta:
            lines.append("  (the safetensors header has no metadata)")
    return ["metadata:", *lines] if lines else ["metadata: none"]


def _is_optimizer(value: Mapping[str, Any]) -> bool:
    return "state" in value and "param_groups" in value


def _optimizer(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return "optimizer state: none"
    found = []
    for name, value in list(mapping_items(obj)):
        candidates: list[tuple[str, Any]] = []
        if isinstance(value, Mapping) and _is_optimizer(value):
            candidates = [(str(name), value)]
        elif name in _OPTIMIZER_KEYS and isinstance(value, (list, tuple)):
            candidates = [
                (f"{name}[{i}]", v)
                for i, v in enumerate(value)
                if isinstance(v, Mapping) and _is_optimizer(v)
            ]
        elif name in _OPTIMIZER_KEYS and isinstance(value, Mapping):
            candidates = [
                (f"{name}.{k}", v)
                for k, v in list(mapping_items(value))
                if isinstance(v, Mapping) and _is_optimizer(v)
            ]
        for where, opt in candidates:
            state = opt["state"] if isinstance(opt["state"], Mapping) else {}
            slots = sorted(
                {str(s) for per in list(mapping_values(state)) if isinstance(per, Mapping) for s in per}
            )
            groups = opt["param_groups"] if isinstance(opt["param_groups"], list | tuple) else []
            lr = groups[0]["lr"] if groups and isinstance(groups[0], Mapping) and "lr" in groups[0] else None
            found.append(
                f"{where!r} ({len(groups)} param group(s), state for {len(state)} parameter(s)"
                f"{', slots ' + ', '.join(slots) if slots else ''}{f', lr {lr}' if lr is not None else ''})"
            )
    return "optimizer state: " + ("; ".join(found) if found else "none")
