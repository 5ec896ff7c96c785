"""Preprocessing for image files: the backbone's transforms with an augmentation policy, described as JSON.

:func:`build_transforms` wraps :func:`transferkit.backbones.preprocess.build_transforms` (mean/std/size
from the backbone's weights metadata) and places an automatic augmentation policy in the training
pipeline; :func:`eval_transform_spec` reads the evaluation pipeline back as data, for ``labels.json``,
so that a trained run can be used with exactly the preprocessing it was validated with.

Example:
    >>> config = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "input_size": (3, 32, 32)}
    >>> tf = build_transforms(config, train=False, img_size=32)
    >>> from PIL import Image
    >>> tuple(tf(Image.new("RGB", (40, 40))).shape)
    (3, 32, 32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from transferkit.errors import TransferkitError

__all__ = ["build_transforms", "eval_transform_spec"]


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
