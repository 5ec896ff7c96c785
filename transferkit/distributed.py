"""Processes, devices, seeds and precision: where a run trains and how its processes agree.

:func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joins the
process group (gloo on CPU, nccl on GPU) and picks this process's device; :class:`DistContext` is this
process's place in the run, and :func:`barrier` / :func:`broadcast` make ranks agree (rank 0 decides a
run folder's name, every rank leaves together). A single process gets ``DistContext()`` and the two are
no-ops.

Example:
    >>> ctx, device = init_distributed("cpu")
    >>> ctx.is_main, broadcast("runs/a", ctx), device
    (True, 'runs/a', device(type='cpu'))
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from transferkit.errors import ConfigError

__all__ = [
    "DistContext",
    "select_device",
    "init_distributed",
    "cleanup_distributed",
    "process_group",
    "barrier",
    "broadcast",
    "all_reduce_sum",
    "sync_buffers",
    "seed_everything",
    "amp_dtype_for",
]

logger = logging.getLogger(__name__)


def select_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """Resolve ``auto|cpu|cuda|cuda:N`` to a device.

    ``auto`` is ``cuda:<local_rank>`` when CUDA is available, else the CPU. Under torchrun a plain ``cuda``
    means this process's GPU (``cuda:<LOCAL_RANK>``).

    Raises:
        ConfigError: CUDA requested but unavailable, a GPU index out of range, or an unknown spec.

    Example:
        >>> select_device("cpu")
        device(type='cpu')
    """
    spec = str(spec).strip().lower()
    if spec == "auto":
        return (
            torch.device("cuda", local_rank % torch.cuda.device_count())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"`device` {spec}: CUDA is not available on this machine (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none'}); use `device` cpu or `device` auto",
                param="device",
            )
        index = local_rank if spec == "cuda" else spec.partition(":")[2]
        try:
            index = int(index)
        except ValueError:
            raise ConfigError(f"`device` {spec}: expected cuda:N with an integer N", param="device") from None
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise ConfigError(
                f"`device` {spec}: GPU index {index} out of range; this machine has {count} GPU(s)",
                param="device",
            )
        return torch.device("cuda", index)
    raise ConfigError(f"`device` {spec!r}: expected auto, cpu, cuda or cuda:N", param="device")


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str = "auto", timeout_s: float = 600.0) -> tuple[DistContext, torch.device]:
    """Join torchrun's process group if its environment says so; pick this process's device.

    Returns:
        ``(DistContext, device)``; a single process gets ``DistContext()`` and no process group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_spec, local_rank)
    if world <= 1:
        return DistContext(), device
    import datetime

    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    logger.debug("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return DistContext(rank, world, local_rank, backend), device


def cleanup_distributed() -> None:
    """Leave the process group, if any."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device_spec: str = "auto") -> Iterator[tuple[DistContext, torch.device]]:
    """:func:`init_distributed` for the ``with`` block, :func:`cleanup_distributed` after it."""
    ctx, device = init_distributed(device_spec)
    try:
        yield ctx, device
    finally:
        cleanup_distributed()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype_for(device: torch.device) -> torch.dtype:
    """bfloat16 on CPUs and GPUs that support it (no loss scaling needed), float16 on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (picklable; a single process gets ``obj`` back)."""
    if not ctx.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: Tensor, ctx: DistContext) -> Tensor:
    """``t`` summed over every rank, in place (``t`` itself in a single process)."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics).

    DDP broadcasts buffers at the start of each forward, so after the last training step every rank holds
    statistics updated by its own batch; before evaluating, rank 0's make every rank's model the one rank 0
    saves.
    """
    if not ctx.enabled:
        return
    import torch.distributed as dist

    for buf in model.buffers():
        dist.broadcast(buf, src=0)
