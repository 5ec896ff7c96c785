"""Optimizers over the trainable parameters only, in named groups with discriminative learning rates.

:func:`build_optimizer` puts every ``requires_grad=True`` parameter (by identity: a tied weight once) into a
named parameter group. Groups follow the model's layer groups when it has ``layer_groups()`` (an adapter),
or the ``groups=`` mapping you give, else one group ``"params"``. With ``lr_decay`` the last group (the head)
trains at ``lr`` and each group below it at the rate of the one above times ``lr_decay``. With
``layer_decay`` the rates fall per *layer* instead (:func:`layer_decay_scales`: timm's fine layers, a block
each, for timm networks), and a layer group holding layers at several rates is split into
``"<group>/0"``, ``"<group>/1"``, ... from the input side. Biases and normalisation weights get no weight
decay: they sit in a sibling group named ``"<group>.no_decay"``.

Every group carries ``"name"`` and ``"initial_lr"`` (its rate before any schedule), and the optimizer's
groups carry ``"param_names"``, so a checkpoint says which parameter each state belongs to.
:class:`transferkit.schedule.LRSchedule` scales every group by ``initial_lr``, so groups added later by
:func:`add_param_group` (or :class:`transferkit.schedule.GradualUnfreeze`) follow the same curve.

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    >>> opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    >>> [(g["name"], g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    [('params', 0.05, 2), ('params.no_decay', 0.0, 4)]
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.freeze import check_model, select_parameters

__all__ = [
    "build_optimizer",
    "add_param_group",
    "optimizer_names",
    "no_decay_names",
    "layer_decay_scales",
    "OPTIMIZERS",
]

logger = logging.getLogger(__name__)

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _sgd(groups: list[dict], o: dict) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])


def _adam(cls: type[torch.optim.Optimizer]) -> Callable[[list[dict], dict], torch.optim.Optimizer]:
    def make(groups: list[dict], o: dict) -> torch.optim.Optimizer:
        kwargs = {"lr": o["lr"]}
        if o["betas"] is not None:
            kwargs["betas"] = o["betas"]
        if o["eps"] is not None:
            kwargs["eps"] = o["eps"]
        return cls(groups, **kwargs)

    return make


def _rmsprop(groups: list[dict], o: dict) -> torch.optim.Optimizer:
    kwargs = {"lr": o["lr"], "momentum": o["momentum"]}
    if o["eps"] is not None:
        kwargs["eps"] = o["eps"]
    return torch.optim.RMSprop(groups, **kwargs)


# name -> factory(groups, options); each group already holds its own lr and weight_decay
OPTIMIZERS: dict[str, Callable[[list[dict], dict], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam(torch.optim.Adam),
    "adamw": _adam(torch.optim.AdamW),
    "nadam": _adam(torch.optim.NAdam),
    "radam": _adam(torch.optim.RAdam),
    "rmsprop": _rmsprop,
}


def optimizer_names() -> list[str]:
    """The names :func:`build_optimizer` accepts."""
    return sorted(OPTIMIZERS)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay: biases, other 0/1-d tensors, normalisation weights.

    Example:
        >>> sorted(no_decay_names(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))))
        ['0.bias', '1.bias', '1.weight']
    """
    norm_ids = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters()}
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or id(p) in norm_ids}


# which of the optional hyperparameters each optimizer takes: giving one it ignores is an error, not a no-op
_TAKES: dict[str, frozenset[str]] = {
    "sgd": frozenset({"momentum", "nesterov"}),
    "rmsprop": frozenset({"momentum", "eps"}),
    **{k: frozenset({"betas", "eps"}) for k in ("adam", "adamw", "nadam", "radam")},
}
_DEFAULT_MOMENTUM = 0.9


def _check_consistent(key: str, given: dict[str, Any]) -> None:
    """Reject hyperparameters the chosen optimizer would silently ignore (betas for SGD, ...)."""
    ignored = sorted(k for k, v in given.items() if v is not None and k not in _TAKES[key])
    if ignored:
        takers = sorted(n for n, t in _TAKES.items() if set(ignored) <= t)
        hint = f" ({', '.join(ignored)} is taken by {', '.join(takers)})" if takers else ""
        raise ConfigError(
            f"optimizer {key!r} does not take {', '.join(ignored)}{hint}; drop the option or choose "
            "an optimizer that uses it"
        )


def _check_options(
    lr: float, weight_decay: float, lr_decay: float | None, momentum: float, betas: Any
) -> None:
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


def _layout(model: nn.Module, groups: Mapping[str, Any] | None, need_groups: bool) -> dict[str, list[str]]:
    """Group name -> parameter names, ordered input -> output, covering every parameter once."""
    if groups is None:
        fn = getattr(model, "layer_groups", None)
        if callable(fn):
            groups = fn()
        elif need_groups:
            raise ConfigError(
                f"lr_decay needs layer groups, but {type(model).__name__} has no layer_groups(); pass "
                "groups={'name': selector, ...} ordered from input to output, or build it with create_model"
            )
        else:
            return {"params": [n for n, _ in model.named_parameters()]}
    # A tensor two groups name (tied weights listed under both aliases) belongs to the topmost one: it
    # trains at the highest rate asked for, and a head thawed first takes it along.
    claimed: dict[str, list[str]] = {}
    seen: set[str] = set()
    for gname, selector in reversed(list(groups.items())):
        sel = list(selector) if isinstance(selector, list | tuple) else selector
        names = [n for n in select_parameters(model, sel) if n not in seen]
        seen.update(names)
        claimed[gname] = names
    layout = {g: claimed[g] for g in groups}
    rest = [n for n, _ in model.named_parameters() if n not in seen]
    if rest:
        # parameters no group names train with the top group rather than being silently left out
        last = list(layout)[-1] if layout else "params"
        logger.info("%d parameters in no group join group %r: %s", len(rest), last, rest[:5])
        layout.setdefault(last, []).extend(rest)
    return layout


def _split_groups(
    model: nn.Module,
    names: Sequence[str],
    *,
    group_name: str,
    lr: float,
    weight_decay: float,
    no_decay_bias_norm: bool,
    with_names: bool = True,
    exclude: set[int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The parameter group dicts for ``names``: trainable only, one decay and one no-decay group."""
    params = dict(model.named_parameters())
    exclude = exclude if exclude is not None else set()
    skip = no_decay_names(model) if no_decay_bias_norm and weight_decay > 0 else set()
    buckets: dict[str, list[str]] = {group_name: [], f"{group_name}.no_decay": []}
    for n in names:
        p = params[n]
        if not p.requires_grad or id(p) in exclude:
            continue
        exclude.add(id(p))
        buckets[f"{group_name}.no_decay" if n in skip else group_name].append(n)
    out = []
    for gname, members in buckets.items():
        if not members:
            continue
        group: dict[str, Any] = {
            "params": [(n, params[n]) for n in members] if with_names else [params[n] for n in members],
            "name": gname,
            "lr": lr,
            "initial_lr": lr,
            "weight_decay": 0.0 if gname.endswith(".no_decay") else weight_decay,
            **(extra or {}),
        }
        out.append(group)
    return out


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
    layout = _layout(model, groups, need_groups=True)
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


def _scale_buckets(
    names: Sequence[str], scales: Mapping[str, float] | None, group_name: str
) -> list[tuple[str, float, list[str]]]:
    """``names`` split by rate multiplier, input side first: ``[(group name, scale, names)]``.

    One multiplier keeps ``group_name``; several make ``"<group_name>/0"``, ``"/1"``, ... (lowest rate,
    i.e. nearest the input, first), so a thawed group's parts are named alike whenever they join.
    """
    if scales is None:
        return [(group_name, 1.0, list(names))]
    distinct = sorted({scales.get(n, 1.0) for n in names})
    if len(distinct) <= 1:
        return [(group_name, distinct[0] if distinct else 1.0, list(names))]
    return [
        (f"{group_name}/{i}", s, [n for n in names if scales.get(n, 1.0) == s])
        for i, s in enumerate(distinct)
    ]


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
    key = str(name).lower()
    if key not in OPTIMIZERS:
        close = difflib.get_close_matches(key, OPTIMIZERS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown optimizer {name!r}; expected one of {', '.join(optimizer_names())}.{hint}"
        )
    _check_consistent(key, {"momentum": momentum, "betas": betas, "eps": eps, "nesterov": nesterov or None})
    momentum = _DEFAULT_MOMENTUM if momentum is None else momentum
    _check_options(lr, weight_decay, lr_decay, momentum, betas)
    if not (isinstance(head_lr_scale, int | float) and math.isfinite(head_lr_scale) and head_lr_scale > 0):
        raise ConfigError(f"head_lr_scale must be a positive number, got {head_lr_scale!r}")
    if layer_decay is not None and lr_decay is not None:
        raise ConfigError(
            f"give one of lr_decay (per layer group, got {lr_decay!r}) and layer_decay (per layer, got "
            f"{layer_decay!r}), not both"
        )
    if nesterov and momentum == 0:
        raise ConfigError("nesterov=True needs momentum > 0")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"{type(model).__name__} has no trainable parameter (every requires_grad is False); "
            "unfreeze something first, e.g. unfreeze(model, 'head')"
        )
    scales = layer_decay_scales(model, layer_decay, groups=groups) if layer_decay is not None else None
    layout = _layout(model, groups, need_groups=lr_decay is not None)
    decay = 1.0 if lr_decay is None else float(lr_decay)
    seen: set[int] = set()
    param_groups: list[dict[str, Any]] = []
    for level, (gname, names) in enumerate(reversed(list(layout.items()))):
        built = []
        for sub_name, scale, members in _scale_buckets(names, scales, gname):
            built += _split_groups(
                model,
                members,
                group_name=sub_name,
                lr=lr * decay**level * scale * (head_lr_scale if level == 0 else 1.0),
                weight_decay=weight_decay,
                no_decay_bias_norm=no_decay_bias_norm,
                exclude=seen,
            )
        param_groups[:0] = built
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
    for sub_name, scale, members in _scale_buckets(names, lr_scales, group_name):
        new += _split_groups(
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
