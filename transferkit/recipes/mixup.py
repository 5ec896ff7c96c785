"""Mixup and CutMix with soft targets: :class:`MixupCutmix` around timm's ``Mixup`` and soft-target loss.

The batch is mixed with its reverse (timm's ``"batch"`` mode: one ``lam`` per batch); labels become soft
targets, with label smoothing folded in, and the loss is timm's ``SoftTargetCrossEntropy``. With both
alphas set, each batch uses CutMix or mixup with equal probability.

timm draws ``lam``, the switch and the CutMix box from NumPy's global generator. The loop runs in the
main process, whose NumPy state every checkpoint stores (:func:`transferkit.checkpoint.rng
.capture_rng_state`), so a resumed run mixes its batches exactly as an uninterrupted one does.

Example:
    >>> import numpy as np, torch
    >>> _ = np.random.seed(0)
    >>> mix = MixupCutmix(num_classes=3, mixup_alpha=0.2)
    >>> x, soft = mix(torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1]))
    >>> tuple(soft.shape), bool(torch.allclose(soft.sum(1), torch.ones(5)))
    ((5, 3), True)
    >>> float(mix.loss(torch.zeros(5, 3), soft)) > 0
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from transferkit.errors import ConfigError

__all__ = ["MixupCutmix"]


def _check(name: str, value: float, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name} must be a number in {bracket}{low:g}, {high:g}], got {value!r}")
    return float(value)


class MixupCutmix:
    """Mix a batch of images and turn its labels into soft targets (timm's ``Mixup``).

    Args:
        num_classes: the width of the soft targets.
        mixup_alpha: Beta(alpha, alpha) for mixup's ``lam``; 0 turns mixup off.
        cutmix_alpha: Beta(alpha, alpha) for CutMix's box area; 0 turns CutMix off.
        prob: the probability that a batch is mixed at all.
        label_smoothing: folded into the soft targets (use it here instead of in the loss).

    Raises:
        ConfigError: both alphas 0, or a value out of range.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup_alpha = _check("mixup_alpha", mixup_alpha, 0.0, 100.0)
        cutmix_alpha = _check("cutmix_alpha", cutmix_alpha, 0.0, 100.0)
        prob = _check("prob", prob, 0.0, 1.0, low_open=True)
        label_smoothing = _check("label_smoothing", label_smoothing, 0.0, 0.999)
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ConfigError("mixup needs mixup_alpha > 0 or cutmix_alpha > 0 (e.g. 0.2 and 1.0)")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha, self.prob = mixup_alpha, cutmix_alpha, prob
        self.label_smoothing = label_smoothing
        self._mixup = Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=prob,
            switch_prob=0.5,
            mode="batch",
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )
        self._loss = SoftTargetCrossEntropy()

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(mixed images, soft targets)``; ``x`` is mixed in place.

        timm pairs each image with its mirror in the batch and so needs an even batch; an odd last image
        (a training set smaller than one batch) stays unmixed, with its smoothed one-hot target.
        """
        from timm.data.mixup import mixup_target

        if x.dim() != 4:
            raise ConfigError(
                f"mixup/cutmix mix images (N, C, H, W), got a tensor of shape {tuple(x.shape)}; cached "
                "features cannot be mixed (turn the feature cache off)"
            )
        even = len(x) - len(x) % 2
        if even == 0:
            return x, mixup_target(y, self.num_classes, 1.0, self.label_smoothing)
        mixed, soft = self._mixup(x[:even], y[:even])
        if even == len(x):
            return mixed, soft
        rest = mixup_target(y[even:], self.num_classes, 1.0, self.label_smoothing)
        return torch.cat([mixed, x[even:]]), torch.cat([soft, rest])

    def loss(self, logits: Tensor, soft_targets: Tensor) -> Tensor:
        """Cross-entropy against soft targets (timm's ``SoftTargetCrossEntropy``)."""
        return self._loss(logits, soft_targets)

    def describe(self) -> str:
        """One line for the run's records, e.g. ``mixup 0.2 + cutmix 1.0 (p=1.0, switch 0.5)``."""
        parts = [f"{n} {a:g}" for n, a in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if a]
        switch = ", switch 0.5" if len(parts) == 2 else ""
        return f"{' + '.join(parts)} (p={self.prob:g}{switch}; soft-target cross-entropy)"

    def __repr__(self) -> str:
        return f"MixupCutmix({self.describe()})"
