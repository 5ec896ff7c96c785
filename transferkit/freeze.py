"""Freezing and thawing parameters: selectors, the BatchNorm policy, and a summary table.

A *selector* picks parameters of a model. It may be

- an ``nn.Module`` inside the model (all its parameters),
- a qualified name: a layer group of an adapter (``"head"``, ``"layer4"``), a module (``"backbone.layer1"``)
  or a parameter (``"backbone.fc.weight"``), tried in that order,
- a glob matched with :func:`fnmatch.fnmatchcase` against layer group, module and parameter names
  (``"layer[1-3].*"``),
- a compiled regular expression, searched in parameter names,
- a predicate ``(name, param) -> bool``,
- or a list/tuple of any of these.

Module and parameter names, plain or glob, may also be given relative to the network an adapter wraps
(``"layer1.0"``, ``"layer[1-3].*"`` for ``backbone.layer1.0``, ``backbone.layer1.*`` ...), as they appear
in the torchvision or timm model itself.

Parameters are handled by identity: a weight shared by two modules (tied embeddings) is one parameter and
is reported under its first name, the one :meth:`nn.Module.named_parameters` gives.

**BatchNorm policy.** A BatchNorm layer whose parameters are all frozen (and ``train_bn=False``) is put in
eval mode *and kept there*: its ``train()`` is replaced by one that keeps ``training=False`` (so
``model.train()`` leaves it in eval mode), and a forward pre-hook resets ``module.training = False`` before
every forward, so nothing can make it normalise with batch statistics or update its running statistics --
the classic "frozen backbone whose BN statistics still drift" bug. :func:`unfreeze` removes both guards.
Converting such layers to :class:`torchvision.ops.FrozenBatchNorm2d` (``freeze(..., bn="frozen")`` or
:func:`convert_frozen_bn`) is the permanent alternative: their affine terms become buffers.

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    >>> changed = freeze(model, "0", "1")
    >>> changed
    ['0.weight', '0.bias', '1.weight', '1.bias']
    >>> _ = model.train()
    >>> is_bn_locked(model[1])
    True
    >>> unfreeze(model, model[1])
    ['1.weight', '1.bias']
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferkit.errors import ConfigError
from transferkit.rename import is_under

__all__ = [
    "Selector",
    "freeze",
    "unfreeze",
    "freeze_backbone",
    "trainable_parameters",
    "summary",
    "select_parameters",
    "convert_frozen_bn",
    "is_bn_locked",
    "head_parameter_names",
]

logger = logging.getLogger(__name__)

Selector = nn.Module | str | re.Pattern | Callable[[str, nn.Parameter], bool] | Sequence[Any]

_GLOB_CHARS = frozenset("*?[")


# ----------------------------------------------------------------------------------------------------------
# selectors


def check_model(model: Any, caller: str = "transferkit") -> None:
    """Refuse a model argument that is not an ``nn.Module`` (a state dict, a name, ``None``).

    Raises:
        ConfigError: naming what was given.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{caller} needs the model itself (an nn.Module); got {type(model).__name__}: {model!r:.80}"
        )


def _canonical_names(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, str]]:
    """Canonical name -> parameter, and every name (aliases of tied weights too) -> canonical name."""
    check_model(model)
    canonical = dict(model.named_parameters())
    by_id = {id(p): n for n, p in canonical.items()}
    alias = {n: by_id[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    return canonical, alias


def _layer_groups(model: nn.Module) -> dict[str, list[str]] | None:
    fn = getattr(model, "layer_groups", None)
    return fn() if callable(fn) else None


def _glob_hits(
    pattern: str,
    alias: dict[str, str],
    modules: Iterable[str],
    groups: dict[str, list[str]] | None,
    prefix: str,
) -> list[str]:
    """Parameters whose own name, the name of a module holding them, or their layer group matches the glob.

    Names are also tried relative to the wrapped network (``prefix``, e.g. ``"backbone."`` of an adapter),
    so ``"layer[1-3].*"`` means the same on an adapter as on the bare torchvision ResNet.
    """

    def match(name: str) -> bool:
        if fnmatch.fnmatchcase(name, pattern):
            return True
        return bool(prefix) and name.startswith(prefix) and fnmatch.fnmatchcase(name[len(prefix) :], pattern)

    matched_modules = [m for m in modules if m and match(m)]
    hits = [
        canon
        for name, canon in alias.items()
        if match(name) or any(is_under(name, m) for m in matched_modules)
    ]
    for gname, names in (groups or {}).items():
        if fnmatch.fnmatchcase(gname, pattern):
            hits.extend(alias[n] for n in names if n in alias)
    return hits


def _unknown(selector: str, candidates: Iterable[str], what: str) -> ConfigError:
    close = difflib.get_close_matches(selector, list(candidates), n=5, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return ConfigError(
        f"selector {selector!r} matched no {what}.{hint} A selector is a layer group, a module or parameter "
        "name, a glob like 'layer[1-3].*', a compiled regex or a predicate (name, param) -> bool; "
        "see summary(model) for the module names."
    )


def _resolve_one(model: nn.Module, selector: Any, alias: dict[str, str], canonical: dict) -> list[str]:
    if isinstance(selector, nn.Module):
        if not any(m is selector for m in model.modules()):
            raise ConfigError(
                f"selector module {type(selector).__name__} is not a submodule of the model; "
                "pass a module taken from this model (e.g. model.layer1) or its qualified name."
            )
        ids = {id(p) for p in selector.parameters()}
        return [n for n, p in canonical.items() if id(p) in ids]
    if isinstance(selector, re.Pattern):
        hits = [canon for name, canon in alias.items() if selector.search(name)]
        if not hits:
            raise ConfigError(
                f"regex selector {selector.pattern!r} matched no parameter name; "
                "check it against summary(model) or list(model.named_parameters())."
            )
        return hits
    if isinstance(selector, str):
        if not selector.strip():
            # "" names the root module, which would silently select every parameter (the head included)
            raise ConfigError(
                f"selector {selector!r} is empty; name a layer group, module, parameter or glob (e.g. "
                "'layer4' or 'layer[1-3].*'), or call freeze(model) with no selector to freeze everything"
            )
        if (
            selector in alias and "." in selector
        ):  # fast path: a full parameter name (lists of them are common)
            return [alias[selector]]
        groups = _layer_groups(model)
        if groups is not None and selector in groups:
            return [alias[n] for n in groups[selector] if n in alias]
        modules = dict(model.named_modules())
        prefix = _wrapper_prefix(model)
        # a name relative to the wrapped network ("layer1.0" for "backbone.layer1.0") is accepted too
        for name in (selector, prefix + selector) if prefix and selector else (selector,):
            if name in modules:
                return [canon for a, canon in alias.items() if is_under(a, name)]
            if name in alias:
                return [alias[name]]
        if _GLOB_CHARS & set(selector):
            hits = _glob_hits(selector, alias, modules, groups, prefix)
            if hits:
                return hits
        names = [*(groups or {}), *(m for m in modules if m), *alias]
        raise _unknown(selector, names, "layer group, module or parameter")
    if isinstance(selector, torch.Tensor):
        # a parameter object itself (model.fc.weight); checked before Iterable, as tensors iterate
        hits = [n for n, p in canonical.items() if p is selector]
        if not hits:
            raise ConfigError(
                f"selector tensor of shape {tuple(selector.shape)} is not a parameter of the model; pass "
                "one taken from this model (e.g. model.fc.weight) or its name"
            )
        return hits
    if callable(selector):
        return [n for n, p in canonical.items() if selector(n, p)]
    if isinstance(selector, Iterable):
        return [n for item in selector for n in _resolve_one(model, item, alias, canonical)]
    raise ConfigError(
        f"a selector must be a module, a name, a glob, a compiled regex, a predicate or a list of these; "
        f"got {type(selector).__name__}: {selector!r}"
    )


def select_parameters(model: nn.Module, *selectors: Selector) -> list[str]:
    """The canonical names of the parameters the selectors pick (all parameters when none is given).

    Args:
        model: any module.
        *selectors: see the module docstring.

    Returns:
        Parameter names in model order, each once.

    Raises:
        ConfigError: a name, glob or regex that matches nothing (with close matches), or a bad selector type.

    Example:
        >>> select_parameters(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), "1.*")
        ['1.weight', '1.bias']
    """
    canonical, alias = _canonical_names(model)
    if not selectors:
        return list(canonical)
    picked = {n for s in selectors for n in _resolve_one(model, s, alias, canonical)}
    return [n for n in canonical if n in picked]


# ----------------------------------------------------------------------------------------------------------
# BatchNorm policy


def _keep_bn_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen BN layer: whatever set ``training``, normalise with running stats."""
    module.training = False


def _locked_train(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen BN layer: ``model.train()`` reaches it through its parent and is ignored."""
    nn.Module.train(module, False)
    return module


def _is_locked_train(value: Any) -> bool:
    return isinstance(value, functools.partial) and value.func is _locked_train


def is_bn_locked(module: nn.Module) -> bool:
    """Whether ``module`` carries the frozen-BN hook that keeps it in eval mode."""
    return any(h is _keep_bn_eval for h in module._forward_pre_hooks.values())


def lock_bn(module: nn.Module) -> None:
    # Two guards: the instance-level train() keeps ``module.training`` False through model.train(), so
    # what the flag says is what the layer does; the pre-hook also covers ``bn.training = True`` set by
    # hand. A partial (not a bound method) survives deepcopy and pickle, pointing at the copy.
    if not is_bn_locked(module):
        module.register_forward_pre_hook(_keep_bn_eval)
    vars(module)["train"] = functools.partial(_locked_train, module)
    module.training = False


def unlock_bn(module: nn.Module, training: bool) -> None:
    # Hooks are removed by identity of the function, not through a stored handle: a handle holds a weakref
    # to the original module's hook dict, which deepcopy would not follow.
    hooks = module._forward_pre_hooks
    for key in [k for k, h in hooks.items() if h is _keep_bn_eval]:
        del hooks[key]
    if _is_locked_train(vars(module).get("train")):
        del vars(module)["train"]
    module.train(training)


def _bn_owners(model: nn.Module) -> list[tuple[str, _BatchNorm, list[str]]]:
    """Every BN layer with the parameter names that decide whether it counts as frozen.

    Those are its own affine parameters; a BN layer without any follows the nearest enclosing module that
    has parameters (a ResNet block, at worst the whole model).
    """
    name_of = {id(p): n for n, p in model.named_parameters()}
    modules = dict(model.named_modules())
    out = []
    for mname, module in modules.items():
        if not isinstance(module, _BatchNorm):
            continue
        owner, prefix = module, mname
        while not any(True for _ in owner.parameters()) and prefix:
            prefix = prefix.rpartition(".")[0]
            owner = modules[prefix]
        owned = [name_of[id(p)] for p in owner.parameters()]
        if owned:
            out.append((mname, module, owned))
    return out


def _frozen_bn_layers(model: nn.Module, chosen: set[str]) -> list[tuple[str, _BatchNorm]]:
    """BN layers touched by ``chosen`` whose deciding parameters are now all frozen."""
    params = dict(model.named_parameters())
    return [
        (name, bn)
        for name, bn, owned in _bn_owners(model)
        if any(n in chosen for n in owned) and not any(params[n].requires_grad for n in owned)
    ]


def convert_frozen_bn(model: nn.Module, *selectors: Selector) -> list[str]:
    """Replace ``nn.BatchNorm2d`` layers whose parameters are all frozen with ``FrozenBatchNorm2d``.

    The converted layers keep their weight, bias and running statistics, now as buffers, so they can never
    train again (unfreeze does not bring them back) and the ``num_batches_tracked`` key leaves the state
    dict. Convert *before* building the optimizer: the old parameters leave the model.

    Args:
        model: any module.
        *selectors: limit the conversion to these parameters' BN layers (default: every frozen BN2d).

    Returns:
        Qualified names of the converted modules.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> _ = freeze(m)
        >>> convert_frozen_bn(m)
        ['1']
    """
    from torchvision.ops import FrozenBatchNorm2d

    converted = []
    for name, bn in _frozen_bn_layers(model, set(select_parameters(model, *selectors))):
        if type(bn) is not nn.BatchNorm2d or bn.running_mean is None:
            logger.info("not converting %s (%s without running stats or not 2d)", name, type(bn).__name__)
            continue
        fbn = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
        with torch.no_grad():
            if bn.affine:
                fbn.weight.copy_(bn.weight)
                fbn.bias.copy_(bn.bias)
            fbn.running_mean.copy_(bn.running_mean)
            fbn.running_var.copy_(bn.running_var)
        fbn.to(device=bn.running_mean.device)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, fbn)
        converted.append(name)
    return converted


# ----------------------------------------------------------------------------------------------------------
# freeze / unfreeze


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
        for _, module, owned in _bn_owners(model):
            if any(n in chosen for n in owned):
                unlock_bn(module, model.training)
    elif bn == "frozen":
        convert_frozen_bn(model, *selectors)
    else:
        for _, module in _frozen_bn_layers(model, chosen):
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
    for _, module, owned in _bn_owners(model):
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
    groups = _layer_groups(model)
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
    _, alias = _canonical_names(adapter)
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


# ----------------------------------------------------------------------------------------------------------
# summary


def _bn_mode(module: nn.Module) -> str:
    if type(module).__name__ == "FrozenBatchNorm2d":
        return "FrozenBN"
    if isinstance(module, _BatchNorm):
        return "frozen(eval)" if is_bn_locked(module) else ("train" if module.training else "eval")
    return ""


def _wrapper_prefix(model: nn.Module) -> str:
    """``"backbone."`` when all parameters sit in one child (an adapter's wrapped network), else ``""``.

    Rows then show the wrapped network's own top-level modules instead of one row for the wrapper.
    """
    prefix, module = "", model
    while True:
        children = [(n, c) for n, c in module.named_children() if any(True for _ in c.parameters())]
        if len(children) != 1 or any(True for _ in module.parameters(recurse=False)):
            return prefix
        name, module = children[0]
        prefix += name + "."


def summary(model: nn.Module, by: str = "auto") -> str:
    """A table of parameter counts (elements), trainable and frozen, and BatchNorm modes.

    Args:
        model: any module.
        by: ``"module"`` (one row per top-level child; the children of the wrapped network when the
            model only wraps one, like an adapter's ``backbone``), ``"group"`` (one row per adapter layer group) or
            ``"auto"`` (groups when the model has ``layer_groups()``).

    Returns:
        The table as text, with a total row.

    Example:
        >>> print(summary(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))))
        module  params  trainable  frozen  batchnorm
        0            6          6       0  -
        1            4          4       0  1 train
        total       10         10       0
    """
    check_model(model, "summary")
    groups = _layer_groups(model) if by in ("auto", "group") else None
    if by == "group" and groups is None:
        raise ConfigError(
            f"summary(by='group') needs a model with layer_groups(); {type(model).__name__} has none"
        )
    if by not in ("auto", "group", "module"):
        raise ConfigError(f"by must be 'auto', 'group' or 'module', got {by!r}")
    _, alias = _canonical_names(model)
    if groups is not None:
        rows = {g: [alias[n] for n in names if n in alias] for g, names in groups.items()}
    else:
        rows = {}
        base = _wrapper_prefix(model)
        for name in dict(model.named_parameters()):
            rest = name[len(base) :]
            top = base + rest.split(".")[0] if "." in rest else "(root)"
            rows.setdefault(top, []).append(name)
    param_row = {n: row for row, names in rows.items() for n in names}
    bn_modes: dict[str, dict[str, int]] = {}
    name_of = {id(p): n for n, p in model.named_parameters()}
    for mname, module in model.named_modules():
        mode = _bn_mode(module)
        if not mode:
            continue
        owned = [name_of[id(p)] for p in module.parameters()]
        if owned:
            row = param_row.get(owned[0], "(root)")
        else:  # no parameters (affine-free or FrozenBN): the row of the first parameter under its parent
            parent = mname.rpartition(".")[0]
            row = next((param_row[n] for n in param_row if is_under(n, parent)), mname.split(".")[0])
        counts = bn_modes.setdefault(row, {})
        counts[mode] = counts.get(mode, 0) + 1
    params = dict(model.named_parameters())
    header = ("module" if groups is None else "group", "params", "trainable", "frozen", "batchnorm")
    table = []
    totals = [0, 0, 0]
    for row in [*rows, *(r for r in bn_modes if r not in rows)]:
        names = rows.get(row, [])
        total = sum(params[n].numel() for n in names)
        train = sum(params[n].numel() for n in names if params[n].requires_grad)
        modes = ", ".join(f"{c} {m}" for m, c in bn_modes.get(row, {}).items()) or "-"
        table.append((row, str(total), str(train), str(total - train), modes))
        totals = [totals[0] + total, totals[1] + train, totals[2] + total - train]
    table.append(("total", *map(str, totals), ""))
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(5)]

    def fmt(r: tuple[str, ...]) -> str:
        cells = [r[0].ljust(widths[0]), *(r[i].rjust(widths[i]) for i in range(1, 4)), r[4]]
        return "  ".join(cells).rstrip()

    return "\n".join(fmt(r) for r in [header, *table])
