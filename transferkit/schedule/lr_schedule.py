"""Learning-rate schedules that cover parameter groups added mid-run: :class:`LRSchedule`.

Every group's rate is ``lr = group["initial_lr"] * factor(step)``, so a group that joins later (a layer
group thawed by :class:`~transferkit.schedule.GradualUnfreeze`, or one added by hand) follows the same
curve as the groups that were there from the start -- the failure of schedulers that store one base rate
per group at construction (Lightning #8720, #12141, torch #79888). The state is the configuration and a
step counter, so resume is exact.

Example:
    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = LRSchedule(opt, "linear", total_steps=4)
    >>> sched.step(); sched.get_last_lr()
    [0.75]
"""

from __future__ import annotations

import bisect
import difflib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from transferkit.errors import CheckpointError, ConfigError

__all__ = ["LRSchedule"]

logger = logging.getLogger("transferkit.schedule")

#: the format of ``LRSchedule.state_dict()``
_STATE_VERSION = 1


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
        >>> from torch import nn
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
