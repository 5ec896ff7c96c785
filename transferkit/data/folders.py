"""Image folders as training data: the train/val split, checked before training, and the finished data set.

:func:`split_image_folder` reads ``DIR/train/<class>/*`` + ``DIR/val/<class>/*``, or one
``DIR/<class>/*`` tree split by ``val_split`` (stratified, seeded, every class on both sides). Every file
is checked *before* training (decoded once, cheaply; :mod:`transferkit.data.scan`) so an unreadable image
is skipped with a count in the log -- or, with ``strict=True``, an error naming it -- and never crashes a
DataLoader worker. :func:`load_image_folder` adds the backbone's transforms and returns a
:class:`~transferkit.data.DataBundle`.

Example:
    >>> split_image_folder("/no/such/dir")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    transferkit.errors.ConfigError: data folder /no/such/dir does not exist; ...
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.data.bundle import DataBundle
from transferkit.data.images import ImageFileDataset
from transferkit.data.scan import IMAGE_EXTENSIONS, class_dirs, scan_image_folder, skip_unreadable
from transferkit.data.transforms import build_transforms
from transferkit.errors import ConfigError

__all__ = ["FolderSplit", "split_image_folder", "load_image_folder"]

logger = logging.getLogger("transferkit.data")


@dataclass
class FolderSplit:
    """An image folder's samples, split and checked, before any transform is chosen.

    Attributes:
        train, val: ``(path, label)`` samples.
        class_names: folder names, sorted; index = label.
        root: the folder.
        skipped: unreadable files left out.
    """

    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    class_names: list[str]
    root: str
    skipped: list[str] = field(default_factory=list)


def split_image_folder(
    root: str | os.PathLike, *, val_split: float = 0.2, seed: int = 0, strict: bool = False
) -> FolderSplit:
    """Scan ``root/train`` + ``root/val``, or one ``root/<class>`` tree split by ``val_split``; check every file.

    Args:
        root: the folder.
        val_split: fraction for validation when there are no train/val sub-folders.
        seed: seed of that split (stratified by class).
        strict: raise on an unreadable image instead of skipping it (with a warning and a count).

    Raises:
        ConfigError: missing or empty folder, fewer than two classes, unreadable files with ``strict``,
            a class without images, or an impossible split.

    Example:
        >>> split_image_folder("/no/such/dir")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        transferkit.errors.ConfigError: data folder /no/such/dir does not exist; ...
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(
            f"data folder {root} is a file, not a folder; give the folder that holds the class sub-folders "
            "(DIR/<class>/*.png) or DIR/train/<class> + DIR/val/<class>"
        )
    if not root.is_dir():
        raise ConfigError(
            f"data folder {root} does not exist; expected a folder of class sub-folders "
            "(DIR/<class>/*.png) or DIR/train/<class> + DIR/val/<class>"
        )
    if (root / "train").is_dir() and (root / "val").is_dir():
        split = _read_train_val(root, strict)
    else:
        split = _split_one_tree(root, val_split, seed, strict)
    logger.info(
        "image folder %s: %d classes, %d training and %d validation images%s",
        root,
        len(split.class_names),
        len(split.train),
        len(split.val),
        f", {len(split.skipped)} unreadable skipped" if split.skipped else "",
    )
    return split


def _read_train_val(root: Path, strict: bool) -> FolderSplit:
    """``root/train`` and ``root/val`` as they are: scanned with the training split's classes, checked."""
    train, names, bad = scan_image_folder(root / "train")
    val, _, bad_val = scan_image_folder(root / "val", names)
    bad += bad_val
    skip_unreadable(bad, root, strict=strict)
    _refuse_shared_files(train, val)
    _check_classes(root / "train", names, train)
    if not val:
        raise ConfigError(f"{root / 'val'} holds no readable images; add validation images")
    in_val = {label for _, label in val}
    unmeasured = [n for i, n in enumerate(names) if i not in in_val]
    if unmeasured:
        logger.warning(
            "classes %s have training images but no validation images under %s: the validation "
            "accuracy does not measure them; add %s/<class> images for them",
            unmeasured,
            root / "val",
            root / "val",
        )
    return FolderSplit(train, val, names, str(root), bad)


def _split_one_tree(root: Path, val_split: float, seed: int, strict: bool) -> FolderSplit:
    """One ``root/<class>`` tree, scanned and checked, then split by ``val_split`` (stratified, seeded)."""
    _refuse_half_split(root)
    samples, names, bad = scan_image_folder(root)
    skip_unreadable(bad, root, strict=strict)
    _check_classes(root, names, samples)
    train, val = _stratified_split(samples, names, val_split, seed)
    _refuse_shared_files(train, val)
    return FolderSplit(train, val, names, str(root), bad)


def _refuse_shared_files(train: list[tuple[str, int]], val: list[tuple[str, int]]) -> None:
    """A file in both splits (linked, or copied by a link) would make the validation accuracy measure recall."""
    train_real = {os.path.realpath(p) for p, _ in train}
    shared = [p for p, _ in val if os.path.realpath(p) in train_real]
    if shared:
        raise ConfigError(
            f"{len(shared)} validation file(s) are also training files (the same file through a link), e.g. "
            f"{shared[0]}: the validation accuracy would not measure anything new. Make the splits disjoint"
        )


_SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def _refuse_half_split(root: Path) -> None:
    """``DIR/train`` + ``DIR/test`` (or a lone ``DIR/train``) is a split layout without ``val``, not two classes.

    Read as a class tree it would silently train a "train vs test" classifier.
    """
    named = [d for d in class_dirs(root) if d.name.lower() in _SPLIT_NAMES and any(class_dirs(d))]
    if named:
        found = ", ".join(f"{d.name}/" for d in named)
        raise ConfigError(
            f"{root} holds {found} with class folders inside: a train/val layout needs exactly {root}/train "
            f"and {root}/val (rename the validation folder to val), or give a folder whose sub-folders are the "
            "classes"
        )


def _check_classes(root: Path, names: list[str], samples: list[tuple[str, int]]) -> None:
    if not samples:
        raise ConfigError(f"{root} holds no readable images (extensions {', '.join(IMAGE_EXTENSIONS)})")
    counts = Counter(label for _, label in samples)
    empty = [n for i, n in enumerate(names) if counts[i] == 0]
    if empty:
        raise ConfigError(
            f"class folders {empty} under {root} hold no readable images; add images or remove them"
        )
    if len(names) < 2:
        raise ConfigError(
            f"{root} has only one class ({names[0]!r}); classification needs at least two class folders"
        )


def _stratified_split(
    samples: list[tuple[str, int]], class_names: list[str], val_split: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_split < 1.0:
        raise ConfigError(
            f"`val_split` must be between 0 and 1 (exclusive), got {val_split!r}", param="val_split"
        )
    counts = Counter(label for _, label in samples)
    small = [class_names[c] for c, n in sorted(counts.items()) if n < 2]
    if small:
        raise ConfigError(
            f"classes {small} have fewer than 2 readable images, so a stratified train/val split is "
            "impossible; add images or provide DIR/train and DIR/val folders"
        )
    n_val = math.ceil(val_split * len(samples))
    if n_val < len(counts) or len(samples) - n_val < len(counts):
        raise ConfigError(
            f"`val_split` {val_split} of {len(samples)} images leaves a split with fewer images than the "
            f"{len(counts)} classes; change `val_split` or add images",
            param="val_split",
        )
    train, val = train_test_split(
        samples, test_size=n_val, stratify=[label for _, label in samples], random_state=seed
    )
    _every_class_in_both(train, val, class_names)
    return sorted(train), sorted(val)


def _every_class_in_both(
    train: list[tuple[str, int]], val: list[tuple[str, int]], class_names: list[str]
) -> None:
    """Move single samples so that every class has a training and a validation image (in place).

    A stratified split rounds each class's share; a rare class next to a big one (2 images beside 60) can
    get no validation image at all, and its accuracy would silently go unmeasured. Each class has >= 2
    images here, so one can always move; the donor split keeps every class it had. Only such rounding cases
    change: a split where every class already is on both sides is left exactly as it was.
    """

    def counts(split: list[tuple[str, int]]) -> Counter:
        return Counter(label for _, label in split)

    for src, dst in ((train, val), (val, train)):
        have = counts(dst)
        for label, name in enumerate(class_names):
            if have[label] == 0:
                left = counts(src)
                if left[label] >= 2:
                    # the last one the shuffled split put there: deterministic for a given seed
                    i = max(i for i, (_, lab) in enumerate(src) if lab == label)
                    dst.append(src.pop(i))
                    logger.info("class %r: moved one image so that both splits hold the class", name)


def load_image_folder(
    root: str | os.PathLike | FolderSplit,
    data_config: dict[str, Any],
    *,
    img_size: int | None = None,
    val_split: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    augment: bool = True,
    in_chans: int = 3,
    policy: Callable[[Any], Any] | None = None,
) -> DataBundle:
    """An image-folder data set (see :func:`split_image_folder`) with the backbone's transforms.

    Args:
        root: the folder, or a :class:`FolderSplit` already made from it.
        data_config: the backbone's ``{"mean", "std", "input_size", ...}`` (``Adapter.data_config``).
        img_size: square crop size overriding the backbone's.
        val_split, seed, strict: as in :func:`split_image_folder`; ``strict`` also makes a file that
            becomes unreadable during the run an error instead of a skip (see :class:`ImageFileDataset`).
        augment: light random augmentation on the training split.
        in_chans: 1 reads images as grayscale.
        policy: an automatic augmentation policy after the light augmentation (see
            :func:`build_transforms`).
    """
    split = (
        root
        if isinstance(root, FolderSplit)
        else split_image_folder(root, val_split=val_split, seed=seed, strict=strict)
    )
    size = img_size or int(data_config["input_size"][-1])
    mode = "L" if in_chans == 1 else "RGB"
    if policy is not None and mode == "L":
        policy = _ViaRGB(policy)
    train_tf, val_tf = (
        build_transforms(data_config, True, size, augment, policy),
        build_transforms(data_config, False, size),
    )
    train = ImageFileDataset(split.train, train_tf, mode, strict=strict)
    val = ImageFileDataset(split.val, val_tf, mode, strict=strict)
    return DataBundle(train, val, split.class_names, split.root, size, skipped=split.skipped, augment=augment)


class _ViaRGB:
    """A PIL policy written for RGB images applied to a grey one (1-channel backbones read images as L)."""

    def __init__(self, policy: Callable[[Any], Any]) -> None:
        self.policy = policy

    def __call__(self, img: Any) -> Any:
        return self.policy(img.convert("RGB")).convert(img.mode)
