"""Evaluate a classifier over a loader: loss, accuracy and the confusion matrix, as a free function.

:func:`evaluate` is what :meth:`transferkit.train.Trainer.evaluate` runs each epoch and what
``transferkit evaluate`` runs on a held-out folder, so a run's validation accuracy and a later
evaluation of the same weights on the same images are the same computation.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> ds = TensorDataset(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    >>> result = evaluate(nn.Linear(4, 3), DataLoader(ds, batch_size=5), num_classes=3)
    >>> result.count, result.confusion.shape
    (12, torch.Size([3, 3]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    """Validation loss and accuracy, and the confusion matrix (rows: true class, columns: predicted)."""

    loss: float
    acc: float
    count: int
    confusion: Tensor


@torch.no_grad()
def evaluate(
    model: nn.Module | Callable[[Tensor], Tensor],
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> EvalResult:
    """Loss, accuracy and confusion matrix of ``model`` over ``loader`` (``(inputs, labels)`` batches).

    Args:
        model: the network, or any callable ``inputs -> logits`` (a compiled or head-only view); an
            ``nn.Module`` is put in eval mode for the pass and given its mode back afterwards.
        loader: batches of ``(inputs, integer labels)``.
        num_classes: the confusion matrix's size (default: ``model.num_classes``).
        device: where to run (default: the model's first parameter's device, else CPU).
        amp_dtype: autocast to this dtype (``None``: full precision).
        channels_last: give 4-D inputs the NHWC memory format.
        reduce: sums a tensor across processes (DDP); ``None`` on one process.

    Example:
        >>> ds = [(torch.zeros(2, 4), torch.tensor([0, 1]))]
        >>> evaluate(nn.Linear(4, 2), ds, num_classes=2).count
        2
    """
    c = int(num_classes if num_classes is not None else model.num_classes)
    if device is None:
        first = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    non_blocking = device.type == "cuda"
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, n
    confusion = torch.zeros(c * c, dtype=torch.int64, device=device)
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
            sums[1] += y.numel()
            confusion += torch.bincount(y * c + logits.argmax(1), minlength=c * c)
    finally:
        if was_training is not None:
            model.train(was_training)
    if reduce is not None:
        sums, confusion = reduce(sums), reduce(confusion)
    totals, matrix = sums.tolist(), confusion.view(c, c).cpu()
    n = int(totals[1])
    acc = float(matrix.trace()) / n if n else 0.0
    return EvalResult(loss=totals[0] / n if n else float("nan"), acc=acc, count=n, confusion=matrix)
