"""Modern fine-tuning recipe options, taken from timm's and torchvision's implementations.

* :mod:`.augment`: the ``--aug`` levels (``none``, ``light``, ``randaugment``, ``trivialaugment``);
* :mod:`.mixup`: :class:`MixupCutmix`, mixup and CutMix with soft-target cross-entropy;
* :mod:`.ema`: :class:`ModelEma`, the model's exponential moving average, evaluated and resumable;
* :mod:`.drop_path`: drop-path (stochastic depth) for timm backbones.

Layer-wise learning-rate decay lives with the optimizer (:func:`transferkit.optim.layer_decay_scales`).
"""

from __future__ import annotations

from transferkit.recipes.augment import (
    AUG_CHOICES,
    RAND_AUGMENT_POLICY,
    describe_aug,
    policy_transform,
    resolve_aug,
)
from transferkit.recipes.drop_path import check_drop_path, drop_path_kwargs, drop_path_layers
from transferkit.recipes.ema import DEFAULT_EMA_DECAY, ModelEma
from transferkit.recipes.mixup import MixupCutmix

__all__ = [
    "AUG_CHOICES",
    "RAND_AUGMENT_POLICY",
    "resolve_aug",
    "policy_transform",
    "describe_aug",
    "MixupCutmix",
    "ModelEma",
    "DEFAULT_EMA_DECAY",
    "drop_path_kwargs",
    "drop_path_layers",
    "check_drop_path",
]
