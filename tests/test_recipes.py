"""Tests for transferkit.recipes and the recipe hooks of optim, schedule and train.

Augmentation policies on small grey images, mixup/cutmix soft targets, the model EMA, drop-path for timm
backbones, layer-wise LR decay with thaw schedules, and exact resume of a Trainer using all of them.
The CLI side (flags, args.yaml, resume after SIGKILL) is in tests/test_cli.py.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from transferkit.backbones import create_model
from transferkit.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state
from transferkit.data import limit_dataset, load_digits_data, load_image_folder, make_loaders
from transferkit.distributed import seed_everything
from transferkit.errors import CheckpointError, ConfigError
from transferkit.optim import build_optimizer, layer_decay_scales
from transferkit.recipes import (
    AUG_CHOICES,
    MixupCutmix,
    ModelEma,
    check_drop_path,
    drop_path_kwargs,
    drop_path_layers,
    policy_transform,
    resolve_aug,
)
from transferkit.run import RunFolder
from transferkit.schedule import GradualUnfreeze, LRSchedule
from transferkit.train import Trainer

TINY = "tests.tiny_models:tinynet"


# ----------------------------------------------------------------------------------------------------------
# augmentation


def test_aug_levels_and_defaults():
    assert AUG_CHOICES == ("none", "light", "randaugment", "trivialaugment")
    assert resolve_aug(None) == "light" and resolve_aug(None, linear_probe=True) == "none"
    assert policy_transform("none") is None and policy_transform("light") is None
    with pytest.raises(ConfigError, match="randaugment"):
        resolve_aug("autoaugment")


@pytest.mark.parametrize("aug", ["randaugment", "trivialaugment"])
def test_policies_on_upsampled_digits(aug):
    """8x8 scans upsampled to 16 px, grey -> RGB -> policy -> grey: many draws, all valid, some changed."""
    grey = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    light = load_digits_data(16, **grey, augment=True)
    bundle = load_digits_data(16, **grey, augment=True, policy=policy_transform(aug, fill=(0, 0, 0)))
    seed_everything(0)
    changed = 0
    for i in range(300):  # enough draws that every op of the policy runs, at every magnitude
        torch.manual_seed(i)
        plain = light.train[i][0]
        torch.manual_seed(i)
        x, y = bundle.train[i]
        assert x.shape == (3, 16, 16) and torch.isfinite(x).all() and y == light.train[i][1]
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # still grey
        changed += not torch.allclose(x, plain, atol=0.02)
    assert changed > 100
    assert torch.equal(bundle.val[0][0], light.val[0][0])  # validation images are never augmented


@pytest.mark.parametrize("aug", ["randaugment", "trivialaugment"])
@pytest.mark.parametrize("in_chans", [3, 1])
def test_policies_on_grayscale_image_folders(tmp_path, aug, in_chans):
    """Grey 8x8 files read as RGB (or L for a 1-channel backbone), cropped to 16 px, then the policy."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(4):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / c / f"{i}.png")
    config = {"mean": (0.5,) * in_chans, "std": (0.25,) * in_chans, "input_size": (in_chans, 16, 16)}
    config.update(resize_size=18, crop_pct=16 / 18, interpolation="bilinear")
    policy = policy_transform(aug, mean=config["mean"])
    bundle = load_image_folder(tmp_path, config, val_split=0.5, in_chans=in_chans, policy=policy)
    names = [type(t).__name__ for t in bundle.train.transform.transforms]
    assert names.index("ToImage") > names.index("RandomHorizontalFlip")  # the policy runs on the crop
    for _ in range(40):
        for i in range(len(bundle.train)):
            x, _ = bundle.train[i]
            assert x.shape == (in_chans, 16, 16) and torch.isfinite(x).all()


def test_randaugment_draws_resume_from_the_rng_state():
    """In the main process RandAugment draws from Python's and NumPy's generators: a checkpoint's RNG
    capture covers them, so the draws after a restore are the draws an uninterrupted run makes."""
    bundle = load_digits_data(16, augment=True, policy=policy_transform("randaugment", fill=(0, 0, 0)))
    saved = capture_rng_state()
    first = torch.stack([bundle.train[i][0] for i in range(32)])
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # a fresh process starts elsewhere
    restore_rng_state(saved)
    assert torch.equal(first, torch.stack([bundle.train[i][0] for i in range(32)]))


# ----------------------------------------------------------------------------------------------------------
# mixup / cutmix


@pytest.mark.parametrize(
    "kwargs", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}]
)
def test_mixup_cutmix_soft_targets(kwargs):
    np.random.seed(0)
    mix = MixupCutmix(4, label_smoothing=0.1, **kwargs)
    for n in (8, 7, 1):  # an odd batch keeps its last image unmixed
        x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).clone()
        y = torch.arange(n) % 4
        mixed, soft = mix(x, y)
        assert mixed.shape == (n, 3, 8, 8) and soft.shape == (n, 4)
        assert torch.allclose(soft.sum(1), torch.ones(n))
        assert soft.min() >= 0.1 / 4 - 1e-6  # label smoothing folded into the targets
        if n % 2:
            assert torch.equal(mixed[-1], torch.full((3, 8, 8), float(n - 1)))
            assert soft[-1].argmax() == y[-1] and soft[-1].max() == pytest.approx(0.9 + 0.025)
    logits = torch.randn(8, 4)
    manual = -(soft_targets := mix(torch.rand(8, 3, 8, 8), torch.arange(8) % 4)[1]) * logits.log_softmax(1)
    assert mix.loss(logits, soft_targets) == pytest.approx(manual.sum(1).mean().item())


def test_mixup_is_reproducible_from_numpy_state_and_refuses_bad_input():
    mix = MixupCutmix(3, mixup_alpha=0.4, cutmix_alpha=1.0)
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    np.random.seed(5)
    a = mix(x.clone(), y)
    np.random.seed(5)
    b = mix(x.clone(), y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ConfigError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
        MixupCutmix(3)
    with pytest.raises(ConfigError, match="prob must be"):
        MixupCutmix(3, mixup_alpha=0.2, prob=0)
    with pytest.raises(ConfigError, match="cached features cannot be mixed"):
        mix(torch.rand(4, 16), torch.tensor([0, 1, 2, 0]))


# ----------------------------------------------------------------------------------------------------------
# model EMA


def test_ema_warmup_update_and_state():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEma(net, decay=0.99)
    assert ema.current_decay() == 0.0  # the first update copies the model
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    ema.update(net)
    assert torch.equal(ema.module[0].weight, net[0].weight)
    with torch.no_grad():
        net[0].weight.fill_(3.0)
    decay = ema.current_decay()
    assert 0 < decay < 0.99  # timm's warmup: 1 - 2**-2/3
    ema.update(net)
    assert torch.allclose(ema.module[0].weight, torch.full((2, 2), 1.0 * decay + 3.0 * (1 - decay)))
    assert ema.state_dict() == {"decay": 0.99, "warmup": True, "updates": 2}
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    other = ModelEma(net, decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 2 and other.current_decay() == ema.current_decay()
    with pytest.raises(CheckpointError, match="resume with the run's own EMA settings"):
        ModelEma(net, decay=0.9).load_state_dict(ema.state_dict())
    with pytest.raises(ConfigError, match=r"EMA decay must be a number in \(0, 1\)"):
        ModelEma(net, decay=1.0)


# ----------------------------------------------------------------------------------------------------------
# drop-path


def test_drop_path_for_timm_backbones_only():
    assert drop_path_kwargs("timm:test_convnext", 0.2) == {"drop_path_rate": 0.2}
    assert drop_path_kwargs("resnet18", 0.0) == {} and drop_path_kwargs(TINY, None) == {}
    model = create_model("timm:test_convnext", 4, weights=None, **drop_path_kwargs("timm:test_convnext", 0.2))
    layers = drop_path_layers(model)
    assert layers and max(p for _, p in layers) == pytest.approx(0.2)
    assert check_drop_path(model, "timm:test_convnext", 0.2).startswith("rate 0.2: ")
    with pytest.raises(ConfigError, match="torchvision backbone.*use a timm backbone"):
        drop_path_kwargs("resnet18", 0.1)
    with pytest.raises(ConfigError, match="takes no drop_path_rate argument"):
        drop_path_kwargs(TINY, 0.1)
    with pytest.raises(ConfigError, match=r"must be a number in \[0, 1\)"):
        drop_path_kwargs("timm:test_convnext", 1.5)
    with pytest.raises(ConfigError, match="no active DropPath layer"):
        check_drop_path(create_model(TINY, 4, weights=None), TINY, 0.1)


# ----------------------------------------------------------------------------------------------------------
# layer-wise LR decay


def test_layer_decay_scales_follow_timm_layers():
    """A timm adapter: timm's fine layers (one a block), the head at the full rate, the stem lowest."""
    from timm.models import group_parameters

    model = create_model("timm:test_convnext", 4, weights=None)
    scales = layer_decay_scales(model, 0.5)
    net = model.backbone
    layers = group_parameters(net, net.group_matcher(coarse=False), reverse=True)
    top = max(layers.values())
    assert set(scales) == {n for n, _ in model.named_parameters()}
    for name in model.head_parameter_names():
        assert scales[name] == 1.0
    assert scales["backbone.stem.0.weight"] == 0.5**top
    for inner, layer in layers.items():
        assert scales[f"backbone.{inner}"] == 0.5 ** (top - layer)
    # a network without timm's matcher: one layer per layer group
    tiny = create_model(TINY, 4, weights=None)
    assert set(layer_decay_scales(tiny, 0.5).values()) == {0.25, 0.5, 1.0}
    with pytest.raises(ConfigError, match="layer_decay must be in"):
        layer_decay_scales(tiny, 0)


def test_layer_decay_optimizer_groups_and_thaw():
    """Frozen groups stay out of the optimizer and join later at the rates a full build gives them."""
    full = create_model("timm:test_convnext", 4, weights=None)
    everything = build_optimizer(full, "adamw", lr=1e-2, weight_decay=0.05, layer_decay=0.7)
    rates = {g["name"]: g["lr"] for g in everything.param_groups}
    scales = layer_decay_scales(full, 0.7)
    for g in everything.param_groups:
        assert all(scales[n] * 1e-2 == pytest.approx(g["lr"]) for n in g["param_names"])
    assert any("/" in name for name in rates)  # a stage of several blocks is split by layer

    model = create_model("timm:test_convnext", 4, weights=None)
    thaw = GradualUnfreeze(model, every=1, layer_decay=0.7)
    opt = build_optimizer(model, "adamw", lr=1e-2, weight_decay=0.05, layer_decay=0.7)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable  # the head only
    for epoch in range(len(thaw.order)):
        thaw.step(epoch, opt)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(rates)
    assert thaw.state_dict()["layer_decay"] == 0.7
    with pytest.raises(ConfigError, match="give one of lr_decay"):
        build_optimizer(model, "adamw", lr_decay=0.5, layer_decay=0.7)
    with pytest.raises(ConfigError, match="give one of lr_decay"):
        GradualUnfreeze(model, every=1, lr_decay=0.5, layer_decay=0.7)


# ----------------------------------------------------------------------------------------------------------
# the Trainer with every recipe hook


def _bundle(policy_aug: str = "randaugment"):
    bundle = load_digits_data(16, augment=True, policy=policy_transform(policy_aug, fill=(0, 0, 0)))
    bundle.train, bundle.val = limit_dataset(bundle.train, 96), limit_dataset(bundle.val, 48)
    return bundle


def _recipe_trainer(run_dir, epochs: int = 3, seed: int = 0) -> Trainer:
    seed_everything(seed)  # RandAugment and mixup draw from Python's and NumPy's generators too
    model = create_model(TINY, 10, weights=None)
    thaw = GradualUnfreeze(model, every=1, layer_decay=0.6)
    opt = build_optimizer(model, "adamw", lr=3e-3, weight_decay=0.01, layer_decay=0.6)
    train, val = make_loaders(_bundle(), 16, seed=seed)
    lr = LRSchedule(opt, "cosine", total_steps=epochs * len(train))
    mix = MixupCutmix(10, mixup_alpha=0.4, cutmix_alpha=1.0, prob=0.8, label_smoothing=0.1)
    return Trainer(model, opt, train, val, epochs=epochs, lr_schedule=lr, freeze_schedule=thaw, mixup=mix,
                   ema_decay=0.9, on_epoch_end=RunFolder(run_dir).save_epoch, seed=seed)  # fmt: skip


def test_trainer_with_every_recipe_resumes_exactly(tmp_path):
    full = _recipe_trainer(tmp_path / "full")
    full.fit()
    first = _recipe_trainer(tmp_path / "split")
    first.epochs = 1  # stop after epoch 0, like a killed run
    first.fit()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)  # a fresh process: other RNG states
    resumed = _recipe_trainer(tmp_path / "split")
    assert resumed.resume(tmp_path / "split" / "last.pt") == 1
    assert resumed.ema.updates == len(resumed.train_loader)
    resumed.fit()
    assert resumed.history == [{**r, "seconds": s["seconds"]} for r, s in zip(full.history, resumed.history)]
    assert all("ema_val_acc" in r for r in full.history)
    for which in ("model", "ema"):
        a, b = full.weights(which), resumed.weights(which)
        assert all(torch.equal(a[k], b[k]) for k in a), which
    ckpt = load_checkpoint(tmp_path / "split" / "last.pt")
    assert set(ckpt["models"]) == {"model", "ema"} and ckpt["extra"]["ema"]["updates"] == resumed.ema.updates
    assert ckpt["extra"]["best_weights"] in ("model", "ema")


def test_ema_that_validates_better_becomes_the_best(tmp_path):
    """The epoch's better of model and EMA competes for best.pt; the trainer says which it was."""

    class EmaWins(Trainer):
        def evaluate(self, loader=None, *, model=None):
            result = super().evaluate(loader, model=model)
            if model is not None:
                result.acc = min(1.0, result.acc + 0.5)
            return result

    trainer = _recipe_trainer(tmp_path, epochs=1)
    trainer.__class__ = EmaWins
    result = trainer.fit()
    row = result.history[0]
    assert result.best_weights == trainer.best_weights == "ema"
    assert result.best_acc == row["ema_val_acc"] > row["val_acc"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["extra"]["best_weights"] == "ema"
    assert all(torch.equal(best["models"]["ema"][k], v) for k, v in trainer.weights("ema").items())
    with pytest.raises(ConfigError, match="expected 'model' or 'ema'"):
        trainer.weights("average")


def test_trainer_refuses_mixup_on_features_and_double_smoothing():
    model = create_model(TINY, 10, weights=None)
    opt = build_optimizer(model, "sgd", lr=0.1)
    train, val = make_loaders(_bundle(), 16)
    mix = MixupCutmix(10, mixup_alpha=0.2)
    with pytest.raises(ConfigError, match="cached features"):
        Trainer(model, opt, train, val, epochs=1, inputs="features", mixup=mix)
    with pytest.raises(ConfigError, match="label smoothing belongs in the soft targets"):
        Trainer(model, opt, train, val, epochs=1, mixup=mix, label_smoothing=0.1)


def test_resume_without_the_ema_a_run_needs_is_refused(tmp_path):
    plain = _recipe_trainer(tmp_path, epochs=1)
    plain.ema = None
    plain.fit()
    with pytest.raises(CheckpointError, match="holds no model EMA"):
        _recipe_trainer(tmp_path).resume(tmp_path / "last.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_recipes_on_cuda_with_amp_and_channels_last(tmp_path):
    """Mixup/CutMix on the GPU batch, the EMA on the GPU beside the model, saved and restored."""
    trainer = _recipe_trainer(tmp_path, epochs=1)
    cuda = Trainer(trainer.model, trainer.optimizer, trainer.train_loader, trainer.val_loader, epochs=2,
                   device="cuda", amp=True, channels_last=True, lr_schedule=trainer.lr_schedule,
                   freeze_schedule=trainer.freeze_schedule, mixup=trainer.mixup, ema_decay=0.9,
                   on_epoch_end=RunFolder(tmp_path).save_epoch)  # fmt: skip
    cuda.epochs = 1
    cuda.fit()
    assert next(cuda.ema.module.parameters()).is_cuda and "ema_val_acc" in cuda.history[0]
    cuda.epochs = 2
    assert cuda.resume(tmp_path / "last.pt") == 1 and cuda.ema.updates == len(cuda.train_loader)
    cuda.fit()
