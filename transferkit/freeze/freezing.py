"""Freeze and thaw: ``requires_grad`` on the selected parameters, with the BatchNorm policy applied.

:func:`freeze` and :func:`unfreeze` take selectors (:mod:`transferkit.freeze.selectors`);
:func:`freeze_backbone` freezes everything but an adapter's head. Parameters are handled by identity: a
weight shared by two modules is one parameter, reported under its first name.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> freeze(model, "0"), [n for n, _ in trainable_parameters(model)]
    (['0.weight', '0.bias'], ['1.weight', '1.bias'])
"""

from __future__ import annotations

import logging

from torch import nn

from transferkit.errors import ConfigError
from transferkit.freeze.batchnorm import bn_owners, convert_frozen_bn, frozen_bn_layers, lock_bn, unlock_bn
from transferkit.freeze.selectors import (
    Selector,
    canonical_names,
    check_model,
    layer_groups_of,
    select_parameters,
)

__all__ = ["freeze", "unfreeze", "head_parameter_names", "freeze_backbone", "trainable_parameters"]

logger = logging.getLogger("transferkit.freeze")


def freeze(model: nn.Module, *selectors: Selector, train_bn: bool = False, bn: str = "eval") -> list[str]:
    """Set ``requires_grad=False`` on the selected parameters (all of them when no selector is given).

    Args:
        model: any module; adapter layer-group names work when it has ``layer_groups()``.
        *selectors: what to freeze (see the module docstring).
        train_bn: keep BatchNorm layers in the frozen part training (their affine terms stay frozen but
            they normalise with batch statistics and update running statistics). Default: BN is frozen too.
        bn: ``"eval"`` keeps fully frozen BN layers in eval mode across ``model.train()`` (reversible);
            ``"frozen"`` converts BatchNorm2d layers to ``FrozenBatchNorm2d`` (permanent).

    Returns:
        Names of the parameters that were trainable and are now frozen.

    Raises:
        ConfigError: an unknown selector or ``bn`` value.

    Example:
        >>> freeze(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), "0")
        ['0.weight', '0.bias']
    """
    if bn not in ("eval", "frozen"):
        raise ConfigError(f"bn must be 'eval' or 'frozen', got {bn!r}")
    check_model(model, "freeze")
    names = select_parameters(model, *selectors)
    params = dict(model.named_parameters())
    changed = [n for n in names if params[n].requires_grad]
    for n in names:
        params[n].requires_grad_(False)
    chosen = set(names)
    if train_bn:
        for _, module, owned in bn_owners(model):
            if any(n in chosen for n in owned):
                unlock_bn(module, model.training)
    elif bn == "frozen":
        convert_frozen_bn(model, *selectors)
    else:
        for _, module in frozen_bn_layers(model, chosen):
            lock_bn(module)
    logger.debug("froze %d parameters (%d changed)", len(names), len(changed))
    return changed


def unfreeze(model: nn.Module, *selectors: Selector) -> list[str]:
    """Set ``requires_grad=True`` on the selected parameters and let their BatchNorm layers train again.

    Args:
        model: any module.
        *selectors: what to thaw (all parameters when none is given).

    Returns:
        Names of the parameters that were frozen and are now trainable.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> _ = freeze(m)
        >>> unfreeze(m, "1")
        ['1.weight', '1.bias']
    """
    check_model(model, "unfreeze")
    names = select_parameters(model, *selectors)
    params = dict(model.named_parameters())
    changed = [n for n in names if not params[n].requires_grad]
    for n in names:
        params[n].requires_grad_(True)
    chosen = set(names)
    for _, module, owned in bn_owners(model):
        if any(n in chosen for n in owned):
            unlock_bn(module, model.training)
    logger.debug("unfroze %d parameters (%d changed)", len(names), len(changed))
    return changed


def head_parameter_names(model: nn.Module) -> list[str]:
    """The head's parameter names: ``model.head_parameter_names()`` or the ``"head"`` layer group.

    Raises:
        ConfigError: the model offers neither.
    """
    fn = getattr(model, "head_parameter_names", None)
    if callable(fn):
        return list(fn())
    groups = layer_groups_of(model)
    if groups is not None and "head" in groups:
        return list(groups["head"])
    raise ConfigError(
        f"{type(model).__name__} has neither head_parameter_names() nor a 'head' layer group, so its head "
        "is unknown; build it with transferkit.create_model(...) or call freeze(model, selector) instead."
    )


def freeze_backbone(adapter: nn.Module, train_bn: bool = False, bn: str = "eval") -> list[str]:
    """Freeze everything but the head, and make sure the head is trainable.

    Args:
        adapter: an :class:`~transferkit.backbones.Adapter` or any module with ``head_parameter_names()``
            or a ``"head"`` layer group.
        train_bn: let the backbone's BatchNorm layers keep training (see :func:`freeze`).
        bn: ``"eval"`` or ``"frozen"``, as in :func:`freeze`.

    Returns:
        Names of the parameters that were trainable and are now frozen.

    Raises:
        ConfigError: the model's head is unknown.
    """
    _, alias = canonical_names(adapter)
    head = {alias[n] for n in head_parameter_names(adapter) if n in alias}
    changed = freeze(adapter, lambda name, _p: name not in head, train_bn=train_bn, bn=bn)
    unfreeze(adapter, lambda name, _p: name in head)
    return changed


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs with ``requires_grad=True``, each shared parameter once.

    Example:
        >>> m = nn.Linear(2, 1)
        >>> _ = freeze(m, "bias")
        >>> [n for n, _ in trainable_parameters(m)]
        ['weight']
    """
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
