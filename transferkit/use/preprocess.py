"""A run's evaluation preprocessing, rebuilt from what ``labels.json`` records (``eval_transform``).

:class:`Preprocess` replays the recorded steps -- resize, center crop, grey conversion, float scaling,
normalisation -- with the same torchvision ``transforms.v2`` classes the run used, in the same order, so an
image goes through exactly what the run's validation pass did. Files are read the way the run read them
(16-bit grayscale scaled by 1/257, then RGB, or L for a 1-channel network). Runs on the embedded digits
recorded their own steps (bilinear resize of the grey scan, channels repeated, normalised); an image
file given to such a run is read as grey and goes through those steps.

Example:
    >>> spec = {"input": "PIL image converted to RGB", "channels": 3, "steps": [
    ...     {"op": "resize", "size": [36], "interpolation": "bilinear", "antialias": True},
    ...     {"op": "center_crop", "size": [32, 32]}, {"op": "to_float"},
    ...     {"op": "normalize", "mean": [0.5] * 3, "std": [0.5] * 3}]}
    >>> from PIL import Image
    >>> tuple(Preprocess(spec)(Image.new("RGB", (40, 50))).shape)
    (3, 32, 32)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from transferkit.errors import TransferkitError

__all__ = ["Preprocess", "read_image"]


def read_image(path: str | os.PathLike, mode: str = "RGB") -> Any:
    """A PIL image of ``path`` in ``mode`` (``"RGB"`` or ``"L"``), read as a run reads its images.

    Example:
        >>> read_image("/no/such.png")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        FileNotFoundError: ...
    """
    from PIL import Image

    from transferkit.data import to_8bit

    with Image.open(path) as img:
        return to_8bit(img).convert(mode)


class Preprocess:
    """One image (PIL, or a ``(C, H, W)`` uint8/float tensor) -> the network's input tensor.

    Args:
        spec: ``labels.json``'s ``eval_transform`` (see :func:`transferkit.data.eval_transform_spec`).

    Attributes:
        spec: the recorded steps.
        channels: the network's input channels.
        size: the side of the square input.
        mode: the PIL mode files are read in (``"L"`` for a 1-channel network, else ``"RGB"``).
        digits: the run trained on the embedded digits (the scan's own steps, not a file pipeline).

    Raises:
        TransferkitError: a recorded step this version cannot replay.
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        self.channels = int(spec.get("channels") or len(_step(spec, "normalize").get("mean", [0] * 3)))
        self.digits = str(spec.get("input", "")).startswith("scikit-learn digits")
        self.mode = "L" if self.channels == 1 or self.digits else "RGB"
        self.pipeline = _digits_steps(spec) if self.digits else _file_steps(spec)
        crop = _step(spec, "center_crop").get("size") or _step(spec, "resize").get("size") or [0]
        self.size = int(spec.get("crop_size") or crop[0])

    def __repr__(self) -> str:
        return f"Preprocess({self.describe()})"

    def describe(self) -> str:
        """One line: the steps, as a person reads them."""
        parts = [f"{self.mode} image"]
        for step in self.spec.get("steps", []):
            op = step.get("op")
            if op == "resize":
                parts.append(f"resize {step['size']} {step.get('interpolation', '')}".strip())
            elif op == "center_crop":
                parts.append(f"center crop {step['size']}")
            elif op == "normalize":
                parts.append(f"normalize mean {_short(step['mean'])} std {_short(step['std'])}")
            elif op:
                parts.append(str(op).replace("_", " "))
        return " -> ".join(parts)

    def read(self, path: str | os.PathLike) -> Any:
        """The image file as the run read its images."""
        return read_image(path, self.mode)

    def __call__(self, image: Any) -> Tensor:
        if isinstance(image, Tensor):
            image = self._fit_channels(image)
        elif hasattr(image, "convert"):  # PIL
            from transferkit.data import to_8bit

            image = to_8bit(image)
            image = image if image.mode == self.mode else image.convert(self.mode)
        else:
            raise TransferkitError(
                f"cannot preprocess a {type(image).__name__}: give a PIL image, a (C, H, W) tensor or a path",
                param="images",
            )
        return self.pipeline(image)

    def _fit_channels(self, image: Tensor) -> Tensor:
        """A tensor image with the channels the pipeline expects (grey repeated, alpha dropped)."""
        if image.dim() != 3:
            raise TransferkitError(
                f"a tensor image must be (C, H, W), got shape {tuple(image.shape)}", param="images"
            )
        c = image.shape[0]
        if c == 4:
            image, c = image[:3], 3
        if self.digits:
            return image if c == 1 else _grey(image)
        if c == 1 and self.channels == 3:
            return image.expand(3, -1, -1)
        if c not in (1, 3):
            raise TransferkitError(f"a tensor image must have 1, 3 or 4 channels, got {c}", param="images")
        return image


def _short(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _step(spec: Mapping[str, Any], op: str) -> dict[str, Any]:
    return next((s for s in spec.get("steps", []) if s.get("op") == op), {})


def _file_steps(spec: Mapping[str, Any]) -> Any:
    """The recorded steps as the ``v2.Compose`` :func:`transferkit.data.build_transforms` built."""
    from torchvision.transforms import InterpolationMode, v2

    steps: list[Any] = []
    for step in spec.get("steps", []):
        op = step.get("op")
        if op == "resize":
            steps.append(v2.Resize(list(step["size"]), interpolation=InterpolationMode(step["interpolation"]),
                                   antialias=bool(step.get("antialias", True))))  # fmt: skip
        elif op == "center_crop":
            steps.append(v2.CenterCrop(list(step["size"])))
        elif op == "grayscale":
            steps.append(v2.Grayscale(int(step.get("channels", 1))))
        elif op == "to_float":
            steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        elif op == "normalize":
            steps.append(v2.Normalize(mean=list(step["mean"]), std=list(step["std"])))
        else:
            raise TransferkitError(
                f"labels.json's eval_transform has a step this version cannot rebuild: {step}; "
                "use the transferkit version that wrote the run"
            )
    if not any(isinstance(s, v2.ToDtype) for s in steps):
        raise TransferkitError(f"labels.json's eval_transform has no to_float step: {spec.get('steps')}")
    return v2.Compose(steps)


class _DigitsSteps:
    """The embedded digits' steps on a grey image: [0, 1] floats, bilinear resize (no antialias) of the
    whole scan, clamped, channels repeated, normalised (see :func:`transferkit.data.load_digits_data`)."""

    def __init__(self, size: int, mean: list[float], std: list[float]) -> None:
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Any) -> Tensor:
        if not isinstance(image, Tensor):
            import numpy as np

            image = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).div_(255.0).unsqueeze(0)
        elif not image.is_floating_point():
            image = image.float().div(255.0)
        x = torch.nn.functional.interpolate(
            image.float().unsqueeze(0), size=(self.size, self.size), mode="bilinear", align_corners=False
        )
        x = x.squeeze(0).clamp_(0.0, 1.0).expand(len(self.mean), -1, -1)
        return (x - self.mean) / self.std


def _digits_steps(spec: Mapping[str, Any]) -> _DigitsSteps:
    size = _step(spec, "resize").get("size") or [spec.get("crop_size")]
    norm = _step(spec, "normalize")
    return _DigitsSteps(int(size[0]), list(norm["mean"]), list(norm["std"]))


def _grey(image: Tensor) -> Tensor:
    """ITU-R 601-2 luma, as PIL's ``convert("L")``."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(3, 1, 1)
    grey = (image.float() * weights).sum(0, keepdim=True)
    return grey.round().to(image.dtype) if not image.is_floating_point() else grey
