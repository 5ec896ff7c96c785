"""The saved state of :class:`~transferkit.schedule.GradualUnfreeze`: optimizer groups by parameter name.

A resumed run must rebuild the optimizer's groups -- same names, order, parameters and hyperparameters --
*before* the optimizer's state is loaded into them (Lightning #6891). :func:`record_groups` writes the
groups down by parameter name, :func:`rebuild_groups` puts them back, and :func:`check_unfreeze_state`
refuses a state that is damaged or written for another model before anything is changed.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1)
    >>> opt = torch.optim.SGD([{"params": [model.weight], "name": "head"}], lr=0.1)
    >>> [(g["name"], g["param_names"]) for g in record_groups(opt, model)]
    [('head', ['weight'])]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from transferkit.errors import CheckpointError, ConfigError

__all__ = ["STATE_VERSION", "record_groups", "check_unfreeze_state", "rebuild_groups"]

logger = logging.getLogger("transferkit.schedule")

#: the format of ``GradualUnfreeze.state_dict()``; a newer one is refused
STATE_VERSION = 1

_REQUIRED = ("plan", "thawed", "last_epoch", "base_lr", "lr_decay", "train_bn", "frozen", "bn_locked")


def record_groups(optimizer: torch.optim.Optimizer | None, model: nn.Module) -> list[dict[str, Any]] | None:
    """The optimizer's groups, their parameters *by name*, and their hyperparameters; ``None`` without one."""
    if optimizer is None:
        return None
    name_of = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in name_of]
        if missing:
            raise ConfigError(
                f"optimizer group {group.get('name')!r} holds {len(missing)} tensors that are not "
                "parameters of the model, so they cannot be recorded by name"
            )
        hyper = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        out.append(
            {
                "name": group.get("name"),
                "param_names": [name_of[id(p)] for p in group["params"]],
                "with_names": "param_names" in group,
                "hyper": hyper,
            }
        )
    return out


def check_unfreeze_state(
    state: Any, layout: Mapping[str, list[str]], params: Mapping[str, nn.Parameter]
) -> None:
    """Refuse a state that is not a GradualUnfreeze state, is newer, damaged, or names groups or parameters
    the model lacks (``layout``: the schedule's layer groups; ``params``: the model's named parameters).

    Raises:
        CheckpointError: saying which of those it is.
    """
    if not isinstance(state, Mapping) or state.get("type") != "GradualUnfreeze":
        raise CheckpointError(
            f"expected a GradualUnfreeze state dict (from .state_dict()), got {type(state).__name__} "
            f"with keys {sorted(state)[:8] if isinstance(state, Mapping) else '-'}"
        )
    if state.get("version", 0) > STATE_VERSION:
        raise CheckpointError(f"GradualUnfreeze state version {state['version']} is newer than supported")
    absent = [k for k in _REQUIRED if k not in state]
    if absent:
        raise CheckpointError(
            f"the GradualUnfreeze state lacks {absent}; it is damaged or was not written by "
            "GradualUnfreeze.state_dict()"
        )
    unknown_groups = sorted(
        ({g for gs in state["plan"].values() for g in gs} | set(state["thawed"])) - set(layout)
    )
    if unknown_groups:
        raise CheckpointError(
            f"the GradualUnfreeze state names layer groups {unknown_groups} this model does not have "
            f"(its groups: {', '.join(layout)}); resume with the same architecture and groups="
        )
    recorded = state.get("optimizer_groups") or []
    wanted = set(state["frozen"]) | {n for g in recorded for n in g["param_names"]}
    unknown = sorted(wanted - set(params))
    if unknown:
        raise CheckpointError(
            f"the schedule state names {len(unknown)} parameters this model lacks, e.g. {unknown[:5]}; "
            "resume with the same architecture"
        )


def rebuild_groups(optimizer: torch.optim.Optimizer, params: dict[str, nn.Parameter], recorded: list) -> None:
    """Replace the optimizer's groups by the recorded ones; its per-parameter state is dropped."""
    if optimizer.state:
        # the documented order loads the schedule into a fresh optimizer; state here is about to be lost
        logger.warning(
            "GradualUnfreeze.load_state_dict drops the optimizer's existing state (%d tensors); load the "
            "schedule state *before* optimizer.load_state_dict / restore_checkpoint",
            len(optimizer.state),
        )
    optimizer.param_groups.clear()
    optimizer.state.clear()
    for g in recorded:
        members = [(n, params[n]) if g["with_names"] else params[n] for n in g["param_names"]]
        optimizer.add_param_group({**g["hyper"], "params": members})
    logger.info("rebuilt optimizer groups %s", [g["name"] for g in recorded])
