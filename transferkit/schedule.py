"""Gradual unfreezing and learning-rate schedules that cover parameter groups added mid-run, and resume.

:class:`GradualUnfreeze` starts from "head only" and thaws an adapter's layer groups from the top down,
one every ``every`` epochs or at the epochs given in ``at``; each thawed group joins the optimizer as a new
named group at a discriminative rate (``lr * lr_decay**depth``, depth counted from the head), or at its
layers' rates under layer-wise decay (``layer_decay``, see :func:`transferkit.optim.layer_decay_scales`).
:class:`LRSchedule` sets every group's ``lr = group["initial_lr"] * factor(step)``, so a group that joins
later follows the same curve as the groups that were there from the start (the failure of schedulers that
store one base rate per group at construction: Lightning #8720, #12141, torch #79888).

Both have ``state_dict()`` / ``load_state_dict()``. The unfreeze schedule records its phase, which
parameters are frozen, which BatchNorm layers are held in eval mode, and the optimizer's groups *by
parameter name*, so a resumed run rebuilds the same groups, in the same order, before the optimizer's state
is loaded into them (Lightning #6891).

Resume order, in a fresh process::

    model = create_model("resnet18", num_classes=10)
    unfreeze_sched = GradualUnfreeze(model, every=2)          # 1. same schedule: freezes to head only
    optimizer = build_optimizer(model, "adamw", lr=1e-3)      # 2. same optimizer (head groups only)
    lr_sched = LRSchedule(optimizer, "cosine", total_steps=1000, warmup_steps=50)
    ckpt = load_checkpoint("last.pt")
    unfreeze_sched.load_state_dict(ckpt["extra"]["freeze_schedule"], optimizer)  # 3. groups + requires_grad
    restore_checkpoint(ckpt, model=model, optimizer=optimizer)                   # 4. weights, state, RNG
    lr_sched.load_state_dict(ckpt["extra"]["lr_schedule"])                       # 5. step counter
    for epoch in range(ckpt["epoch"] + 1, epochs):
        unfreeze_sched.step(epoch, optimizer)   # at the start of every epoch
        for batch in loader:
            ...; optimizer.step(); lr_sched.step()

and when saving: ``save_checkpoint(path, model=model, optimizer=optimizer, epoch=epoch,
extra={"freeze_schedule": unfreeze_sched.state_dict(), "lr_schedule": lr_sched.state_dict()})``.

Example:
    >>> import torch.nn as nn
    >>> from transferkit.optim import build_optimizer
    >>> class Net(nn.Sequential):
    ...     def layer_groups(self):
    ...         return {"body": ["0.weight", "0.bias"], "head": ["1.weight", "1.bias"]}
    >>> net = Net(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> sched = GradualUnfreeze(net, at={1: "body"}, lr_decay=0.1)
    >>> opt = build_optimizer(net, "sgd", lr=1.0)
    >>> [g["name"] for g in opt.param_groups]
    ['head']
    >>> sched.step(0, opt), sched.step(1, opt)
    ([], ['body'])
    >>> [(g["name"], g["lr"]) for g in opt.param_groups]
    [('head', 1.0), ('body', 0.1)]
"""

from __future__ import annotations

import bisect
import difflib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferkit.errors import CheckpointError, ConfigError, LayerGroupError
from transferkit.freeze import freeze, is_bn_locked, lock_bn, select_parameters, unfreeze, unlock_bn
from transferkit.optim import add_param_group, layer_decay_scales

__all__ = ["GradualUnfreeze", "LRSchedule"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


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
            f"`at`={epoch}:{group}: {group!r} is not a layer group below the head; expected one of {', '.join(below)}.",
            group=group,
            epoch=epoch,
            expected=below,
            param="at",
            hint=f"Did you mean {', '.join(close)}?" if close else None,
        )
    if group in seen:
        raise LayerGroupError(
            f"`at`: layer group {group!r} is given twice; name each group once", group=group, epoch=epoch, expected=below,
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

    # ------------------------------------------------------------------------------------------------------
    # state

    def _optimizer_groups(self) -> list[dict[str, Any]] | None:
        if self.optimizer is None:
            return None
        name_of = {id(p): n for n, p in self.model.named_parameters()}
        out = []
        for group in self.optimizer.param_groups:
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

    def state_dict(self) -> dict[str, Any]:
        """Phase, frozen parameters, BN layers held in eval, and the optimizer's groups by parameter name."""
        return {
            "version": _STATE_VERSION,
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
            "optimizer_groups": self._optimizer_groups(),
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
        if not isinstance(state, Mapping) or state.get("type") != "GradualUnfreeze":
            raise CheckpointError(
                f"expected a GradualUnfreeze state dict (from .state_dict()), got {type(state).__name__} "
                f"with keys {sorted(state)[:8] if isinstance(state, Mapping) else '-'}"
            )
        if state.get("version", 0) > _STATE_VERSION:
            raise CheckpointError(f"GradualUnfreeze state version {state['version']} is newer than supported")
        required = ("plan", "thawed", "last_epoch", "base_lr", "lr_decay", "train_bn", "frozen", "bn_locked")
        absent = [k for k in required if k not in state]
        if absent:
            raise CheckpointError(
                f"the GradualUnfreeze state lacks {absent}; it is damaged or was not written by "
                "GradualUnfreeze.state_dict()"
            )
        unknown_groups = sorted(
            ({g for gs in state["plan"].values() for g in gs} | set(state["thawed"])) - set(self.layout)
        )
        if unknown_groups:
            raise CheckpointError(
                f"the GradualUnfreeze state names layer groups {unknown_groups} this model does not have "
                f"(its groups: {', '.join(self.order)}); resume with the same architecture and groups="
            )
        params = dict(self.model.named_parameters())
        recorded = state.get("optimizer_groups") or []
        wanted = set(state["frozen"]) | {n for g in recorded for n in g["param_names"]}
        unknown = sorted(wanted - set(params))
        if unknown:
            raise CheckpointError(
                f"the schedule state names {len(unknown)} parameters this model lacks, e.g. {unknown[:5]}; "
                "resume with the same architecture"
            )
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
        frozen = set(state["frozen"])
        for n, p in params.items():
            p.requires_grad_(n not in frozen)
        locked = set(state["bn_locked"])
        for n, m in self.model.named_modules():
            if n in locked:
                lock_bn(m)
            elif isinstance(m, _BatchNorm) and is_bn_locked(m):
                unlock_bn(m, self.model.training)
        if optimizer is not None:
            self.optimizer = optimizer
            if state.get("optimizer_groups") is not None:
                _rebuild_groups(optimizer, params, recorded)

    def __repr__(self) -> str:
        decay = (
            f"layer_decay={self.layer_decay}" if self.layer_decay is not None else f"lr_decay={self.lr_decay}"
        )
        return f"GradualUnfreeze(plan={self.plan}, thawed={self.thawed}, {decay})"


def _rebuild_groups(
    optimizer: torch.optim.Optimizer, params: dict[str, nn.Parameter], recorded: list
) -> None:
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


# ----------------------------------------------------------------------------------------------------------
# learning-rate schedules


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


class LRSchedule:
    """A learning-rate curve applied to every group as ``lr = initial_lr * factor(step)``.

    Groups without ``initial_lr`` get their current ``lr`` as one the first time the schedule sees them,
    so groups added at any time -- by :class:`GradualUnfreeze` or by hand -- follow the curve. Call
    :meth:`step` after each ``optimizer.step()``, like torch's schedulers.

    Args:
        optimizer: any torch optimizer.
        kind: ``"cosine"`` (optional linear warmup), ``"linear"``, ``"step"``, ``"onecycle"``, ``"none"``.
        total_steps: length of the run in steps (required except for ``"step"`` and ``"none"``).
        warmup_steps: linear warmup from ``warmup_start_factor`` to 1 (not with ``"onecycle"``).
        min_factor: where cosine/linear end, as a fraction of ``initial_lr``.
        warmup_start_factor: the factor at step 0 of the warmup.
        milestones: ``"step"``: multiply by ``gamma`` at each of these steps ...
        step_size: ... or every ``step_size`` steps.
        gamma: the ``"step"`` decay factor.
        pct_start, div_factor, final_div_factor: ``"onecycle"`` as in ``torch.optim.lr_scheduler.OneCycleLR``
            (``initial_lr`` is the peak; momentum is not cycled).

    Example:
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = LRSchedule(opt, "cosine", total_steps=4)
        >>> [round(sched.factor(s), 3) for s in range(5)]
        [1.0, 0.854, 0.5, 0.146, 0.0]
    """

    KINDS = ("cosine", "linear", "step", "onecycle", "none")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str = "cosine",
        total_steps: int | None = None,
        warmup_steps: int = 0,
        *,
        min_factor: float = 0.0,
        warmup_start_factor: float = 0.01,
        milestones: Sequence[int] | None = None,
        step_size: int | None = None,
        gamma: float = 0.1,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"LRSchedule needs a torch optimizer (e.g. from build_optimizer), got {type(optimizer).__name__}"
            )
        if milestones is not None and (
            isinstance(milestones, str)
            or not isinstance(milestones, Sequence)
            or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in milestones)
        ):
            raise ConfigError(f"milestones must be a list of integer steps >= 0, got {milestones!r}")
        self.optimizer = optimizer
        self.config = {
            "kind": kind,
            "total_steps": total_steps,
            "warmup_steps": warmup_steps,
            "min_factor": min_factor,
            "warmup_start_factor": warmup_start_factor,
            "milestones": sorted(milestones) if milestones is not None else None,
            "step_size": step_size,
            "gamma": gamma,
            "pct_start": pct_start,
            "div_factor": div_factor,
            "final_div_factor": final_div_factor,
        }
        self._validate(self.config)
        self.last_step = 0
        self.apply()

    @classmethod
    def _validate(cls, c: dict[str, Any]) -> None:
        kind, total, warm = c["kind"], c["total_steps"], c["warmup_steps"]
        if kind not in cls.KINDS:
            close = difflib.get_close_matches(str(kind), cls.KINDS, n=2)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown LR schedule {kind!r}; expected one of {', '.join(cls.KINDS)}.{hint}")
        for option in (
            "min_factor",
            "warmup_start_factor",
            "gamma",
            "pct_start",
            "div_factor",
            "final_div_factor",
        ):
            value = c[option]
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"{option} must be a finite number, got {value!r}")
        if not c["div_factor"] > 0 or not c["final_div_factor"] > 0:
            raise ConfigError("div_factor and final_div_factor must be > 0")
        if kind in ("cosine", "linear", "onecycle") and not (isinstance(total, int) and total >= 1):
            raise ConfigError(f"LR schedule {kind!r} needs total_steps (an integer >= 1), got {total!r}")
        if not (isinstance(warm, int) and warm >= 0):
            raise ConfigError(f"warmup_steps must be an integer >= 0, got {warm!r}")
        if total is not None and warm >= total and kind != "none":
            raise ConfigError(f"warmup_steps ({warm}) must be smaller than total_steps ({total})")
        if kind == "onecycle" and warm:
            raise ConfigError("onecycle has its own warmup (pct_start); give warmup_steps=0")
        if (
            kind == "step"
            and c["milestones"] is None
            and not (isinstance(c["step_size"], int) and c["step_size"] >= 1)
        ):
            raise ConfigError("the 'step' schedule needs milestones=[...] or step_size >= 1")
        if not 0 <= c["min_factor"] <= 1 or not 0 <= c["warmup_start_factor"] <= 1:
            raise ConfigError("min_factor and warmup_start_factor must be in [0, 1]")
        if not 0 < c["gamma"] <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {c['gamma']!r}")
        if kind == "onecycle" and not 0 < c["pct_start"] < 1:
            raise ConfigError(f"pct_start must be in (0, 1), got {c['pct_start']!r}")

    def factor(self, step: int) -> float:
        """The multiplier of every group's ``initial_lr`` at ``step`` (0-based optimizer steps)."""
        c = self.config
        kind, total, warm = c["kind"], c["total_steps"], c["warmup_steps"]
        if kind == "onecycle":
            peak = c["pct_start"] * total - 1
            start = 1.0 / c["div_factor"]
            if step <= peak:
                return _cos_anneal(start, 1.0, step / peak) if peak > 0 else 1.0
            end_step = max(total - 1, peak + 1)
            pct = min(1.0, (step - peak) / (end_step - peak))
            return _cos_anneal(1.0, start / c["final_div_factor"], pct)
        if warm and step < warm:
            w = c["warmup_start_factor"] + (1 - c["warmup_start_factor"]) * step / warm
        else:
            w = 1.0
        if kind == "step":
            if c["milestones"] is not None:
                drops = bisect.bisect_right(c["milestones"], step)
            else:
                drops = step // c["step_size"]
            return w * c["gamma"] ** drops
        if kind == "none" or step < warm:
            return w
        progress = min(1.0, (step - warm) / max(1, total - warm))
        lo = c["min_factor"]
        if kind == "linear":
            return 1.0 - (1.0 - lo) * progress
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self) -> None:
        """Set every group's ``lr`` for the current step (groups added since the last call included)."""
        f = self.factor(self.last_step)
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", float(group["lr"]))
            lr = group["initial_lr"] * f
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # fused/capturable optimizers keep lr as a tensor
            else:
                group["lr"] = lr

    def step(self) -> None:
        """Advance one optimizer step and set the rates for the next one."""
        self.last_step += 1
        self.apply()

    def get_last_lr(self) -> list[float]:
        """The current rate of every group, like torch's schedulers."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """The configuration and the step counter."""
        return {"type": "LRSchedule", "version": _STATE_VERSION, **self.config, "last_step": self.last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the step counter (and configuration) and set the rates for it.

        Raises:
            CheckpointError: not an LRSchedule state.
        """
        if not isinstance(state, Mapping) or state.get("type") != "LRSchedule":
            raise CheckpointError(
                f"expected an LRSchedule state dict (from .state_dict()), got {state!r:.200}"
            )
        last_step = state.get("last_step")
        if not isinstance(last_step, int) or isinstance(last_step, bool) or last_step < 0:
            raise CheckpointError(
                f"the LRSchedule state has last_step={last_step!r}; expected an integer >= 0 (the state is "
                "damaged or not from LRSchedule.state_dict())"
            )
        config = {k: state[k] for k in self.config if k in state}
        if config != self.config:
            logger.warning("resuming LR schedule with the saved configuration %s", config)
        merged = {**self.config, **config}
        try:
            self._validate(merged)
        except ConfigError as exc:
            raise CheckpointError(f"the saved LRSchedule configuration is invalid: {exc}") from exc
        self.config = merged
        self.last_step = last_step
        self.apply()

    def __repr__(self) -> str:
        return f"LRSchedule({self.config['kind']!r}, step={self.last_step})"
