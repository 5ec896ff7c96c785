"""Training augmentation levels: ``none``, ``light``, and two automatic policies taken from timm/torchvision.

``light`` is the data source's own light augmentation (digits: random shifts; image folders: random
resized crop and horizontal flip). ``randaugment`` and ``trivialaugment`` add one automatic policy on top
of it, applied to the PIL image after the crop:

* ``randaugment``: timm's :func:`timm.data.rand_augment_transform` with :data:`RAND_AUGMENT_POLICY`
  (two ops a picture at magnitude 9 +- 0.5);
* ``trivialaugment``: torchvision's ``TrivialAugmentWide`` (one op at a random magnitude).

Both draw from Python's and NumPy's global generators (timm) or torch's (torchvision). In the main process
those are part of a checkpoint's RNG state; in DataLoader workers torch seeds all three from the loader's
generator, which :func:`transferkit.data.set_loader_epoch` reseeds from ``(seed, epoch)``. Either way a
resumed run draws what an uninterrupted one drew.

Example:
    >>> from PIL import Image
    >>> policy = policy_transform("randaugment", fill=(0, 0, 0))
    >>> policy(Image.new("RGB", (16, 16))).size
    (16, 16)
    >>> policy_transform("light") is None
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from transferkit.errors import ConfigError

__all__ = ["AUG_CHOICES", "RAND_AUGMENT_POLICY", "resolve_aug", "policy_transform", "describe_aug"]

logger = logging.getLogger(__name__)

AUG_CHOICES = ("none", "light", "randaugment", "trivialaugment")

#: timm config string: 2 ops a picture (timm default n2), magnitude 9, magnitude noise 0.5. Not the "-inc1"
#: variant of timm recipes: its PosterizeIncreasing keeps 0 bits at magnitude 10, which recent Pillow refuses (ValueError)
RAND_AUGMENT_POLICY = "rand-m9-mstd0.5"


def resolve_aug(aug: str | None, *, linear_probe: bool = False) -> str:
    """The augmentation level to use: ``aug``, or the default (``light``; ``none`` for a linear probe).

    Raises:
        ConfigError: ``aug`` is not one of :data:`AUG_CHOICES`.

    Example:
        >>> resolve_aug(None), resolve_aug(None, linear_probe=True), resolve_aug("trivialaugment")
        ('light', 'none', 'trivialaugment')
    """
    if aug is None:
        return "none" if linear_probe else "light"
    if aug not in AUG_CHOICES:
        raise ConfigError(f"aug must be one of {', '.join(AUG_CHOICES)}, got {aug!r}")
    return aug


def _fill(mean: Sequence[float] | None, fill: Sequence[int] | None) -> tuple[int, int, int]:
    if fill is not None:
        values = tuple(int(v) for v in fill)
    elif mean is not None:
        values = tuple(round(255 * float(m)) for m in mean)
    else:
        values = (0, 0, 0)
    # policies work on RGB images: a one-channel mean is the grey all three channels share
    return values * 3 if len(values) == 1 else values[:3]  # type: ignore[return-value]


def policy_transform(
    aug: str, *, mean: Sequence[float] | None = None, fill: Sequence[int] | None = None
) -> Callable[[Any], Any] | None:
    """The automatic policy of ``aug`` as a PIL image -> PIL image callable; ``None`` for ``none``/``light``.

    Args:
        aug: one of :data:`AUG_CHOICES`.
        mean: the data's mean in [0, 1]; geometric ops fill uncovered pixels with it (timm's ``img_mean``).
        fill: the fill colour as 0-255 integers, overriding ``mean`` (the digits fill with their black
            background).

    Raises:
        ConfigError: unknown ``aug``.
    """
    aug = resolve_aug(aug)
    if aug in ("none", "light"):
        return None
    colour = _fill(mean, fill)
    if aug == "randaugment":
        from timm.data import rand_augment_transform

        return rand_augment_transform(RAND_AUGMENT_POLICY, {"img_mean": colour})
    from torchvision.transforms import TrivialAugmentWide

    return TrivialAugmentWide(fill=list(colour))


def describe_aug(aug: str) -> str:
    """How ``aug`` reads in ``args.yaml`` and the header: the level and, for a policy, its source.

    Example:
        >>> describe_aug("randaugment")
        'randaugment (timm rand-m9-mstd0.5, after light)'
    """
    aug = resolve_aug(aug)
    if aug == "randaugment":
        return f"randaugment (timm {RAND_AUGMENT_POLICY}, after light)"
    if aug == "trivialaugment":
        return "trivialaugment (torchvision TrivialAugmentWide, after light)"
    return aug
