"""Input preprocessing a backbone expects: the data config (mean, std, sizes) and transforms built from it.

The config comes from the torchvision weights' ``transforms`` preset (crop size, resize size, mean,
std, interpolation) or from timm's ``resolve_data_config``; other networks get the ImageNet defaults.

Example:
    >>> cfg = data_config_for_torchvision("resnet18")
    >>> cfg["input_size"], cfg["resize_size"]
    ((3, 224, 224), 256)
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "default_data_config",
    "data_config_for_torchvision",
    "data_config_for_timm",
    "adapt_data_config",
    "build_transforms",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_data_config() -> dict[str, Any]:
    """ImageNet statistics at 224 px (resize 256), bilinear: torchvision's classic preset."""
    return {
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "input_size": (3, 224, 224),
        "resize_size": 256,
        "interpolation": "bilinear",
        "crop_pct": 224 / 256,
    }


def data_config_for_torchvision(name: str, weights: Any = None) -> dict[str, Any]:
    """The data config of a torchvision builder, from ``weights`` or the builder's DEFAULT weights."""
    import torchvision
    from torchvision.transforms._presets import ImageClassification

    if weights is None:
        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, AttributeError):
            return default_data_config()
    preset = weights.transforms
    if getattr(preset, "func", None) is not ImageClassification:
        return default_data_config()
    defaults = {k: p.default for k, p in inspect.signature(ImageClassification.__init__).parameters.items()}
    kw = {**defaults, **preset.keywords}
    crop = int(kw["crop_size"])
    resize = int(kw["resize_size"])
    return {
        "mean": tuple(kw["mean"]),
        "std": tuple(kw["std"]),
        "input_size": (3, crop, crop),
        "resize_size": resize,
        "interpolation": str(getattr(kw["interpolation"], "value", kw["interpolation"])),
        "crop_pct": crop / resize,
    }


def data_config_for_timm(net: torch.nn.Module) -> dict[str, Any]:
    """The data config timm resolves for a model (``timm.data.resolve_data_config``)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=net)
    size = tuple(cfg["input_size"])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    return {
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "input_size": size,
        "resize_size": int(math.floor(size[-1] / crop_pct)),
        "interpolation": str(cfg.get("interpolation") or "bicubic"),
        "crop_pct": crop_pct,
    }


def adapt_data_config(cfg: dict[str, Any], in_chans: int) -> dict[str, Any]:
    """Mean/std for ``in_chans`` channels, matching the first-conv adaptation.

    One channel: the average of the RGB statistics (a summed filter sees a grey image as (g, g, g)).
    More: the statistics repeated cyclically, as the filters are.
    """
    cfg = dict(cfg)
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if in_chans == len(mean):
        return cfg
    if in_chans == 1:
        cfg["mean"], cfg["std"] = (sum(mean) / len(mean),), (sum(std) / len(std),)
    else:
        cfg["mean"] = tuple(mean[i % len(mean)] for i in range(in_chans))
        cfg["std"] = tuple(std[i % len(std)] for i in range(in_chans))
    cfg["input_size"] = (in_chans, *tuple(cfg["input_size"])[1:])
    return cfg


def build_transforms(cfg: dict[str, Any], train: bool = False, img_size: int | None = None) -> Any:
    """torchvision ``transforms.v2`` pipeline for PIL images or uint8/float tensors.

    Eval: resize (shorter side) -> center crop -> float in [0, 1] -> normalize. Train: random resized
    crop (scale 0.7-1) -> horizontal flip -> float -> normalize. A one-channel config converts RGB input
    to grey first.

    Args:
        cfg: a data config (``mean``, ``std``, ``input_size``, ``crop_pct``, ``interpolation``).
        train: add the light augmentation.
        img_size: crop size overriding ``input_size`` (resize keeps the config's crop ratio).
    """
    from torchvision.transforms import InterpolationMode, v2

    crop = int(img_size or cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    resize = cfg["resize_size"] if img_size is None else int(math.floor(crop / crop_pct))
    try:
        interp = InterpolationMode(cfg.get("interpolation", "bilinear"))
    except ValueError:
        interp = InterpolationMode.BILINEAR
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if len(cfg["mean"]) == 1:
        to_float.insert(0, v2.Grayscale(1))  # a one-channel network: RGB inputs become grey, grey stay
    norm = v2.Normalize(mean=list(cfg["mean"]), std=list(cfg["std"]))
    if train:
        steps = [
            v2.RandomResizedCrop(crop, scale=(0.7, 1.0), interpolation=interp, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps = [v2.Resize(resize, interpolation=interp, antialias=True), v2.CenterCrop(crop)]
    return v2.Compose([*steps, *to_float, norm])
