"""What every data source returns: :class:`DataBundle`, train and validation datasets and class names.

The digits (:mod:`~transferkit.data.digits`), image folders (:mod:`~transferkit.data.folders`) and the
feature cache (:mod:`~transferkit.data.feature_cache`) all build one, and
:func:`~transferkit.data.make_loaders` takes one.

Example:
    >>> from torch.utils.data import TensorDataset
    >>> import torch
    >>> ds = TensorDataset(torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))
    >>> DataBundle(ds, ds, ["cat", "dog"], "memory", 8).num_classes
    2
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.utils.data import Dataset

__all__ = ["DataBundle"]


@dataclass
class DataBundle:
    """Train and validation datasets with their class names.

    Attributes:
        train: the training dataset; items are ``(tensor, label)``.
        val: the validation dataset.
        class_names: index -> name (folder names, or ``"0".."9"`` for digits).
        source: ``"digits"`` or the image folder's path.
        img_size: the square side length the images are shown at.
        skipped: unreadable files left out.
        augment: whether ``train`` applies random augmentation.
    """

    train: Dataset
    val: Dataset
    class_names: list[str]
    source: str
    img_size: int
    skipped: list[str] = field(default_factory=list)
    augment: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
