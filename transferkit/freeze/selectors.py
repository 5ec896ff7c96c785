"""Selectors: what picks parameters of a model for :func:`~transferkit.freeze.freeze` and friends.

A selector may be an ``nn.Module`` inside the model, a qualified name (a layer group, a module or a
parameter, tried in that order, also relative to the network an adapter wraps), a glob, a compiled
regular expression, a predicate ``(name, param) -> bool``, or a list of these (see
:mod:`transferkit.freeze`). :func:`select_parameters` resolves them to canonical parameter names; a
name that matches nothing is an error with close matches, never an empty selection.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 1)))
    >>> select_parameters(model, "1"), wrapper_prefix(model)
    (['1.0.weight', '1.0.bias'], '')
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.rename import is_under

__all__ = [
    "Selector",
    "check_model",
    "canonical_names",
    "layer_groups_of",
    "wrapper_prefix",
    "select_parameters",
]


Selector = nn.Module | str | re.Pattern | Callable[[str, nn.Parameter], bool] | Sequence[Any]


_GLOB_CHARS = frozenset("*?[")


def check_model(model: Any, caller: str = "transferkit") -> None:
    """Refuse a model argument that is not an ``nn.Module`` (a state dict, a name, ``None``).

    Raises:
        ConfigError: naming what was given.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{caller} needs the model itself (an nn.Module); got {type(model).__name__}: {model!r:.80}"
        )


def canonical_names(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, str]]:
    """Canonical name -> parameter, and every name (aliases of tied weights too) -> canonical name."""
    check_model(model)
    canonical = dict(model.named_parameters())
    by_id = {id(p): n for n, p in canonical.items()}
    alias = {n: by_id[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    return canonical, alias


def layer_groups_of(model: nn.Module) -> dict[str, list[str]] | None:
    fn = getattr(model, "layer_groups", None)
    return fn() if callable(fn) else None


def wrapper_prefix(model: nn.Module) -> str:
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
    """The canonical names one selector picks (for a list, those of each item)."""
    if isinstance(selector, nn.Module):
        return _by_module(model, selector, canonical)
    if isinstance(selector, re.Pattern):
        return _by_regex(selector, alias)
    if isinstance(selector, str):
        return _by_name(model, selector, alias)
    if isinstance(selector, torch.Tensor):
        # a parameter object itself (model.fc.weight); checked before Iterable, as tensors iterate
        return _by_tensor(selector, canonical)
    if callable(selector):
        return [n for n, p in canonical.items() if selector(n, p)]
    if isinstance(selector, Iterable):
        return [n for item in selector for n in _resolve_one(model, item, alias, canonical)]
    raise ConfigError(
        f"a selector must be a module, a name, a glob, a compiled regex, a predicate or a list of these; "
        f"got {type(selector).__name__}: {selector!r}"
    )


def _by_module(model: nn.Module, selector: nn.Module, canonical: dict) -> list[str]:
    if not any(m is selector for m in model.modules()):
        raise ConfigError(
            f"selector module {type(selector).__name__} is not a submodule of the model; "
            "pass a module taken from this model (e.g. model.layer1) or its qualified name."
        )
    ids = {id(p) for p in selector.parameters()}
    return [n for n, p in canonical.items() if id(p) in ids]


def _by_regex(selector: re.Pattern, alias: dict[str, str]) -> list[str]:
    hits = [canon for name, canon in alias.items() if selector.search(name)]
    if not hits:
        raise ConfigError(
            f"regex selector {selector.pattern!r} matched no parameter name; "
            "check it against summary(model) or list(model.named_parameters())."
        )
    return hits


def _by_name(model: nn.Module, selector: str, alias: dict[str, str]) -> list[str]:
    """A layer group, module or parameter name (also relative to a wrapped network), or a glob."""
    if not selector.strip():
        # "" names the root module, which would silently select every parameter (the head included)
        raise ConfigError(
            f"selector {selector!r} is empty; name a layer group, module, parameter or glob (e.g. "
            "'layer4' or 'layer[1-3].*'), or call freeze(model) with no selector to freeze everything"
        )
    if selector in alias and "." in selector:  # fast path: a full parameter name (lists of them are common)
        return [alias[selector]]
    groups = layer_groups_of(model)
    if groups is not None and selector in groups:
        return [alias[n] for n in groups[selector] if n in alias]
    modules = dict(model.named_modules())
    prefix = wrapper_prefix(model)
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


def _by_tensor(selector: torch.Tensor, canonical: dict) -> list[str]:
    hits = [n for n, p in canonical.items() if p is selector]
    if not hits:
        raise ConfigError(
            f"selector tensor of shape {tuple(selector.shape)} is not a parameter of the model; pass "
            "one taken from this model (e.g. model.fc.weight) or its name"
        )
    return hits


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
    canonical, alias = canonical_names(model)
    if not selectors:
        return list(canonical)
    picked = {n for s in selectors for n in _resolve_one(model, s, alias, canonical)}
    return [n for n in canonical if n in picked]
