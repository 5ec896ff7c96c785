"""Tests for transferkit.train: devices, the loop, checkpoints, exact resume, the linear-probe cache."""

from __future__ import annotations

import pytest
import torch

from transferkit.backbones import create_model
from transferkit.data import cache_features, limit_dataset, load_digits_data, make_loaders
from transferkit.distributed import select_device
from transferkit.errors import CheckpointError, ConfigError
from transferkit.freeze import freeze_backbone
from transferkit.optim import build_optimizer
from transferkit.run import RunFolder
from transferkit.schedule import GradualUnfreeze, LRSchedule
from transferkit.train import Trainer

TINY = "tests.tiny_models:tinynet"


def digits(n_train: int = 96, n_val: int = 48, augment: bool = True):
    bundle = load_digits_data(img_size=16, augment=augment)
    bundle.train = limit_dataset(bundle.train, n_train)
    bundle.val = limit_dataset(bundle.val, n_val)
    return bundle


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="expected auto, cpu"):
        select_device("tpu")
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match="CUDA is not available"):
                select_device(spec)


def make_trainer(tmp_path=None, epochs: int = 3, gradual: bool = True, amp: bool = False, seed: int = 0):
    """A tiny fine-tuning job: head only, then the groups thaw (one per epoch), cosine LR, augmentation."""
    torch.manual_seed(seed)
    model = create_model(TINY, 10, weights=None)
    sched = GradualUnfreeze(model, every=1, lr_decay=0.5) if gradual else None
    opt = build_optimizer(model, "adamw", lr=3e-3, weight_decay=0.01)
    train, val = make_loaders(digits(), 16, seed=seed)
    lr = LRSchedule(opt, "cosine", total_steps=epochs * len(train), warmup_steps=2)
    saver = RunFolder(tmp_path).save_epoch if tmp_path is not None else None  # the Trainer writes nothing
    return Trainer(model, opt, train, val, epochs=epochs, lr_schedule=lr, freeze_schedule=sched, amp=amp,
                   on_epoch_end=saver, seed=seed, meta={"backbone": TINY})  # fmt: skip


def test_fit_records_history_and_checkpoints(tmp_path):
    from transferkit.checkpoint import load_checkpoint

    trainer = make_trainer(tmp_path, epochs=2)
    result = trainer.fit()
    assert [r["epoch"] for r in result.history] == [0, 1]
    assert set(result.history[1]["lr"]) >= {"head", "block"}  # "block" thawed at epoch 1
    assert result.last_eval.confusion.sum() == 48 and 0 <= result.best_acc <= 1
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["meta"]["backbone"] == TINY
    assert {"freeze_schedule", "lr_schedule", "history", "best_acc"} <= set(ckpt["extra"])
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == result.best_epoch


def test_the_trainer_writes_nothing_and_reports_each_epoch(tmp_path, monkeypatch):
    """Issue 13: the Trainer emits EpochEnd events; writing checkpoints is the RunFolder's."""
    monkeypatch.chdir(tmp_path)
    events = []
    trainer = make_trainer(None, epochs=2)
    trainer.on_epoch_end = lambda t, event: events.append(event)
    result = trainer.fit()
    assert list(tmp_path.iterdir()) == []
    assert [e.epoch for e in events] == [0, 1] and [e.row for e in events] == result.history
    assert events[0].improved and events[1].improved == (result.best_epoch == 1)
    state = trainer.checkpoint_state(1, events[1].row)
    assert (
        state["epoch"] == 1
        and state["model"] is trainer.model
        and state["extra"]["best_epoch"] == result.best_epoch
    )


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_resume_is_exact(tmp_path, amp):
    """Epochs 0-2 in one go == epoch 0, then a fresh process-like resume for epochs 1-2."""
    full = make_trainer(tmp_path / "full", amp=amp)
    full.fit()
    first = make_trainer(tmp_path / "split", amp=amp)
    first.epochs = 1  # stop after epoch 0, like a killed run
    first.fit()
    torch.manual_seed(123)  # a fresh process starts from other RNG states; resume must restore them
    resumed = make_trainer(tmp_path / "split", amp=amp)
    assert resumed.resume(tmp_path / "split" / "last.pt") == 1
    resumed.fit()
    assert [r["val_acc"] for r in resumed.history] == [r["val_acc"] for r in full.history]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [g["name"] for g in full.optimizer.param_groups] == [
        g["name"] for g in resumed.optimizer.param_groups
    ]


def test_resume_log_line_counts_epochs_from_one(tmp_path, caplog):
    """After epoch index 0 the run resumes at its second epoch: logged 1-based, as the console counts."""
    import logging

    first = make_trainer(tmp_path, epochs=1, gradual=False)
    first.fit()
    resumed = make_trainer(tmp_path, epochs=3, gradual=False)
    with caplog.at_level(logging.INFO, logger="transferkit.train"):
        assert resumed.resume(tmp_path / "last.pt") == 1  # the API's index stays 0-based
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed"))
    assert line.startswith("resumed at epoch 2/3 (best val acc ") and line.endswith(" at epoch 1)")


def test_resume_refuses_a_weights_file(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="not a transferkit training checkpoint"):
        make_trainer(tmp_path).resume(tmp_path / "w.pt")


def test_linear_probe_cache_equals_recomputing():
    """Training the head on cached features gives the same head as recomputing features every epoch."""

    def probe(cached: bool):
        torch.manual_seed(0)
        model = create_model(TINY, 10, weights=None)
        freeze_backbone(model)
        bundle = digits(augment=False)
        if cached:
            bundle = cache_features(model, bundle, batch_size=32)
        opt = build_optimizer(model, "sgd", lr=0.1)
        train, val = make_loaders(bundle, 16, seed=0)
        trainer = Trainer(model, opt, train, val, epochs=3, inputs="features" if cached else "images",
                          frozen_backbone=True)  # fmt: skip
        result = trainer.fit()
        return model, result

    m_cached, r_cached = probe(True)
    m_fresh, r_fresh = probe(False)
    assert torch.allclose(m_cached.head.weight, m_fresh.head.weight, atol=1e-5)
    assert torch.allclose(m_cached.head.bias, m_fresh.head.bias, atol=1e-5)
    for a, b in zip(r_cached.history, r_fresh.history):
        assert a["val_acc"] == b["val_acc"] and a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
    # the frozen backbone really did not change (BatchNorm statistics included)
    for (name, a), b in zip(m_cached.state_dict().items(), m_fresh.state_dict().values()):
        if not name.startswith("backbone.fc"):
            assert torch.equal(a, b), name


def test_trainer_rejects_bad_arguments():
    model = create_model(TINY, 10, weights=None)
    opt = build_optimizer(model, "sgd", lr=0.1)
    train, val = make_loaders(digits(32, 16), 16)
    with pytest.raises(ConfigError, match="epochs"):
        Trainer(model, opt, train, val, epochs=0)
    with pytest.raises(ConfigError, match="inputs"):
        Trainer(model, opt, train, val, epochs=1, inputs="pixels")


@pytest.mark.slow
def test_compiled_training_saves_plain_keys(tmp_path):
    """--compile: torch.compile'd forward; checkpoints keep the model's own key names."""
    from transferkit.checkpoint import load_checkpoint

    trainer = make_trainer(tmp_path, epochs=1, gradual=False)
    trainer.compile = True
    trainer._wrap()
    trainer.fit()
    keys = load_checkpoint(tmp_path / "last.pt")["models"]["model"].keys()
    assert keys == trainer.model.state_dict().keys() and not any("_orig_mod" in k for k in keys)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_amp_channels_last(tmp_path):
    torch.manual_seed(0)
    model = create_model(TINY, 10, weights=None)
    opt = build_optimizer(model, "adamw", lr=3e-3)
    train, val = make_loaders(digits(), 16, pin_memory=True)
    trainer = Trainer(
        model,
        opt,
        train,
        val,
        epochs=2,
        device="cuda",
        amp=True,
        channels_last=True,
        on_epoch_end=RunFolder(tmp_path).save_epoch,
    )
    result = trainer.fit()
    assert next(model.parameters()).is_cuda and result.last_eval.count == 48
    assert (tmp_path / "best.pt").is_file()
