"""``build_optimizer`` and ``add_param_group``: optimizers over trainable parameters, in named groups.

:func:`build_optimizer` makes the groups (discriminative or layer-wise rates, no-decay siblings) and the
optimizer; :func:`add_param_group` adds groups later (a layer group thawed mid-run), on the curve a
schedule has put the existing groups on.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> opt = build_optimizer(model, "sgd", lr=0.1, groups={"body": "0", "head": "1"}, head_lr_scale=10)
    >>> [(g["name"], g["lr"]) for g in opt.param_groups]
    [('body', 0.1), ('head', 1.0)]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.freeze import check_model, select_parameters
from transferkit.optim.layer_decay import layer_decay_scales
from transferkit.optim.optimizers import DEFAULT_MOMENTUM, OPTIMIZERS, check_consistent, optimizer_key
from transferkit.optim.param_groups import group_layout, scale_buckets, split_groups

__all__ = ["build_optimizer", "add_param_group"]

logger = logging.getLogger("transferkit.optim")


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lr_decay: float | None = None,
    no_decay_bias_norm: bool = True,
    momentum: float | None = None,
    betas: tuple[float, float] | None = None,
    groups: Mapping[str, Any] | None = None,
    *,
    nesterov: bool = False,
    eps: float | None = None,
    head_lr_scale: float = 1.0,
    layer_decay: float | None = None,
) -> torch.optim.Optimizer:
    """An optimizer over the model's trainable parameters, in named groups.

    Args:
        model: any module; an adapter's ``layer_groups()`` name the groups.
        name: one of :func:`optimizer_names` (case-insensitive).
        lr: the learning rate of the top group (the head).
        weight_decay: for weights; biases and norm weights get 0 when ``no_decay_bias_norm``.
        lr_decay: discriminative rates: group ``k`` levels below the top trains at ``lr * lr_decay**k``.
            Levels count layer groups, trainable or not, so a group thawed later gets the same rate.
        no_decay_bias_norm: exempt 0/1-d parameters and normalisation-layer weights from weight decay.
        momentum: for SGD and RMSprop (0.9 when None).
        betas: for the Adam family (torch defaults when None).
        groups: ``{group_name: selector}`` ordered input -> output, overriding ``layer_groups()``;
            parameters no selector picks join the last group.
        nesterov: Nesterov momentum for SGD.
        eps: for the Adam family and RMSprop (torch default when None).
        head_lr_scale: the top group (the head) trains at ``lr * head_lr_scale``; the others keep their
            rates. A new head started near zero has far to go, the pretrained layers below it little.
        layer_decay: layer-wise rates instead of ``lr_decay``: a parameter ``k`` layers below the top
            trains at ``lr * layer_decay**k`` (see :func:`layer_decay_scales`). Frozen parameters are left
            out as always; a schedule that thaws them later gives them the same rates (``GradualUnfreeze``
            with the same ``layer_decay``).

    Returns:
        The optimizer; each group has ``name``, ``initial_lr``, ``lr``, ``weight_decay``, ``param_names``.

    Raises:
        ConfigError: unknown name (the known ones are listed), nothing trainable, inconsistent options
            (an option the chosen optimizer ignores, such as ``betas`` for SGD or ``momentum`` for Adam).

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> opt = build_optimizer(m, "sgd", lr=0.1, lr_decay=0.5, groups={"body": "0", "head": "1"})
        >>> [(g["name"], g["lr"]) for g in opt.param_groups]
        [('body', 0.05), ('head', 0.1)]
    """
    check_model(model, "build_optimizer")
    if groups is not None and not isinstance(groups, Mapping):
        raise ConfigError(
            "groups must be a dict {group_name: selector} ordered from input to output, e.g. "
            f"{{'body': 'layer[1-3]', 'head': 'fc'}}; got {type(groups).__name__}: {groups!r:.100}"
        )
    key = optimizer_key(name)
    check_consistent(key, {"momentum": momentum, "betas": betas, "eps": eps, "nesterov": nesterov or None})
    momentum = DEFAULT_MOMENTUM if momentum is None else momentum
    _check_options(lr, weight_decay, lr_decay, momentum, betas, head_lr_scale, layer_decay, nesterov)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"{type(model).__name__} has no trainable parameter (every requires_grad is False); "
            "unfreeze something first, e.g. unfreeze(model, 'head')"
        )
    scales = layer_decay_scales(model, layer_decay, groups=groups) if layer_decay is not None else None
    seen: set[int] = set()
    param_groups = _discriminative_groups(
        model, group_layout(model, groups, need_groups=lr_decay is not None), scales, seen,
        lr=lr, lr_decay=lr_decay, head_lr_scale=head_lr_scale, weight_decay=weight_decay,
        no_decay_bias_norm=no_decay_bias_norm,
    )  # fmt: skip
    options = {"lr": lr, "momentum": momentum, "betas": betas, "eps": eps, "nesterov": nesterov}
    optimizer = OPTIMIZERS[key](param_groups, options)
    optimizer.defaults["weight_decay"] = weight_decay  # what add_param_group gives later groups
    logger.info(
        "%s over %d tensors in groups %s",
        key,
        len(seen),
        ", ".join(f"{g['name']}@{g['lr']:.3g}" for g in optimizer.param_groups),
    )
    return optimizer


def _discriminative_groups(
    model: nn.Module,
    layout: dict[str, list[str]],
    scales: Mapping[str, float] | None,
    seen: set[int],
    *,
    lr: float,
    lr_decay: float | None,
    head_lr_scale: float,
    weight_decay: float,
    no_decay_bias_norm: bool,
) -> list[dict[str, Any]]:
    """The group dicts, input side first: the top group (the head) at ``lr * head_lr_scale``, each one below
    at the rate above times ``lr_decay``, times each layer's scale. ``seen`` collects the parameters' ids."""
    decay = 1.0 if lr_decay is None else float(lr_decay)
    param_groups: list[dict[str, Any]] = []
    for level, (gname, names) in enumerate(reversed(list(layout.items()))):
        built = []
        for sub_name, scale, members in scale_buckets(names, scales, gname):
            built += split_groups(
                model,
                members,
                group_name=sub_name,
                lr=lr * decay**level * scale * (head_lr_scale if level == 0 else 1.0),
                weight_decay=weight_decay,
                no_decay_bias_norm=no_decay_bias_norm,
                exclude=seen,
            )
        param_groups[:0] = built
    return param_groups


def _check_options(
    lr: float,
    weight_decay: float,
    lr_decay: float | None,
    momentum: float,
    betas: Any,
    head_lr_scale: float,
    layer_decay: float | None,
    nesterov: bool,
) -> None:
    """Refuse out-of-range numbers and options that contradict each other, naming the option."""
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive finite number, got {lr!r}")
    if not (isinstance(weight_decay, int | float) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if lr_decay is not None and not (isinstance(lr_decay, int | float) and 0 < lr_decay <= 1):
        raise ConfigError(
            f"lr_decay must be in (0, 1] (each lower layer group trains at the rate above times it), "
            f"got {lr_decay!r}; use None for one rate everywhere"
        )
    if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
        raise ConfigError(f"momentum must be in [0, 1), got {momentum!r}")
    if betas is not None and (len(tuple(betas)) != 2 or not all(0 <= b < 1 for b in betas)):
        raise ConfigError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not (isinstance(head_lr_scale, int | float) and math.isfinite(head_lr_scale) and head_lr_scale > 0):
        raise ConfigError(f"head_lr_scale must be a positive number, got {head_lr_scale!r}")
    if layer_decay is not None and lr_decay is not None:
        raise ConfigError(
            f"give one of lr_decay (per layer group, got {lr_decay!r}) and layer_decay (per layer, got "
            f"{layer_decay!r}), not both"
        )
    if nesterov and momentum == 0:
        raise ConfigError("nesterov=True needs momentum > 0")


def _current_factor(optimizer: torch.optim.Optimizer) -> float:
    """How far a schedule has scaled the existing groups (lr / initial_lr); 1.0 when nothing says."""
    for group in optimizer.param_groups:
        if group.get("initial_lr"):
            return group["lr"] / group["initial_lr"]
    return 1.0


def add_param_group(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    names: Sequence[str] | Any,
    lr: float,
    group_name: str,
    weight_decay: float | None = None,
    *,
    no_decay_bias_norm: bool = True,
    follow_schedule: bool = True,
    lr_scales: Mapping[str, float] | None = None,
    **hyperparameters: Any,
) -> list[dict[str, Any]]:
    """Add the selected trainable parameters to ``optimizer`` as new named group(s).

    Parameters already in the optimizer (by identity) or frozen are skipped, so nothing is ever added
    twice. The new groups get ``initial_lr=lr``; with ``follow_schedule`` their current ``lr`` is
    ``lr`` times the factor a schedule has applied to the existing groups, so a group thawed mid-run
    starts on the same curve as the others.

    Args:
        optimizer: any torch optimizer.
        model: the model the parameters belong to (for their names).
        names: parameter names, or any selector :func:`transferkit.freeze.freeze` accepts.
        lr: the group's rate before scheduling (its ``initial_lr``).
        group_name: the ``name`` of the new group; the no-decay part is ``"<group_name>.no_decay"``.
        weight_decay: default: the optimizer's default weight decay.
        no_decay_bias_norm: put biases and norm weights in the no-decay part.
        follow_schedule: scale the current ``lr`` like the existing groups (see above).
        lr_scales: per-parameter rate multipliers (:func:`layer_decay_scales`); the selection is split into
            ``"<group_name>/<i>"`` groups at ``lr * scale`` when it spans several of them.
        **hyperparameters: any other group option (momentum, betas, ...).

    Returns:
        The groups added (possibly none, when every selected parameter is frozen or already present).

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> opt = build_optimizer(m, "sgd", lr=0.1, groups={"body": "0", "head": "1"})
        >>> [g["name"] for g in add_param_group(opt, m, "0", lr=0.01, group_name="again")]
        []
    """
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"add_param_group needs a torch optimizer, got {type(optimizer).__name__}")
    check_model(model, "add_param_group")
    if isinstance(names, str) or not isinstance(names, Sequence):
        names = select_parameters(model, names)
    else:
        names = select_parameters(model, list(names))
    present = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if weight_decay is None:
        weight_decay = float(optimizer.defaults.get("weight_decay", 0.0))
    with_names = all("param_names" in g for g in optimizer.param_groups)
    new = []
    for sub_name, scale, members in scale_buckets(names, lr_scales, group_name):
        new += split_groups(
            model,
            members,
            group_name=sub_name,
            lr=lr * scale,
            weight_decay=weight_decay,
            no_decay_bias_norm=no_decay_bias_norm,
            with_names=with_names,
            exclude=present,
            extra=hyperparameters,
        )
    factor = _current_factor(optimizer) if follow_schedule else 1.0
    for group in new:
        group["lr"] = group["initial_lr"] * factor
        optimizer.add_param_group(group)
    if new:
        logger.info("added groups %s", ", ".join(f"{g['name']}@{g['initial_lr']:.3g}" for g in new))
    return new
