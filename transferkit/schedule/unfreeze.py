"""Gradual unfreezing: :class:`GradualUnfreeze` thaws an adapter's layer groups from the top down.

It starts from "head only" and thaws a group every ``every`` epochs or at the epochs given in ``at``; each
thawed group joins the optimizer as a new named group at a discriminative rate (``lr * lr_decay**depth``,
depth counted from the head), or at its layers' rates under layer-wise decay (``layer_decay``, see
:func:`transferkit.optim.layer_decay_scales`). Its saved state (optimizer groups by parameter name) is
written and checked in :mod:`transferkit.schedule.unfreeze_state`.

Example:
    >>> import torch.nn as nn
    >>> class Net(nn.Sequential):
    ...     def layer_groups(self):
    ...         return {"a": ["0.weight"], "b": ["1.weight"], "head": ["2.weight"]}
    >>> GradualUnfreeze(Net(*(nn.Linear(2, 2, bias=False) for _ in range(3))), every=2).plan
    {2: ['b'], 4: ['a']}
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferkit.errors import ConfigError, LayerGroupError
from transferkit.freeze import freeze, is_bn_locked, lock_bn, select_parameters, unfreeze, unlock_bn
from transferkit.optim import add_param_group, layer_decay_scales
from transferkit.schedule.unfreeze_state import (
    STATE_VERSION,
    check_unfreeze_state,
    rebuild_groups,
    record_groups,
)

__all__ = ["GradualUnfreeze"]

logger = logging.getLogger("transferkit.schedule")


def _group_layout(model: nn.Module, groups: Mapping[str, Any] | None) -> dict[str, list[str]]:
    if groups is None:
        fn = getattr(model, "layer_groups", None)
        if not callable(fn):
            raise ConfigError(
                f"GradualUnfreeze needs layer groups, but {type(model).__name__} has no layer_groups(); "
                "pass groups={'name': selector, ...} ordered from input to output (last = head), "
                "or build the model with create_model"
            )
        groups = fn()
    layout = {
        g: select_parameters(model, list(sel) if not isinstance(sel, str) else sel)
        for g, sel in groups.items()
    }
    if len(layout) < 2:
        raise ConfigError(f"gradual unfreezing needs at least two layer groups, got {list(layout)}")
    return layout


def _check_group(group: str, epoch: int, below: list[str], seen: set[str]) -> None:
    """LayerGroupError (with the data a caller needs to say it in its words) for a group ``at=`` cannot use."""
    if group not in below:
        close = difflib.get_close_matches(str(group), below, n=3)
        raise LayerGroupError(
            f"`at`={epoch}:{group}: {group!r} is not a layer group below the head; expected one of "
            f"{', '.join(below)}.",
            group=group,
            epoch=epoch,
            expected=below,
            param="at",
            hint=f"Did you mean {', '.join(close)}?" if close else None,
        )
    if group in seen:
        raise LayerGroupError(
            f"`at`: layer group {group!r} is given twice; name each group once", group=group, epoch=epoch,
            expected=below,
            repeated=True, param="at",
        )  # fmt: skip


class GradualUnfreeze:
    """Thaw layer groups from the top down during training, each as a new optimizer group.

    Construction freezes every group but the top one (the head). Call :meth:`step` at the start of
    every epoch; it thaws the groups due by then and adds them to the optimizer. Epochs here (``at=``
    keys, :attr:`plan`, ``step``'s argument) count from 0: ``at={2: "layer4"}`` thaws ``layer4`` after two
    epochs, so it trains from the third; log lines count from 1.

    Args:
        model: a module with ``layer_groups()`` (an adapter), or any module with ``groups=``.
        every: thaw one more group every this many epochs: the group ``k`` levels below the head thaws at
            epoch ``start_epoch + k * every``.
        at: explicit plan ``{epoch: group or [groups]}``, e.g. ``{1: "layer4", 3: ["layer3", "layer2"]}``.
            Groups never named stay frozen.
        lr_decay: a thawed group ``k`` levels below the head trains at ``lr * lr_decay**k`` (default 0.5,
            or 1 with ``layer_decay``).
        layer_decay: layer-wise rates instead: a thawed parameter trains at ``lr * layer_decay**k``, ``k``
            its layers below the head (:func:`~transferkit.optim.layer_decay_scales`); give the optimizer
            the same ``layer_decay`` so that groups there from the start follow the same rule.
        start_epoch: the first epoch counted by ``every``.
        train_bn: let frozen groups' BatchNorm layers keep training (default: held in eval mode until
            their group thaws; converting to ``FrozenBatchNorm2d`` is not offered here, being permanent).
        max_groups: with ``every``, stop after thawing this many groups.
        lr: the head's rate; default: the ``initial_lr`` of the optimizer's top group at the first thaw.
        groups: ``{name: selector}`` ordered input -> output, overriding ``layer_groups()``.

    Raises:
        ConfigError: neither or both of ``every``/``at``, unknown group names, bad numbers.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int | None = None,
        at: Mapping[int, str | Sequence[str]] | None = None,
        lr_decay: float | None = None,
        start_epoch: int = 0,
        train_bn: bool = False,
        max_groups: int | None = None,
        lr: float | None = None,
        groups: Mapping[str, Any] | None = None,
        layer_decay: float | None = None,
    ) -> None:
        if (every is None) == (at is None):
            raise ConfigError(
                "give exactly one of every=K (thaw a group every K epochs) or at={epoch: group}"
            )
        if layer_decay is not None and lr_decay not in (None, 1, 1.0):
            raise ConfigError(
                f"give one of lr_decay (per layer group, got {lr_decay!r}) and layer_decay (per layer, got "
                f"{layer_decay!r}), not both"
            )
        if lr_decay is None:
            lr_decay = 1.0 if layer_decay is not None else 0.5
        if not (isinstance(lr_decay, int | float) and 0 < lr_decay <= 1):
            raise ConfigError(f"lr_decay must be in (0, 1], got {lr_decay!r}")
        if lr is not None and not lr > 0:
            raise ConfigError(f"lr must be positive, got {lr!r}")
        self.model = model
        self.layout = _group_layout(model, groups)
        self.order = list(self.layout)  # input -> output; the last is the head
        self.lr_decay = float(lr_decay)
        self.layer_decay = layer_decay
        self._groups = groups
        self.lr_scales = (
            layer_decay_scales(model, layer_decay, groups=groups) if layer_decay is not None else None
        )
        self.train_bn = train_bn
        self._warned_frozen = False
        self.base_lr = lr
        self.plan = self._make_plan(every, at, start_epoch, max_groups)
        self.thawed: list[str] = []
        self.last_epoch: int | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        below = [n for g in self.order[:-1] for n in self.layout[g]]
        if below:
            freeze(model, below, train_bn=train_bn)
        unfreeze(model, self.layout[self.order[-1]])

    @classmethod
    def fine_tune(
        cls, model: nn.Module, freeze_epochs: int = 1, *, lr_decay: float | None = None, **kwargs: Any
    ) -> GradualUnfreeze:
        """fastai's ``fine_tune``: head only for ``freeze_epochs``, then every group at once, discriminative.

        Example:
            >>> class Net(nn.Sequential):
            ...     def layer_groups(self):
            ...         return {"a": ["0.weight"], "b": ["1.weight"], "head": ["2.weight"]}
            >>> GradualUnfreeze.fine_tune(Net(*(nn.Linear(2, 2, bias=False) for _ in range(3)))).plan
            {1: ['b', 'a']}
        """
        probe = _group_layout(model, kwargs.get("groups"))
        below = list(probe)[:-1][::-1]
        return cls(model, at={freeze_epochs: below}, lr_decay=lr_decay, **kwargs)

    def _make_plan(self, every: int | None, at: Mapping | None, start: int, max_groups: int | None) -> dict:
        below = self.order[:-1][::-1]  # top down
        if every is not None:
            if not (isinstance(every, int) and every >= 1):
                raise ConfigError(f"every must be an integer >= 1, got {every!r}")
            if max_groups is not None:
                below = below[:max_groups]
            return {start + (k + 1) * every: [g] for k, g in enumerate(below)}
        plan: dict[int, list[str]] = {}
        seen: set[str] = set()
        for epoch, value in sorted(at.items()):
            names = [value] if isinstance(value, str) else list(value)
            if not (isinstance(epoch, int) and epoch >= 0):
                raise ConfigError(f"epochs in at= must be integers >= 0, got {epoch!r}")
            for g in names:
                _check_group(g, epoch, below, seen)
                seen.add(g)
            plan[epoch] = names
        return plan

    def depth(self, group: str) -> int:
        """How many levels below the head ``group`` sits (the head is 0)."""
        return len(self.order) - 1 - self.order.index(group)

    def _base_lr(self, optimizer: torch.optim.Optimizer) -> float:
        if self.base_lr is None:
            top = self.order[-1]
            named = [g for g in optimizer.param_groups if g.get("name") in (top, f"{top}.no_decay")]
            pool = named or optimizer.param_groups
            self.base_lr = max(float(g.get("initial_lr", g["lr"])) for g in pool)
        return self.base_lr

    def step(self, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
        """Thaw the groups due by ``epoch`` (call at the start of each epoch); returns their names.

        ``epoch`` counts from 0, as the keys of :attr:`plan` and ``at=`` do; the log line it writes counts
        from 1 (``step(2)`` logs "epoch 3: thawed ..."), as a training console does. Groups whose epoch was
        skipped are thawed too; calling twice for one epoch thaws nothing new.
        """
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ConfigError(f"step(epoch): epoch must be an integer >= 0 (counting from 0), got {epoch!r}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"step(epoch, optimizer): optimizer must be a torch optimizer, got {type(optimizer).__name__}"
            )
        optimizer = optimizer if optimizer is not None else self.optimizer
        self.optimizer = optimizer
        if optimizer is not None and not self._warned_frozen:
            self._warned_frozen = True
            frozen = sum(1 for g in optimizer.param_groups for p in g["params"] if not p.requires_grad)
            if frozen:
                # such parameters would stay in their old group at its rate when their layer group thaws
                logger.warning(
                    "the optimizer holds %d frozen parameters; build it after creating the schedule "
                    "(build_optimizer takes trainable parameters only)",
                    frozen,
                )
        due = [g for e in sorted(self.plan) if e <= epoch for g in self.plan[e] if g not in self.thawed]
        for g in due:
            unfreeze(self.model, self.layout[g])
            if optimizer is not None:
                lr = self._base_lr(optimizer) * self.lr_decay ** self.depth(g)
                add_param_group(
                    optimizer, self.model, self.layout[g], lr=lr, group_name=g, lr_scales=self.lr_scales
                )
            self.thawed.append(g)
        if due:
            # people count epochs from 1 (the CLI's "epoch 3/5"); ``epoch`` and the plan's keys count from 0
            logger.info("epoch %d: thawed %s", epoch + 1, ", ".join(due))
        self.last_epoch = epoch
        return due

    def state_dict(self) -> dict[str, Any]:
        """Phase, frozen parameters, BN layers held in eval, and the optimizer's groups by parameter name."""
        return {
            "version": STATE_VERSION,
            "type": "GradualUnfreeze",
            "plan": {int(e): list(g) for e, g in self.plan.items()},
            "thawed": list(self.thawed),
            "last_epoch": self.last_epoch,
            "base_lr": self.base_lr,
            "lr_decay": self.lr_decay,
            "layer_decay": self.layer_decay,
            "train_bn": self.train_bn,
            "frozen": [n for n, p in self.model.named_parameters() if not p.requires_grad],
            "bn_locked": [n for n, m in self.model.named_modules() if is_bn_locked(m)],
            "optimizer_groups": record_groups(self.optimizer, self.model),
        }

    def load_state_dict(
        self, state: Mapping[str, Any], optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Restore the phase and the model's requires_grad/BN state, and rebuild ``optimizer``'s groups.

        Call it *before* ``optimizer.load_state_dict`` (or ``restore_checkpoint``): the optimizer's groups
        are replaced by the recorded ones, same names, order, parameters and hyperparameters, so the saved
        optimizer state then lines up group for group.

        Raises:
            CheckpointError: the state is not a GradualUnfreeze state or names parameters the model lacks.
        """
        params = dict(self.model.named_parameters())
        check_unfreeze_state(state, self.layout, params)
        self._restore_phase(state)
        self._restore_model(state, params)
        if optimizer is not None:
            self.optimizer = optimizer
            if state.get("optimizer_groups") is not None:
                rebuild_groups(optimizer, params, state["optimizer_groups"])

    def _restore_phase(self, state: Mapping[str, Any]) -> None:
        """The plan, what has thawed, and the rates of the groups still to thaw, as saved."""
        plan = {int(e): list(g) for e, g in state["plan"].items()}
        if plan != self.plan:
            logger.warning("resuming with the saved unfreeze plan %s instead of %s", plan, self.plan)
        self.plan = plan
        self.thawed = list(state["thawed"])
        self.last_epoch = state["last_epoch"]
        self.base_lr = state["base_lr"]
        self.lr_decay = state["lr_decay"]
        if state.get("layer_decay") != self.layer_decay:
            # groups thawed from now on follow the saved rule, as the saved plan and lr_decay do
            self.layer_decay = state.get("layer_decay")
            self.lr_scales = (
                layer_decay_scales(self.model, self.layer_decay, groups=self._groups)
                if self.layer_decay is not None
                else None
            )
        self.train_bn = state["train_bn"]

    def _restore_model(self, state: Mapping[str, Any], params: Mapping[str, nn.Parameter]) -> None:
        """Which parameters are frozen and which BatchNorm layers are held in eval mode, as saved."""
        frozen = set(state["frozen"])
        for n, p in params.items():
            p.requires_grad_(n not in frozen)
        locked = set(state["bn_locked"])
        for n, m in self.model.named_modules():
            if n in locked:
                lock_bn(m)
            elif isinstance(m, _BatchNorm) and is_bn_locked(m):
                unlock_bn(m, self.model.training)

    def __repr__(self) -> str:
        decay = (
            f"layer_decay={self.layer_decay}" if self.layer_decay is not None else f"lr_decay={self.lr_decay}"
        )
        return f"GradualUnfreeze(plan={self.plan}, thawed={self.thawed}, {decay})"
