"""Loaders: shuffling that makes resume exact, one-pass validation shards under ``torchrun``, quick subsets.

:func:`make_loaders` builds the loaders (workers, pinned memory on CUDA, a ``DistributedSampler`` even
for one process); :func:`set_loader_epoch` reseeds their shuffling per epoch, so a resumed run sees the
same batches as an uninterrupted one. :func:`limit_dataset` takes a seeded subset for quick runs.

Example:
    >>> from torch.utils.data import TensorDataset
    >>> ds = TensorDataset(torch.arange(10.0), torch.zeros(10))
    >>> train, val = make_loaders((ds, ds), batch_size=4)
    >>> set_loader_epoch(train, epoch=1)
    >>> len(train), len(val)
    (2, 3)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from transferkit.data.bundle import DataBundle
from transferkit.errors import ConfigError

__all__ = ["ShardSampler", "make_loaders", "set_loader_epoch", "limit_dataset"]


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


def limit_dataset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of ``n`` items (all of them when ``n`` is None or not smaller): quick runs.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> len(limit_dataset(TensorDataset(torch.arange(10)), 4))
        4
    """
    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise ConfigError(f"a data limit must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.Subset(dataset, sorted(torch.randperm(len(dataset), generator=g)[:n].tolist()))
