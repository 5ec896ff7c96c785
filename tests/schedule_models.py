"""Tiny models for the freeze/optim/schedule tests: they implement ``layer_groups()`` like an Adapter."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyNet", "TiedNet", "tiny_data"]


class TinyNet(nn.Module):
    """A 4-group CNN (stem, layer1, layer2, head) with BatchNorm and dropout, for 16px images."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layer2(self.layer1(self.stem(x)))).flatten(1)
        return self.head(self.drop(x))

    def layer_groups(self) -> dict[str, list[str]]:
        names = [n for n, _ in self.named_parameters()]
        return {g: [n for n in names if n.startswith(g + ".")] for g in ("stem", "layer1", "layer2", "head")}

    def head_parameter_names(self) -> list[str]:
        return self.layer_groups()["head"]


class TiedNet(nn.Module):
    """Embedding and output layer share one weight (listed under the head group by its alias)."""

    def __init__(self, vocab: int = 10, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(torch.relu(self.body(self.emb(tokens)))))

    def layer_groups(self) -> dict[str, list[str]]:
        return {
            "emb": ["emb.weight"],
            "body": ["body.weight", "body.bias", "norm.weight", "norm.bias"],
            "head": ["out.weight", "out.bias"],
        }


def tiny_data(
    n: int = 48, num_classes: int = 3, size: int = 16, seed: int = 0
) -> torch.utils.data.TensorDataset:
    """A learnable synthetic image set: the class shifts one colour channel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g)
    x[torch.arange(n), y % 3] += 1.0
    return torch.utils.data.TensorDataset(x, y)
