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

The modules: ``bundle`` (DataBundle), ``digits``, ``scan`` (finding and checking image files),
``folders`` (train/val splits of an image folder), ``eval_folder`` (a folder labelled by a trained
model's classes), ``images`` (reading image files), ``transforms``, ``loaders``, ``feature_cache``. Their
public names are all importable from ``transferkit.data``.

Example:
    >>> bundle = load_digits_data(img_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> len(bundle.train), len(bundle.val), bundle.class_names[:3]
    (1437, 360, ['0', '1', '2'])
    >>> x, y = bundle.val[0]
    >>> tuple(x.shape)
    (3, 16, 16)
"""

from __future__ import annotations

from transferkit.data.bundle import DataBundle
from transferkit.data.digits import DIGITS_SPLIT_SEED, DIGITS_VAL_FRACTION, DigitsDataset, load_digits_data
from transferkit.data.eval_folder import check_class_names, scan_eval_folder
from transferkit.data.feature_cache import cache_features, extract_features
from transferkit.data.folders import FolderSplit, load_image_folder, split_image_folder
from transferkit.data.images import ImageFileDataset, to_8bit
from transferkit.data.loaders import ShardSampler, limit_dataset, make_loaders, set_loader_epoch
from transferkit.data.scan import IMAGE_EXTENSIONS, scan_image_folder
from transferkit.data.transforms import build_transforms, eval_transform_spec

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
    "DIGITS_VAL_FRACTION",
]
