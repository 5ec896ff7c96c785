"""The modules a Trainer calls: the model, or its head on cached features, wrapped in DDP and compiled."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from transferkit.distributed import DistContext

__all__ = ["HeadOnly", "build_forwards"]


class HeadOnly(nn.Module):
    """Forward = the adapter's head on cached features, so DDP/compile see one module either way."""

    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, features: Tensor) -> Tensor:
        return self.adapter.forward_head(features)


def build_forwards(
    model: nn.Module, *, inputs: str, dist: DistContext, device: torch.device, compile: bool
) -> tuple[nn.Module, nn.Module]:
    """``(train forward, eval forward)`` of ``model``: head-only on ``inputs="features"``; the training one
    in DDP when several processes train and a parameter is trainable; both ``torch.compile``-d on request.

    DDP only syncs the parameters that were trainable when it was built: rebuild after a thaw.
    """
    base = HeadOnly(model) if inputs == "features" else model
    train_mod: nn.Module = base
    if dist.enabled and any(p.requires_grad for p in base.parameters()):
        from torch.nn.parallel import DistributedDataParallel as DDP

        # auxiliary heads (inception) get no gradient from the main logits
        aux = len(getattr(model, "head_names", [])) > 1
        ids = [device.index] if device.type == "cuda" else None
        train_mod = DDP(base, device_ids=ids, find_unused_parameters=aux)
    if compile:
        compiled = torch.compile(base)
        train_mod = compiled if train_mod is base else torch.compile(train_mod)
        base = compiled
    return train_mod, base
