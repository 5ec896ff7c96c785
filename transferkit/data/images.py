"""Reading image files: :class:`ImageFileDataset`, which never lets a bad file kill a DataLoader worker.

Files are read with PIL and converted to RGB (or L for 1-channel backbones); :func:`to_8bit` scales
16-bit grayscale images down instead of letting PIL clip them.

Example:
    >>> from PIL import Image
    >>> to_8bit(Image.new("I;16", (2, 2), 65535)).getpixel((0, 0))
    255
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from transferkit.errors import TransferkitError

__all__ = ["ImageFileDataset", "to_8bit"]

logger = logging.getLogger("transferkit.data")


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
