"""The embedded digits: scikit-learn's 1,797 real 8x8 digit scans as a fine-tuning data set.

The scans (values 0..16) are shown to a backbone as 3-channel images resized with bilinear interpolation,
split train/val once with a fixed, stratified, seeded split (:data:`DIGITS_SPLIT_SEED`), and normalised
with the backbone's mean/std. They need no download, which makes them the data of quick runs and tests.

Example:
    >>> bundle = load_digits_data(img_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> len(bundle.train), len(bundle.val), bundle.class_names[:3]
    (1437, 360, ['0', '1', '2'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from transferkit.data.bundle import DataBundle
from transferkit.errors import ConfigError

__all__ = ["DIGITS_SPLIT_SEED", "DIGITS_VAL_FRACTION", "DigitsDataset", "load_digits_data"]

# The digits split is part of the data set's definition, not of a run: it never follows --seed, so the
# validation accuracy of any two runs (or of an exported model) is measured on the same 360 images.
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2


class DigitsDataset(Dataset):
    """Digits as normalised 3-channel tensors; optional random shifts (digits must not be flipped).

    The bilinear resize is done once for the whole set, so an item costs a crop and a normalisation.

    Args:
        images: ``(N, H, W)`` floats in [0, 1], already at the display size.
        labels: ``(N,)`` integer labels.
        mean, std: per-channel statistics of the backbone (3 values, or 1 for a 1-channel backbone).
        augment: random translation by up to 1/8 of the side (zero padding = the digits' background).
        policy: an automatic augmentation policy (PIL RGB image -> PIL image, e.g. from
            :func:`transferkit.recipes.policy_transform`) applied after the shift; the scan goes through
            it as an 8-bit grey RGB image and comes back grey.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        policy: Callable[[Any], Any] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.channels = len(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment
        self.policy = policy
        self.pad = max(1, images.shape[-1] // 8)

    def __len__(self) -> int:
        return len(self.labels)

    def _shift(self, img: Tensor) -> Tensor:
        size = img.shape[-1]
        padded = torch.nn.functional.pad(img, (self.pad,) * 4)
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        return padded[..., dy : dy + size, dx : dx + size]

    def _apply_policy(self, img: Tensor) -> Tensor:
        import numpy as np
        from PIL import Image

        grey = img[0].mul(255).round_().clamp_(0, 255).to(torch.uint8).numpy()
        out = self.policy(Image.fromarray(grey, mode="L").convert("RGB")).convert("L")
        return torch.from_numpy(np.array(out, dtype=np.float32)).div_(255.0).unsqueeze(0)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = self.images[index].unsqueeze(0)
        if self.augment:
            img = self._shift(img)
            if self.policy is not None:
                img = self._apply_policy(img)
        img = img.expand(self.channels, -1, -1)
        return (img - self.mean) / self.std, int(self.labels[index])


def load_digits_data(
    img_size: int = 32,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    *,
    augment: bool = True,
    policy: Callable[[Any], Any] | None = None,
) -> DataBundle:
    """scikit-learn's digits as a fine-tuning data set: 1,437 training and 360 validation images.

    Args:
        img_size: side length the 8x8 scans are resized to (bilinear).
        mean, std: the backbone's normalisation statistics.
        augment: random shifts on the training set.
        policy: an automatic augmentation policy after the shifts (see :class:`DigitsDataset`).

    Raises:
        ConfigError: ``img_size`` below 8.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not (isinstance(img_size, int) and img_size >= 8):
        raise ConfigError(
            f"`img_size` must be an integer >= 8 for the digits, got {img_size!r}", param="img_size"
        )
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    images = torch.nn.functional.interpolate(
        images, size=(img_size, img_size), mode="bilinear", align_corners=False
    )
    images = images.squeeze(1).clamp_(0.0, 1.0).contiguous()
    labels = torch.from_numpy(digits.target).long()
    idx_train, idx_val = train_test_split(
        list(range(len(labels))),
        test_size=DIGITS_VAL_FRACTION,
        stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    idx_train, idx_val = torch.tensor(sorted(idx_train)), torch.tensor(sorted(idx_val))
    train = DigitsDataset(images[idx_train], labels[idx_train], mean, std, augment=augment, policy=policy)
    val = DigitsDataset(images[idx_val], labels[idx_val], mean, std, augment=False)
    names = [str(int(c)) for c in digits.target_names]
    return DataBundle(train, val, names, "digits", img_size, augment=augment)
