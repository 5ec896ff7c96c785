"""What the training loop reports: :class:`EpochEnd` after each epoch, :class:`FitResult` at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transferkit.evaluation import EvalResult

__all__ = ["EpochEnd", "FitResult"]


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns; ``best_epoch`` and the history's ``epoch`` count from 0.

    ``best_weights`` is ``"ema"`` when the best epoch's EMA weights validated better than the model's.
    """

    best_acc: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: EvalResult | None = None
    best_weights: str = "model"


@dataclass(frozen=True)
class EpochEnd:
    """What :meth:`Trainer.fit` reports after each epoch (``on_epoch_end(trainer, event)``).

    Attributes:
        epoch: the epoch just trained, from 0.
        row: its history row (losses, accuracies, rates, seconds).
        result: the model's evaluation (loss, accuracy, confusion matrix).
        improved: the epoch's better of the model and its EMA beat every earlier epoch: its weights are now
            the best (:attr:`Trainer.best_weights` says which of the two).
    """

    epoch: int
    row: dict[str, Any]
    result: EvalResult
    improved: bool
