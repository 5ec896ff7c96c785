"""Named parameter groups: layer groups -> parameter names, and the group dicts an optimizer takes.

:func:`group_layout` maps group names to parameter names (the model's ``layer_groups()`` or a ``groups=``
mapping, every parameter once, a tied one in the topmost group); :func:`split_groups` makes the dicts
(trainable parameters only, a ``"<group>.no_decay"`` sibling for biases and norm weights, see
:func:`no_decay_names`); :func:`scale_buckets` splits a group whose layers train at several rates.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> group_layout(model, {"body": "0", "head": "1"}, need_groups=True)
    {'body': ['0.weight', '0.bias'], 'head': ['1.weight', '1.bias']}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from transferkit.errors import ConfigError
from transferkit.freeze import select_parameters

__all__ = ["no_decay_names", "group_layout", "split_groups", "scale_buckets"]

logger = logging.getLogger("transferkit.optim")


_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay: biases, other 0/1-d tensors, normalisation weights.

    Example:
        >>> sorted(no_decay_names(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))))
        ['0.bias', '1.bias', '1.weight']
    """
    norm_ids = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters()}
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or id(p) in norm_ids}


def group_layout(
    model: nn.Module, groups: Mapping[str, Any] | None, need_groups: bool
) -> dict[str, list[str]]:
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


def split_groups(
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


def scale_buckets(
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
