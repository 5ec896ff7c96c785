"""The linear probe's feature cache: the frozen backbone's pooled features, computed once.

With the whole backbone frozen and augmentation off, every epoch would compute the same features again;
:func:`cache_features` computes them once for both splits and the head trains on them.

Example:
    >>> from torch import nn
    >>> from torch.utils.data import TensorDataset
    >>> class Probe(nn.Module):
    ...     def forward_features(self, x):
    ...         return x.flatten(1)
    >>> images = TensorDataset(torch.zeros(5, 2, 2), torch.arange(5))
    >>> features, labels = extract_features(Probe(), DataLoader(images, batch_size=2)).tensors
    >>> tuple(features.shape), labels.tolist()
    ((5, 4), [0, 1, 2, 3, 4])
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit.data.bundle import DataBundle
from transferkit.errors import ConfigError

__all__ = ["extract_features", "cache_features"]

logger = logging.getLogger("transferkit.data")


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
