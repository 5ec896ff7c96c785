"""Data for fine-tuning: the embedded digits, image folders, loaders, and the feature cache for linear probes.

Two sources, one result (:class:`DataBundle`: train and validation datasets plus class names):

* :func:`load_digits_data` -- scikit-learn's 1,797 real 8x8 digit scans (values 0..16), shown to a
  backbone as 3-channel images resized with bilinear interpolation, split train/val once with a fixed,
  stratified, seeded split, normalised with the backbone's mean/std;
* :func:`load_image_folder` -- ``DIR/train/<class>/*`` + ``DIR/val/<class>/*``, or one ``DIR/<class>/*``
  tree split by ``val_split`` (stratified, seeded). Every file is checked *before* training (decoded once,
  cheaply) so an unreadable image is skipped with a count in the log -- or, with ``strict=True``, an error
  naming it -- and never crashes a DataLoader worker.

:func:`make_loaders` builds the loaders (workers, pinned memory on CUDA, ``DistributedSampler`` under
``torchrun``); :func:`set_loader_epoch` reseeds their shuffling per epoch, so a resumed run sees the
same batches as an uninterrupted one. :func:`extract_features` is the linear-probe feature cache: with
the whole backbone frozen and augmentation off, the backbone's pooled features are computed once and the
head trains on them.

Example:
    >>> bundle = load_digits_data(img_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> len(bundle.train), len(bundle.val), bundle.class_names[:3]
    (1437, 360, ['0', '1', '2'])
    >>> x, y = bundle.val[0]
    >>> tuple(x.shape)
    (3, 16, 16)
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from transferkit.errors import ClassNamesError, ConfigError, TransferkitError

__all__ = [
    "DataBundle",
    "DigitsDataset",
    "ImageFileDataset",
    "IMAGE_EXTENSIONS",
    "load_digits_data",
    "load_image_folder",
    "split_image_folder",
    "check_class_names",
    "scan_eval_folder",
    "FolderSplit",
    "scan_image_folder",
    "build_transforms",
    "eval_transform_spec",
    "to_8bit",
    "make_loaders",
    "set_loader_epoch",
    "ShardSampler",
    "extract_features",
    "cache_features",
    "limit_dataset",
    "DIGITS_SPLIT_SEED",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# The digits split is part of the data set's definition, not of a run: it never follows --seed, so the
# validation accuracy of any two runs (or of an exported model) is measured on the same 360 images.
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2


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


# ----------------------------------------------------------------------------------------------------------
# embedded digits


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


# ----------------------------------------------------------------------------------------------------------
# image folders


def build_transforms(
    data_config: dict[str, Any],
    train: bool,
    img_size: int | None = None,
    augment: bool = True,
    policy: Callable[[Any], Any] | None = None,
) -> Callable[[Any], Tensor]:
    """The backbone's preprocessing (mean/std/size from its weights metadata); light augmentation in training.

    Uses :func:`transferkit.backbones.preprocess.build_transforms`; training without augmentation gets the
    evaluation pipeline, which is what makes the linear-probe feature cache exact. A ``policy`` (PIL ->
    PIL, e.g. RandAugment) runs in training after the random crop and flip, on the cropped image.
    """
    from transferkit.backbones.preprocess import build_transforms as backbone_transforms

    pipeline = backbone_transforms(data_config, train=train and augment, img_size=img_size)
    if policy is None or not (train and augment):
        return pipeline
    from torchvision.transforms import v2

    steps = list(pipeline.transforms)
    # the first step that leaves PIL (grey conversion or ToImage) ends the crop-and-flip part
    cut = next((i for i, t in enumerate(steps) if isinstance(t, v2.ToImage | v2.Grayscale)), None)
    if cut is None:
        raise TransferkitError(
            "cannot place the augmentation policy: the backbone's training pipeline has no ToImage step "
            f"({[type(t).__name__ for t in steps]})"
        )
    return v2.Compose([*steps[:cut], policy, *steps[cut:]])


def eval_transform_spec(
    data_config: dict[str, Any] | None, img_size: int, *, in_chans: int = 3, source: str = "folder"
) -> dict[str, Any]:
    """The exact evaluation preprocessing, as JSON-able data (for ``labels.json``): enough to rebuild it.

    Read from the pipeline :func:`build_transforms` really builds (not recomputed beside it), so the two
    cannot disagree. For the embedded digits it describes :func:`load_digits_data`'s own steps.

    Args:
        data_config: the backbone's data config (``Adapter.data_config``).
        img_size: the side the run used.
        in_chans: the network's input channels (1: images are read as grayscale).
        source: ``"digits"`` for the embedded digits, anything else for image files.

    Example:
        >>> spec = eval_transform_spec({"mean": (0.5,) * 3, "std": (0.5,) * 3, "input_size": (3, 224, 224),
        ...                             "resize_size": 256, "crop_pct": 0.875, "interpolation": "bicubic"}, 224)
        >>> spec["resize_size"], spec["crop_size"], spec["interpolation"], spec["channels"]
        (256, 224, 'bicubic', 3)
    """
    mean, std = list((data_config or {}).get("mean", ())), list((data_config or {}).get("std", ()))
    if source == "digits":
        return {
            "input": "scikit-learn digits: 8x8 values 0..16, divided by 16",
            "steps": [
                {"op": "resize", "size": [img_size, img_size], "interpolation": "bilinear", "align_corners": False,
                 "antialias": False, "then": "clamp to [0, 1]"},
                {"op": "repeat_channels", "channels": len(mean)},
                {"op": "normalize", "mean": mean, "std": std},
            ],
            "resize_size": img_size, "crop_size": img_size, "crop_pct": 1.0, "interpolation": "bilinear",
            "mean": mean, "std": std, "channels": len(mean),
        }  # fmt: skip
    from torchvision.transforms import v2

    pipeline = build_transforms(data_config or {}, False, img_size)
    steps: list[dict[str, Any]] = []
    spec: dict[str, Any] = {"input": f"PIL image converted to {'L' if in_chans == 1 else 'RGB'} (16-bit "
                            "grayscale scaled by 1/257)"}  # fmt: skip
    for t in pipeline.transforms:
        if isinstance(t, v2.Resize):
            size = list(t.size) if isinstance(t.size, list | tuple) else [t.size]
            steps.append({"op": "resize", "size": size, "applies_to": "shorter side" if len(size) == 1 else "both",
                          "interpolation": t.interpolation.value, "antialias": bool(t.antialias)})  # fmt: skip
            spec["resize_size"], spec["interpolation"] = size[0], t.interpolation.value
        elif isinstance(t, v2.CenterCrop):
            steps.append({"op": "center_crop", "size": list(t.size)})
            spec["crop_size"] = list(t.size)[0]
        elif isinstance(t, v2.Grayscale):
            steps.append({"op": "grayscale", "channels": t.num_output_channels})
        elif isinstance(t, v2.ToDtype):
            steps.append({"op": "to_float", "range": [0.0, 1.0]})
        elif isinstance(t, v2.Normalize):
            steps.append({"op": "normalize", "mean": list(t.mean), "std": list(t.std)})
        elif not isinstance(t, v2.ToImage):
            steps.append({"op": type(t).__name__})
    if "resize_size" in spec and "crop_size" in spec:
        spec["crop_pct"] = spec["crop_size"] / spec["resize_size"]
    spec.update({"mean": mean, "std": std, "channels": len(mean), "steps": steps})
    return spec


class ImageFileDataset(Dataset):
    """``(path, label)`` samples read with PIL, converted to RGB (or L for 1-channel backbones).

    Every file was decoded once before training (:func:`scan_image_folder`); one that becomes unreadable
    later (replaced, truncated or deleted mid-run) is skipped like the ones found up front: the item is the
    next readable sample instead, with a warning naming the file -- never an exception that kills a
    DataLoader worker. With ``strict=True`` it is an error naming the file.

    Args:
        samples: ``(path, label)`` pairs.
        transform: PIL image -> tensor.
        mode: the PIL mode images are converted to.
        strict: raise :class:`~transferkit.errors.TransferkitError` on an unreadable file instead.
    """

    #: how many following samples are tried before giving up (a folder that vanished, not one bad file)
    MAX_SUBSTITUTES = 16

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable[[Any], Tensor],
        mode: str = "RGB",
        *,
        strict: bool = False,
    ):
        self.samples = list(samples)
        self.transform = transform
        self.mode = mode
        self.strict = strict
        self.unreadable: list[str] = []  # files skipped during the run, in this process (or worker)

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, path: str) -> Any:
        from PIL import Image

        with Image.open(path) as img:
            return to_8bit(img).convert(self.mode)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        tries = min(len(self.samples), self.MAX_SUBSTITUTES)
        for offset in range(tries):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                img = self._read(path)
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt files
                if self.strict:
                    raise TransferkitError(
                        f"cannot read image {path} ({type(exc).__name__}: {exc}); it was readable when the run "
                        "started. Restore it, or drop `strict_data` to skip unreadable files",
                        param="strict_data",
                    ) from None
                if path not in self.unreadable:
                    self.unreadable.append(path)
                    logger.warning(
                        "skipping image %s: unreadable since the run started (%s); %d skipped so far here",
                        path,
                        exc,
                        len(self.unreadable),
                    )
                continue
            return self.transform(img), label
        raise TransferkitError(
            f"{tries} image files in a row became unreadable during the run (e.g. {self.samples[index][0]}); "
            "the data folder changed or vanished -- restore it and resume the run with `resume`"
        )


_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_8bit(img: Any) -> Any:
    """A 16-bit grayscale image (PIL mode ``I;16``/``I``) scaled to 8 bits.

    PIL's own ``convert("RGB")``/``convert("L")`` of those modes clips every value above 255, which turns a
    16-bit PNG (values up to 65535) into an almost white image; this divides by 257 instead (65535 -> 255).
    Other modes are returned as they are.
    """
    if img.mode not in _WIDE_MODES:
        return img
    import numpy as np
    from PIL import Image

    wide = np.asarray(img, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")


def _image_ok(path: str) -> bool:
    """Whether PIL can decode the file: ``verify()`` catches broken structure, a reduced decode the rest."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))  # JPEG decodes at 1/8 scale: a full check at a fraction of the cost
            img.load()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types for corrupt files; all mean "unreadable"
        return False


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path, seen: dict[str, str], duplicates: list[str]) -> list[str]:
    """The image files under a class folder, each real file once.

    Linked folders are followed only while they stay inside the class folder: a link out of it (``cat/loop
    -> ..``) would walk the other classes again, under this label, and a loop would multiply every file.
    A file reached a second time (through a link, or linked from two classes) is left out and recorded in
    ``duplicates``; ``seen`` maps real paths to the first path that reached them, across class folders.
    """
    top = os.path.realpath(folder)
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real == top or not real.startswith(top + os.sep) or real in seen:
                logger.warning("not following %s: it links outside its class folder %s, or back into it",
                               os.path.join(dirpath, d), folder)  # fmt: skip
                continue
            seen[real] = os.path.join(dirpath, d)
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path)
                if real in seen:
                    duplicates.append(path)
                    continue
                seen[real] = path
                out.append(path)
    return out


def scan_image_folder(
    root: str | os.PathLike, class_names: Sequence[str] | None = None, *, check: bool = True, workers: int = 8
) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """Find ``root/<class>/**/<image>`` files and check each one decodes.

    Args:
        root: a folder with one sub-folder per class.
        class_names: the classes to use (e.g. the training split's); default: the sub-folders, sorted.
        check: decode every file up front (unreadable ones are returned separately).
        workers: threads for the check (decoding releases the GIL).

    Returns:
        ``(samples, class_names, unreadable_paths)``.

    Raises:
        ConfigError: no class folders, or a folder that is not among ``class_names``.
    """
    root = Path(root)
    dirs = _class_dirs(root)
    if not dirs:
        raise ConfigError(
            f"{root} has no class sub-folders; expected {root}/<class>/<image files> "
            f"(or {root}/train/<class> and {root}/val/<class>)"
        )
    found = [d.name for d in dirs]
    if class_names is None:
        class_names = found
    else:
        extra = sorted(set(found) - set(class_names))
        if extra:
            raise ConfigError(
                f"{root} has class folders {extra} that the training split lacks (training classes: "
                f"{list(class_names)}); give both splits the same class folders"
            )
    index = {name: i for i, name in enumerate(class_names)}
    seen: dict[str, str] = {}
    duplicates: list[str] = []
    candidates = [(f, index[d.name]) for d in dirs for f in _files(d, seen, duplicates)]
    if duplicates:
        logger.warning(
            "skipped %d duplicate image file(s) under %s (the same file reached again through a link), e.g. %s",
            len(duplicates),
            root,
            duplicates[0],
        )
    bad: list[str] = []
    if check and candidates:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            ok = list(pool.map(_image_ok, [f for f, _ in candidates]))
        bad = [f for (f, _), good in zip(candidates, ok) if not good]
        candidates = [c for c, good in zip(candidates, ok) if good]
    return candidates, list(class_names), bad


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
    split_dirs = (root / "train").is_dir() and (root / "val").is_dir()
    if not split_dirs:
        _refuse_half_split(root)
    if split_dirs:
        train_s, names, bad = scan_image_folder(root / "train")
        val_s, _, bad_val = scan_image_folder(root / "val", names)
        bad += bad_val
    else:
        samples, names, bad = scan_image_folder(root)
    if bad:
        if strict:
            shown = ", ".join(bad[:_MAX_NAMED]) + (
                f" and {len(bad) - _MAX_NAMED} more" if len(bad) > _MAX_NAMED else ""
            )
            raise ConfigError(
                f"{len(bad)} unreadable image file(s) under {root}: {shown}; remove them or drop "
                "`strict_data` to skip them",
                param="strict_data",
            )
        logger.warning("skipping %d unreadable image file(s) under %s, e.g. %s", len(bad), root, bad[0])
    if split_dirs:
        _refuse_shared_files(train_s, val_s)
        _check_classes(root / "train", names, train_s)
        if not val_s:
            raise ConfigError(f"{root / 'val'} holds no readable images; add validation images")
        in_val = {label for _, label in val_s}
        unmeasured = [n for i, n in enumerate(names) if i not in in_val]
        if unmeasured:
            logger.warning(
                "classes %s have training images but no validation images under %s: the validation "
                "accuracy does not measure them; add %s/<class> images for them",
                unmeasured,
                root / "val",
                root / "val",
            )
    else:
        _check_classes(root, names, samples)
        train_s, val_s = _stratified_split(samples, names, val_split, seed)
        _refuse_shared_files(train_s, val_s)
    logger.info(
        "image folder %s: %d classes, %d training and %d validation images%s",
        root,
        len(names),
        len(train_s),
        len(val_s),
        f", {len(bad)} unreadable skipped" if bad else "",
    )
    return FolderSplit(train_s, val_s, names, str(root), bad)


_MAX_NAMED = 20  # unreadable files named in a strict_data error (a line, not a listing of thousands)


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
    named = [d for d in _class_dirs(root) if d.name.lower() in _SPLIT_NAMES and any(_class_dirs(d))]
    if named:
        found = ", ".join(f"{d.name}/" for d in named)
        raise ConfigError(
            f"{root} holds {found} with class folders inside: a train/val layout needs exactly {root}/train "
            f"and {root}/val (rename the validation folder to val), or give a folder whose sub-folders are the "
            "classes"
        )


def check_class_names(
    expected: Sequence[str], found: Sequence[str], *, source: str = "the data", allow_missing: bool = True
) -> None:
    """Refuse data whose class names the model does not know; labels are matched by name, never by position.

    Args:
        expected: the model's class names (index = label), e.g. a run's ``labels.json`` ``class_names``.
        found: the data's class names (its class folder names).
        source: what ``found`` came from, for the message.
        allow_missing: accept data that lacks some of the model's classes (logged as a warning); with
            ``False`` that is an error too.

    Raises:
        ClassNamesError: a name in ``found`` is not in ``expected`` (or one of ``expected`` is missing, with
            ``allow_missing=False``); ``.unknown`` and ``.missing`` list them.

    Example:
        >>> check_class_names(["cat", "dog"], ["cat", "dgo"], source="photos/")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        transferkit.errors.ClassNamesError: photos/ has class folder(s) the model was not trained on: ['dgo']; ...
    """
    err = ClassNamesError("", list(expected), list(found))
    if err.unknown or (err.missing and not allow_missing):
        parts = []
        if err.unknown:
            parts.append(f"{source} has class folder(s) the model was not trained on: {err.unknown}")
        if err.missing:
            parts.append(f"{'it' if err.unknown else source} lacks the model's class(es) {err.missing}")
        raise ClassNamesError(
            "; ".join(parts) + f" (the model's classes: {list(expected)}). Rename the folders to the model's "
            "class names: labels are matched by name, and a folder under another name would be scored "
            "against the wrong class",
            list(expected),
            list(found),
        )
    if err.missing:
        logger.warning(
            "%s has no images of the model's class(es) %s; accuracy is measured on the others",
            source,
            err.missing,
        )


def scan_eval_folder(
    root: str | os.PathLike, class_names: Sequence[str] | None, *, strict: bool = False
) -> FolderSplit:
    """Every image of a folder, labelled by a trained model's ``class_names``: an evaluation set.

    Unlike :func:`split_image_folder`, nothing is held out for training: ``DIR/<class>`` is used whole
    (``DIR/val/<class>`` when the folder has the ``train``/``val`` layout, whose ``train`` was for training).
    Labels follow ``class_names`` by name (:func:`check_class_names`), not the folders' sorted order;
    ``None`` takes the folders' names, sorted (for a model whose class names are unknown).

    Returns:
        A :class:`FolderSplit` whose ``val`` holds the samples and ``train`` is empty.

    Raises:
        ConfigError: a missing or empty folder, unreadable files with ``strict``.
        ClassNamesError: class folders the model does not know.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(
            f"data folder {root} {'is a file, not a folder' if root.exists() else 'does not exist'}; give the "
            "folder that holds the class sub-folders (DIR/<class>/*.png)"
        )
    folder = root / "val" if (root / "train").is_dir() and (root / "val").is_dir() else root
    if not _class_dirs(folder):
        raise ConfigError(f"{folder} has no class sub-folders; expected {folder}/<class>/<image files>")
    found = [d.name for d in _class_dirs(folder)]
    class_names = found if class_names is None else list(class_names)
    check_class_names(class_names, found, source=str(folder))
    samples, names, bad = scan_image_folder(folder, class_names)
    if bad and strict:
        shown = ", ".join(bad[:_MAX_NAMED])
        raise ConfigError(
            f"{len(bad)} unreadable image file(s) under {folder}: {shown}; remove them or drop `strict_data` "
            "to skip them",
            param="strict_data",
        )
    if bad:
        logger.warning("skipping %d unreadable image file(s) under %s, e.g. %s", len(bad), folder, bad[0])
    if not samples:
        raise ConfigError(f"{folder} holds no readable images (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return FolderSplit([], sorted(samples), list(names), str(folder), bad)


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


# ----------------------------------------------------------------------------------------------------------
# loaders


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, without padding: each sample is evaluated exactly once."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def make_loaders(
    bundle: DataBundle | tuple[Dataset, Dataset],
    batch_size: int,
    *,
    workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    drop_last: bool | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders.

    The training loader shuffles with a ``DistributedSampler`` (also for one process: its permutation
    depends only on ``seed`` and the epoch, which is what makes resume exact); call
    :func:`set_loader_epoch` at the start of each epoch. The last incomplete batch is dropped when the
    training set holds more than one batch, so BatchNorm never sees a batch of one.

    Args:
        bundle: a :class:`DataBundle` or ``(train_dataset, val_dataset)``.
        batch_size: per process.
        workers: DataLoader worker processes.
        seed: shuffle seed.
        rank, world_size: this process's place under ``torchrun``.
        pin_memory: page-locked host memory (use with CUDA).
        drop_last: override the rule above.
    """
    from torch.utils.data import DistributedSampler

    train_ds, val_ds = (bundle.train, bundle.val) if isinstance(bundle, DataBundle) else bundle
    if drop_last is None:
        drop_last = len(train_ds) // world_size > batch_size
    sampler = DistributedSampler(train_ds, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    common = {"num_workers": workers, "pin_memory": pin_memory, "persistent_workers": False}
    if workers > 0:
        common["prefetch_factor"] = 2
    train = DataLoader(
        train_ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last, generator=generator, **common
    )
    val = DataLoader(
        val_ds, batch_size=batch_size, sampler=ShardSampler(len(val_ds), rank, world_size), **common
    )
    return train, val


def set_loader_epoch(loader: DataLoader, epoch: int, seed: int = 0) -> None:
    """Make the loader's epoch reproducible: the sampler's permutation and the workers' seeds.

    Worker seeds come from ``loader.generator``; reseeding it from ``(seed, epoch)`` means a run resumed at
    epoch ``k`` draws the same augmentation as an uninterrupted run did at epoch ``k``.
    """
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch)


# ----------------------------------------------------------------------------------------------------------
# feature cache


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> TensorDataset:
    """Run ``model.forward_features`` over a loader once, in eval mode: the linear probe's feature cache.

    Args:
        model: an adapter (anything with ``forward_features``).
        loader: yields ``(images, labels)``; it must not augment, or the cache would freeze one random draw.
        device: where to compute.
        amp_dtype: autocast dtype (features are stored as float32 either way).
        channels_last: feed NHWC tensors.

    Returns:
        A ``TensorDataset(features, labels)`` on the CPU, in the loader's order.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                f = model.forward_features(x)
            feats.append(f.float().cpu())
            labels.append(torch.as_tensor(y).cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ConfigError("cannot build a feature cache from an empty data set")
    return TensorDataset(torch.cat(feats), torch.cat(labels))


def cache_features(
    model: nn.Module,
    bundle: DataBundle,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    *,
    workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> DataBundle:
    """A :class:`DataBundle` of cached backbone features for both splits (see :func:`extract_features`).

    Raises:
        ConfigError: the training set augments (the cache would freeze one random draw).
    """
    if bundle.augment:
        raise ConfigError(
            "the feature cache needs augmentation off (augment=False); it would freeze one random draw"
        )
    kwargs = {"device": device, "amp_dtype": amp_dtype, "channels_last": channels_last}
    out = []
    for ds in (bundle.train, bundle.val):
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
        out.append(extract_features(model, loader, **kwargs))
    logger.info(
        "feature cache: %d + %d feature vectors of size %d",
        len(out[0]),
        len(out[1]),
        out[0].tensors[0].shape[1],
    )
    return DataBundle(
        out[0], out[1], bundle.class_names, bundle.source, bundle.img_size, bundle.skipped, False
    )


def limit_dataset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of ``n`` items (all of them when ``n`` is None or not smaller): quick runs.

    Example:
        >>> len(limit_dataset(TensorDataset(torch.arange(10)), 4))
        4
    """
    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise ConfigError(f"a data limit must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.Subset(dataset, sorted(torch.randperm(len(dataset), generator=g)[:n].tolist()))
