"""Replacing a network's classifier, and head surgery by label: keep the rows of classes the old head knew.

:func:`replace_head` puts a fresh head (and fresh auxiliary heads) with ``num_classes`` outputs in place,
initialised as the family's constructor does (:data:`~transferkit.backbones.heads.HEADS`); the rows of
classes the old head already had are copied over, reordered to the new labels (:func:`match_labels`).

Example:
    >>> import torchvision
    >>> net = torchvision.models.resnet18(num_classes=1000)
    >>> replace_head(net, 4)
    {}
    >>> net.fc.out_features
    4
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from transferkit.backbones.heads import HeadInfo, find_heads, get_module, set_module
from transferkit.errors import ConfigError

__all__ = [
    "validate_class_names",
    "new_head_like",
    "match_labels",
    "copy_rows",
    "replace_head",
    "replace_with_info",
]

# the name replace_head's log lines have always had (the CLI shows it)
logger = logging.getLogger("transferkit.backbones.heads")


def validate_class_names(class_names: Any) -> None:
    """Refuse labels that cannot name one class each: a bare string, a non-sequence, duplicates.

    Raises:
        ConfigError: naming the problem (the duplicated labels, say).
    """
    if isinstance(class_names, str | bytes) or not isinstance(class_names, Sequence):
        raise ConfigError(
            f"class_names must be a list of labels, one per class, e.g. ['cat', 'dog']; got "
            f"{type(class_names).__name__}: {class_names!r:.100}"
        )
    counts: dict[Any, int] = {}
    for label in class_names:
        if not isinstance(label, str | int) or isinstance(label, bool):
            raise ConfigError(
                f"class_names must be strings (or ints); got {label!r} ({type(label).__name__})"
            )
        counts[label] = counts.get(label, 0) + 1
    dupes = [label for label, n in counts.items() if n > 1]
    if dupes:
        raise ConfigError(
            f"class_names has duplicate labels {dupes[:5]!r}; each output of the head needs its own label"
        )


def new_head_like(
    old: nn.Module,
    num_classes: int,
    init: Callable[[nn.Module], None] | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """A fresh Linear or 1x1 Conv2d with ``num_classes`` outputs, like ``old`` (dtype, bias, device).

    Args:
        old: the head it replaces.
        num_classes: outputs of the new head.
        init: initialisation applied to the new head (skipped on the meta device).
        device: where to create it (default: the old head's device).

    Raises:
        ConfigError: the old head is neither a Linear nor a Conv2d.
    """
    w = old.weight
    bias = getattr(old, "bias", None) is not None
    kw = {"device": torch.device(device) if device is not None else w.device, "dtype": w.dtype}
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=bias, **kw)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(
            old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, bias=bias, **kw
        )
    else:
        raise ConfigError(
            f"cannot replace a classifier of type {type(old).__name__}: expected nn.Linear or nn.Conv2d; "
            "name the right layer with head_name=."
        )
    if hasattr(old, "stddev"):  # inception's per-layer init scale
        new.stddev = old.stddev
    if init is not None and new.weight.device.type != "meta":
        init(new)
    return new


def match_labels(class_names: Sequence[str], pretrained_classes: Sequence[str]) -> dict[int, int]:
    """``{new_index: old_index}`` for every new class whose label the old head also had.

    Labels compare case-insensitively, with ``_`` and ``-`` read as spaces (``"golden_retriever"`` matches
    ``"golden retriever"``).

    Example:
        >>> match_labels(["dog", "Cat", "emu"], ["cat", "dog", "fish"])
        {0: 1, 1: 0}
    """

    def norm(s: str) -> str:
        return " ".join(str(s).replace("_", " ").replace("-", " ").lower().split())

    old = {}
    for i, label in enumerate(pretrained_classes):
        old.setdefault(norm(label), i)
    return {i: old[norm(c)] for i, c in enumerate(class_names) if norm(c) in old}


def copy_rows(new: nn.Module, old_weight: Tensor, old_bias: Tensor | None, rows: Mapping[int, int]) -> None:
    """Copy the old head's rows into the new head: ``new[i] = old[rows[i]]``.

    Raises:
        ConfigError: shapes other than the class dimension differ, or an index is out of range.
    """
    if tuple(old_weight.shape[1:]) != tuple(new.weight.shape[1:]):
        raise ConfigError(
            f"head surgery needs the same input size: old head weight {tuple(old_weight.shape)}, "
            f"new {tuple(new.weight.shape)}"
        )
    for n, o in rows.items():
        if not (0 <= n < new.weight.shape[0] and 0 <= o < old_weight.shape[0]):
            raise ConfigError(
                f"head surgery row {n} <- {o} out of range: new head has {new.weight.shape[0]} classes, "
                f"old {old_weight.shape[0]}"
            )
    if not rows:
        return
    idx_new = torch.tensor(list(rows), dtype=torch.long)
    idx_old = torch.tensor(list(rows.values()), dtype=torch.long)
    with torch.no_grad():
        new.weight[idx_new] = old_weight[idx_old].to(new.weight)
        if new.bias is not None and old_bias is not None:
            new.bias[idx_new] = old_bias[idx_old].to(new.bias)


def _keep_rows(
    num_classes: int,
    keep: Mapping[int, int] | Sequence[int | None] | None,
    class_names: Sequence[str] | None,
    pretrained_classes: Sequence[str] | None,
) -> dict[int, int]:
    if keep is not None:
        if isinstance(keep, Mapping):
            return {int(k): int(v) for k, v in keep.items()}
        if len(keep) != num_classes:
            raise ConfigError(
                f"keep= as a sequence needs one entry per new class ({num_classes}), got {len(keep)}; "
                "use None for classes that start fresh, or pass a {new_index: old_index} dict."
            )
        return {i: int(o) for i, o in enumerate(keep) if o is not None}
    if class_names is not None and pretrained_classes is not None:
        if len(class_names) != num_classes:
            raise ConfigError(f"class_names has {len(class_names)} labels but num_classes is {num_classes}")
        return match_labels(class_names, pretrained_classes)
    return {}


def replace_head(
    model: nn.Module,
    num_classes: int,
    *,
    keep: Mapping[int, int] | Sequence[int | None] | None = None,
    class_names: Sequence[str] | None = None,
    pretrained_classes: Sequence[str] | None = None,
    head_name: str | None = None,
) -> dict[int, int]:
    """Replace a network's classifier (and auxiliary classifiers) in place, optionally keeping rows.

    Head surgery by label: the new head starts fresh, except the rows of classes the old head already
    knew, which are copied from the old head (reordered to the new label order).

    Args:
        model: a torchvision, timm or user network, or an :class:`~transferkit.backbones.Adapter`.
        num_classes: the new number of classes.
        keep: which old rows to keep: ``{new_index: old_index}``, or a sequence with one old index (or
            ``None``) per new class. Default: matched by label when ``class_names`` and
            ``pretrained_classes`` are both given, else nothing is kept.
        class_names: the new classes' labels (``num_classes`` of them).
        pretrained_classes: the old head's labels, e.g. torchvision ``weights.meta["categories"]``.
        head_name: the classifier's path, for networks the rules do not cover.

    Returns:
        ``{new_index: old_index}`` of the rows copied into the main head (aux heads get the same rows).

    Raises:
        ConfigError: the classifier cannot be found, or ``keep`` does not fit.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> replace_head(net, 2, keep=[2, None], head_name="1")
        {0: 2}
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"replace_head takes the network (an nn.Module), got {type(model).__name__}")
    if class_names is not None:
        validate_class_names(class_names)
    adapter = model if hasattr(model, "backbone") and hasattr(model, "_head_info") else None
    net = adapter.backbone if adapter is not None else model
    if adapter is not None and head_name is None:
        info = adapter._head_info
    else:
        info = find_heads(net, head_name)
    rows = _keep_rows(num_classes, keep, class_names, pretrained_classes)
    replace_with_info(net, info, num_classes, rows)
    if adapter is not None:
        adapter._after_head_change(num_classes, class_names)
    return rows


def replace_with_info(
    net: nn.Module, info: HeadInfo, num_classes: int, rows: Mapping[int, int] | None = None
) -> None:
    """Replace the heads :func:`find_heads` located, copying ``rows`` (``{new: old}``) from the old heads."""
    rows = dict(rows or {})
    old = get_module(net, info.main)
    old_w = old.weight.detach().clone() if rows else None
    old_b = old.bias.detach().clone() if rows and getattr(old, "bias", None) is not None else None
    if info.timm:
        net.reset_classifier(num_classes)
        new = net.get_classifier()
    else:
        new = new_head_like(old, num_classes, info.init)
        set_module(net, info.main, new)
    if rows:
        copy_rows(new, old_w, old_b, rows)
    for path in info.aux:
        old_aux = get_module(net, path)
        aux = new_head_like(old_aux, num_classes, info.init)
        if rows:
            aux_bias = old_aux.bias.detach() if getattr(old_aux, "bias", None) is not None else None
            copy_rows(aux, old_aux.weight.detach(), aux_bias, rows)
        set_module(net, path, aux)
    logger.info(
        "replaced %s.%s: %d classes, %d rows kept", type(net).__name__, info.main, num_classes, len(rows)
    )
