"""A training checkpoint beyond the weights, and how it goes back: the order exact resume needs.

:class:`TrainingParts` names the live objects a checkpoint restores; :func:`training_extra` is what goes
into its ``extra`` (the schedules', EMA's and loader generator's states, the history and the best epoch);
:func:`restore_training` puts a checkpoint back into the parts -- the thaw schedule's groups first, so the
optimizer state then loads into the same groups in the same order -- and returns the run's
:class:`Progress`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transferkit.errors import CheckpointError
from transferkit.recipes import ModelEma

__all__ = ["Progress", "TrainingParts", "restore_training", "training_extra"]


@dataclass(frozen=True)
class Progress:
    """Where a run stands: its history rows, its best epoch (from 0; -1 before any), that epoch's score and
    which weights reached it (``"model"``, or ``"ema"`` when the EMA validated better)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = -1
    best_weights: str = "model"


@dataclass(frozen=True)
class TrainingParts:
    """The live objects of a training run that its checkpoint restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    ema: ModelEma | None = None
    freeze_schedule: Any = None
    lr_schedule: Any = None
    generator: torch.Generator | None = None


def training_extra(parts: TrainingParts, progress: Progress, seed: int) -> dict[str, Any]:
    """A checkpoint's ``extra``: schedule and EMA states, history, the best epoch, the loader generator."""
    extra: dict[str, Any] = {
        "history": progress.history,
        "best_acc": progress.best_acc,
        "best_epoch": progress.best_epoch,
        "best_weights": progress.best_weights,
        "seed": seed,
    }
    if parts.ema is not None:
        extra["ema"] = parts.ema.state_dict()
    if parts.freeze_schedule is not None:
        extra["freeze_schedule"] = parts.freeze_schedule.state_dict()
    if parts.lr_schedule is not None:
        extra["lr_schedule"] = parts.lr_schedule.state_dict()
    if parts.generator is not None:
        extra["loader_generator"] = parts.generator.get_state()
    return extra


def restore_training(ckpt: Mapping[str, Any], parts: TrainingParts, label: str, hint: str) -> Progress:
    """Restore the training checkpoint ``ckpt`` into ``parts``, RNG states included; returns its progress.

    Raises:
        CheckpointError: a run with an EMA resumed from a checkpoint without one, or states that do not fit
            (:class:`~transferkit.errors.CheckpointMismatchError`, named ``label``, advising ``hint``).
    """
    from transferkit.checkpoint import restore_checkpoint

    extra = ckpt.get("extra") or {}
    if parts.ema is not None and ("ema" not in ckpt["models"] or "ema" not in extra):
        raise CheckpointError(
            f"{label}: the checkpoint holds no model EMA, so this run's EMA cannot continue from it; resume without "
            "`ema_decay`, or start a new run from its weights",
            param="ema_decay",
        )
    if parts.freeze_schedule is not None and "freeze_schedule" in extra:
        # groups first: the optimizer state is then loaded into the same groups, in the same order
        parts.freeze_schedule.load_state_dict(extra["freeze_schedule"], parts.optimizer)
    restore_checkpoint(
        ckpt,
        model=parts.model,
        models={"ema": parts.ema.module} if parts.ema is not None else None,
        optimizer=parts.optimizer,
        scaler=parts.scaler,
        restore_rng=True,
        label=label,
        hint=hint,
    )
    if parts.ema is not None:
        parts.ema.load_state_dict(extra["ema"])
    if parts.lr_schedule is not None and "lr_schedule" in extra:
        parts.lr_schedule.load_state_dict(extra["lr_schedule"])
    if parts.generator is not None and "loader_generator" in extra:
        parts.generator.set_state(extra["loader_generator"])
    return Progress(
        list(extra.get("history", [])),
        float(extra.get("best_acc", -1.0)),
        int(extra.get("best_epoch", -1)),
        str(extra.get("best_weights", "model")),
    )
