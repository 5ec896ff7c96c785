"""evaluate(): the free function the Trainer and ``transferkit evaluate`` share."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit import evaluate
from transferkit.train import Trainer


def _data(n: int = 40) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_counts_and_confusion_match_a_hand_computation() -> None:
    torch.manual_seed(0)
    model, ds = nn.Linear(6, 3), _data()
    result = evaluate(model, DataLoader(ds, batch_size=7), num_classes=3)
    with torch.no_grad():
        logits = model(ds.tensors[0])
    pred, y = logits.argmax(1), ds.tensors[1]
    assert result.count == 40
    assert result.acc == int((pred == y).sum()) / 40
    assert abs(result.loss - nn.functional.cross_entropy(logits, y).item()) < 1e-6
    for t in range(3):
        for p in range(3):
            assert result.confusion[t, p] == ((y == t) & (pred == p)).sum()


def test_gives_the_model_its_mode_back_and_agrees_with_the_trainer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    loader = DataLoader(_data(), batch_size=8)
    model.train()
    alone = evaluate(model, loader, num_classes=3)
    assert model.training
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, opt, loader, loader, epochs=1, num_classes=3)
    via = trainer.evaluate()
    assert (alone.acc, alone.count) == (via.acc, via.count)
    assert torch.equal(alone.confusion, via.confusion)


def test_empty_loader_is_nan_loss_and_zero_accuracy() -> None:
    result = evaluate(nn.Linear(6, 3), [], num_classes=3)
    assert result.count == 0 and result.acc == 0.0 and result.loss != result.loss
