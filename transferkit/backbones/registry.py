"""Backbone names -> builders: torchvision, timm (``timm:NAME``) and user factories (``module.path:callable``).

A name resolves in this order:

1. ``timm:NAME`` -> ``timm.create_model(NAME, pretrained=False, ...)`` (weights are resolved by
   :mod:`transferkit.backbones.weights`, never by timm's downloader);
2. ``package.module:callable`` -> the user's own factory, imported and called with the keyword arguments
   it accepts;
3. a plain name -> the torchvision classification builder of that name
   (``torchvision.models.list_models(module=torchvision.models)``).

Example:
    >>> from transferkit.backbones.registry import resolve_backbone
    >>> spec = resolve_backbone("resnet18")
    >>> spec.source, spec.name
    ('torchvision', 'resnet18')
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from transferkit.errors import ConfigError

__all__ = ["BackboneSpec", "resolve_backbone", "list_backbones", "torchvision_names", "timm_names"]

logger = logging.getLogger(__name__)

Source = Literal["torchvision", "timm", "user"]


@dataclass(frozen=True)
class BackboneSpec:
    """A resolved backbone name.

    Attributes:
        name: the name inside its library (``"resnet50"``, ``"convnext_atto"``) or ``"module:callable"``.
        source: ``"torchvision"``, ``"timm"`` or ``"user"``.
        builder: a callable returning a freshly initialised ``nn.Module`` given keyword arguments.
    """

    name: str
    source: Source
    builder: Callable[..., nn.Module]

    @property
    def full_name(self) -> str:
        """The name as a user writes it (``timm:`` prefix for timm models)."""
        return f"timm:{self.name}" if self.source == "timm" else self.name

    def build(self, **kwargs: Any) -> nn.Module:
        """Build the network with random weights; unknown keyword arguments of user factories are dropped."""
        if self.source == "user":
            kwargs = _accepted_kwargs(self.builder, kwargs)
        try:
            model = self.builder(**kwargs)
        except TypeError as exc:
            # an argument the constructor does not take (a typo, timm's img_size= for torchvision):
            # the bare TypeError names neither the backbone nor what to do
            if "argument" not in str(exc):
                raise
            raise ConfigError(
                f"backbone {self.full_name!r} does not accept the arguments given: {exc}. transferkit passes "
                f"num_classes plus your extra keyword arguments ({', '.join(sorted(kwargs))}); drop or "
                "rename the ones its constructor does not take"
            ) from exc
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"backbone factory {self.name!r} returned {type(model).__name__}, expected an nn.Module; "
                "make the callable return the network."
            )
        return model


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """Every torchvision classification builder name (not detection, segmentation or video)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


@functools.cache
def timm_names() -> tuple[str, ...]:
    """Every timm architecture name (without pretrained tags)."""
    import timm

    return tuple(timm.list_models())


def list_backbones(pattern: str = "*") -> list[str]:
    """Backbone names matching a glob, torchvision names plain and timm names prefixed ``timm:``.

    Args:
        pattern: an ``fnmatch`` glob, matched against the plain torchvision name and the ``timm:``-prefixed
            timm name (a pattern without ``timm:`` also matches timm names by their bare name).

    Returns:
        Sorted torchvision matches followed by sorted timm matches.

    Example:
        >>> "resnet50" in list_backbones("resnet5*")
        True
        >>> list_backbones("timm:mobilenetv3_small_05*")
        ['timm:mobilenetv3_small_050']
    """
    if not isinstance(pattern, str):
        raise ConfigError(f"list_backbones takes a glob string such as 'resnet*'; got {pattern!r}")
    tv = [n for n in torchvision_names() if fnmatch.fnmatchcase(n, pattern)]
    bare = pattern[len("timm:") :] if pattern.startswith("timm:") else pattern
    tm = [f"timm:{n}" for n in timm_names() if fnmatch.fnmatchcase(n, bare)]
    if pattern.startswith("timm:"):
        tv = []
    return sorted(tv) + sorted(tm)


def resolve_backbone(name: str) -> BackboneSpec:
    """Resolve a backbone name to a :class:`BackboneSpec`.

    Args:
        name: a torchvision name (``"resnet50"``), ``"timm:NAME"`` or ``"package.module:callable"``.

    Raises:
        ConfigError: the name is unknown (the message lists close matches) or the factory cannot be imported.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"backbone name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name.startswith("timm:"):
        return _resolve_timm(name[len("timm:") :])
    if ":" in name:
        return _resolve_user(name)
    if name in torchvision_names():
        import torchvision

        return BackboneSpec(name, "torchvision", torchvision.models.get_model_builder(name))
    raise _unknown(name)


def _resolve_timm(name: str) -> BackboneSpec:
    import timm

    arch = name.split(".", 1)[0]  # "resnet18.a1_in1k": the tag picks pretrained weights, not the architecture
    if arch not in timm_names():
        raise _unknown(f"timm:{name}")

    def build(**kwargs: Any) -> nn.Module:
        return timm.create_model(name, pretrained=False, **kwargs)

    return BackboneSpec(name, "timm", build)


def _resolve_user(name: str) -> BackboneSpec:
    module_path, _, attr = name.partition(":")
    module_path, attr = module_path.strip(), attr.strip()
    if not module_path or not attr or any(not part for part in attr.split(".")):
        raise ConfigError(
            f"backbone {name!r}: a factory is written 'package.module:callable' with both parts non-empty, "
            "e.g. 'mypkg.nets:resnet20'"
        )
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise ConfigError(
            f"backbone {name!r}: cannot import module {module_path!r} ({exc}); "
            "a factory is written 'package.module:callable' and the module must be importable "
            "(installed, or its folder on PYTHONPATH)."
        ) from exc
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            public = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(attr, public, n=5)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ConfigError(f"backbone {name!r}: module {module_path!r} has no attribute {attr!r}.{hint}")
    if not callable(factory):
        raise ConfigError(f"backbone {name!r}: {attr!r} is a {type(factory).__name__}, expected a callable")
    return BackboneSpec(name, "user", factory)


def _accepted_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` a user factory accepts (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    dropped = sorted(set(kwargs) - set(params))
    if dropped:
        logger.debug("factory %s does not accept %s; the head is replaced afterwards", fn, dropped)
    return {k: v for k, v in kwargs.items() if k in params}


def _unknown(name: str) -> ConfigError:
    candidates = list(torchvision_names()) + [f"timm:{n}" for n in timm_names()]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    if not close and not name.startswith("timm:"):
        close = difflib.get_close_matches(f"timm:{name}", candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(
        f"unknown backbone {name!r}.{hint} Plain names are torchvision models, 'timm:NAME' timm models, "
        "'package.module:callable' your own factory; list_backbones('pattern*') lists the known names "
        "(from a shell: python -c \"import transferkit; print(transferkit.list_backbones('res*'))\").",
        param="backbone",
    )
