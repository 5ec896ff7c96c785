"""The optimizers :func:`~transferkit.optim.build_optimizer` knows, by name, and the options each one takes.

``OPTIMIZERS`` maps a name to a factory ``(groups, options) -> optimizer`` (each group already holds its
own ``lr`` and ``weight_decay``); an option the chosen optimizer would silently ignore (``betas`` for SGD,
``momentum`` for Adam) is an error, not a no-op (:func:`check_consistent`).

Example:
    >>> optimizer_names()
    ['adam', 'adamw', 'nadam', 'radam', 'rmsprop', 'sgd']
    >>> optimizer_key("AdamW")
    'adamw'
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch

from transferkit.errors import ConfigError

__all__ = ["OPTIMIZERS", "DEFAULT_MOMENTUM", "optimizer_names", "optimizer_key", "check_consistent"]


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


def optimizer_key(name: str) -> str:
    """The ``OPTIMIZERS`` key of ``name`` (case-insensitive).

    Raises:
        ConfigError: an unknown name, with the known ones and close matches.
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        close = difflib.get_close_matches(key, OPTIMIZERS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown optimizer {name!r}; expected one of {', '.join(optimizer_names())}.{hint}"
        )
    return key


# which of the optional hyperparameters each optimizer takes: giving one it ignores is an error, not a no-op
_TAKES: dict[str, frozenset[str]] = {
    "sgd": frozenset({"momentum", "nesterov"}),
    "rmsprop": frozenset({"momentum", "eps"}),
    **{k: frozenset({"betas", "eps"}) for k in ("adam", "adamw", "nadam", "radam")},
}


DEFAULT_MOMENTUM = 0.9


def check_consistent(key: str, given: dict[str, Any]) -> None:
    """Reject hyperparameters the chosen optimizer would silently ignore (betas for SGD, ...)."""
    ignored = sorted(k for k, v in given.items() if v is not None and k not in _TAKES[key])
    if ignored:
        takers = sorted(n for n, t in _TAKES.items() if set(ignored) <= t)
        hint = f" ({', '.join(ignored)} is taken by {', '.join(takers)})" if takers else ""
        raise ConfigError(
            f"optimizer {key!r} does not take {', '.join(ignored)}{hint}; drop the option or choose "
            "an optimizer that uses it"
        )
