"""The peers' fine-tuning recipes, reproduced in plain PyTorch for ``bench_transfer.py`` (issue 11).

Every default below carries the file and line of the peer source it was read from, at these versions:

* fastai 2.8.12 (the PyPI wheel; not installed, read only): ``fastai/...`` paths;
* timm ``train.py`` at huggingface/pytorch-image-models@aa4b5850 (v1.0.28-14); its helpers are called from the
  installed timm 1.0.29, since the timm recipe *is* timm;
* Lightning at Lightning-AI/pytorch-lightning@7f0c3436: ``src/lightning/pytorch/callbacks/finetuning.py``
  (``finetuning.py``), ``docs/source-pytorch/advanced/transfer_learning.rst`` and
  ``examples/pytorch/domain_templates/computer_vision_fine_tuning.py`` (``cv_template.py``).

``run_recipe(name, make_model, head, train_items, val_items, ...)`` trains a fresh ``make_model()`` (pretrained
weights, a new head at attribute path ``head``) and returns ``{"best", "final", "history"}``: validation
accuracy per epoch with one deterministic eval transform (resize to ``img_size``, normalise) for every recipe.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

RECIPES: dict[str, str] = {
    "plain-sgd": "hand-written full fine-tune: SGD nesterov m0.9 lr 0.05 wd 5e-4, OneCycleLR, batch 64, "
    "pad-crop + flip, no smoothing (issue 11's 0.825 row on P1)",
    "plain-adamw": "hand-written full fine-tune: AdamW lr 1e-3 wd 0.05, cosine per step, batch 64, "
    "RandomResizedCrop(0.7-1) + flip (issue 11's 0.789 row on P2)",
    "fastai": "vision_learner(dls, arch).fine_tune(epochs-1): 1 frozen epoch one-cycle slice(2e-3) pct 0.99, then "
    "slice(1e-5, 1e-3) div 5 pct 0.3; fastai Adam 0.9/0.99 eps 1e-5 wd 0.01 decoupled, no wd on norm/bias, "
    "train_bn; create_head (concat pool, BN, drop .25/.5, 512, kaiming); aug_transforms() on the batch "
    "[fastai 2.8.12 callback/schedule.py:164-171, optimizer.py:233-240, learner.py:114-123, "
    "vision/learner.py:91-118,155-163, vision/augment.py:1225-1255]",
    "timm": "train.py defaults: sgd (nesterov) lr 0.1*128/256, m 0.9, wd 2e-5 (not on bias/norm), cosine per "
    "epoch, warmup 5 ep from 1e-5, batch 128 drop_last, smoothing 0.1, RRC(0.08-1)+flip+jitter 0.4 "
    "[pytorch-image-models@aa4b5850 train.py:142,191-199,215-255,272-328,837-845,900-911,972-976,1079-1083]",
    "lightning": "BackboneFinetuning(unfreeze_backbone_at_epoch=10, lambda 1.5, ratio 0.1, should_align, "
    "train_bn) + Adam(head, lr 1e-3), no scheduler, batch 32, resize + flip "
    "[Lightning@7f0c3436 finetuning.py:392-402,408-418,461-492; transfer_learning.rst:208-223; "
    "cv_template.py:122-129,163]",
}

# --- shared data, training loop and evaluation ---------------------------------------------------------------


class _Images(Dataset):
    def __init__(self, images: list[Image.Image], labels: list[int], tf: Callable) -> None:
        self.images, self.labels, self.tf = images, labels, tf

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.tf(self.images[i]), self.labels[i]


def _load(items: list[tuple[str, int]]) -> tuple[list[Image.Image], list[int]]:
    images = []
    for path, _ in items:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))  # grayscale Fashion-MNIST / digits -> 3 channels
    return images, [int(y) for _, y in items]


def _get(m: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        m = getattr(m, part)
    return m


def _set(m: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, last = path.rpartition(".")
    setattr(_get(m, parent) if parent else m, last, value)


@torch.no_grad()
def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return hits / len(loader.dataset)


def _steps(ctx: SimpleNamespace, batch: int, drop_last: bool) -> int:
    n = len(ctx.train_images)
    return n // batch if drop_last else math.ceil(n / batch)


def _fit(ctx, model, *, train_tf, batch, loss_fn, start_epoch, drop_last=False, batch_tf=None,
         before_batch=None, after_batch=None, after_epoch=None) -> dict:  # fmt: skip
    """The one loop: ``start_epoch(epoch)`` returns the optimizer (recipes freeze/unfreeze there)."""
    gen = torch.Generator().manual_seed(ctx.seed)
    data = _Images(ctx.train_images, ctx.train_labels, train_tf)
    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=drop_last, generator=gen)
    history = []
    for epoch in range(ctx.epochs):
        opt = start_epoch(epoch)
        model.train()
        for step, (x, y) in enumerate(loader):
            if batch_tf is not None:
                x = batch_tf(x)
            if before_batch is not None:
                before_batch(opt, epoch, step, len(loader))
            loss = loss_fn(model(x), y)
            model.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_batch is not None:
                after_batch()
        if after_epoch is not None:
            after_epoch(epoch)
        history.append(_accuracy(model, ctx.val_loader))
    return {"best": max(history), "final": history[-1], "history": history}


# --- the hand-written full fine-tunes -------------------------------------------------------------------------


def _plain_sgd(ctx: SimpleNamespace) -> dict:
    s, model = ctx.img_size, ctx.model
    tf = T.Compose(
        [T.Resize((s, s)), T.RandomCrop(s, padding=s // 8), T.RandomHorizontalFlip(), T.ToTensor(), ctx.norm]
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=ctx.epochs * _steps(ctx, 64, False)
    )
    return _fit(ctx, model, train_tf=tf, batch=64, loss_fn=nn.CrossEntropyLoss(), start_epoch=lambda _: opt,
                after_batch=sched.step)  # fmt: skip


def _plain_adamw(ctx: SimpleNamespace) -> dict:
    s, model = ctx.img_size, ctx.model
    tf = T.Compose(
        [T.RandomResizedCrop(s, scale=(0.7, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(), ctx.norm]
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=ctx.epochs * _steps(ctx, 64, False))
    return _fit(ctx, model, train_tf=tf, batch=64, loss_fn=nn.CrossEntropyLoss(), start_epoch=lambda _: opt,
                after_batch=sched.step)  # fmt: skip


# --- fastai: vision_learner(dls, arch).fine_tune(epochs) ------------------------------------------------------

FASTAI_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
               nn.InstanceNorm3d, nn.LayerNorm)  # torch_core.py:685 norm_types  # fmt: skip


class _Body(nn.Module):
    """vision_learner's body: the feature map before pooling and classifier.

    timm models: ``forward_features`` (vision/learner.py:182-188 TimmBody). Others: the model with its head set
    to Identity, returning the last 4-D activation of its forward (for the CIFAR ResNet, ``layer3`` after its
    ReLU; fastai's own ``create_body`` cut would need ``cut=-1`` and drop the functional stem ReLU).
    """

    def __init__(self, model: nn.Module, head: str, img_size: int) -> None:
        super().__init__()
        _set(model, head, nn.Identity())
        self.model, self.timm, self._feat = model, hasattr(model, "forward_features"), None
        if not self.timm:
            order: list[nn.Module] = []
            hooks = [
                m.register_forward_hook(
                    lambda m, _i, o: order.append(m) if torch.is_tensor(o) and o.dim() == 4 else None
                )
                for m in model.modules()
                if m is not model
            ]
            with torch.no_grad():
                model.eval()(torch.zeros(1, 3, img_size, img_size))
            for h in hooks:
                h.remove()
            order[-1].register_forward_hook(lambda _m, _i, o: setattr(self, "_feat", o))
        with torch.no_grad():  # in eval mode, as fastai's dummy_eval (a batch of one trains no BatchNorm)
            self.nf = self.eval()(torch.zeros(1, 3, img_size, img_size)).shape[1]
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.timm:
            return self.model.forward_features(x)
        self.model(x)
        return self._feat


class _ConcatPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # AdaptiveConcatPool2d: [max, avg]
        return torch.cat([F.adaptive_max_pool2d(x, 1), F.adaptive_avg_pool2d(x, 1)], 1)


def _fastai_head(nf: int, n_out: int) -> nn.Sequential:
    """create_head(nf, n_out) defaults (vision/learner.py:91-110) with add_head's init (vision/learner.py:162)."""

    def bn(n: int) -> nn.BatchNorm1d:  # layers.py:147-154: weight 1, bias 1e-3
        m = nn.BatchNorm1d(n)
        nn.init.constant_(m.bias, 1e-3)
        return m

    head = nn.Sequential(
        _ConcatPool(), nn.Flatten(),  # AdaptiveConcatPool2d, layers.py:123-129
        bn(2 * nf), nn.Dropout(0.25), nn.Linear(2 * nf, 512, bias=False), nn.ReLU(inplace=True),  # LinBnDrop,
        bn(512), nn.Dropout(0.5), nn.Linear(512, n_out, bias=False),  # layers.py:178-186 (bias=not bn)
    )  # fmt: skip
    for m in head.modules():  # apply_init(head, nn.init.kaiming_normal_): torch_core.py:822-844
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
    return head


def _fastai_aug(x: torch.Tensor) -> torch.Tensor:
    """aug_transforms() defaults on a [0,1] batch (vision/augment.py:1225-1255): Flip p.5, Warp 0.2, Rotate 10,
    Zoom 1-1.1 (each p .75, one reflection-padded bilinear grid_sample, align_corners), then Brightness and
    Contrast 0.2 (p .75) in logit space. Per-image draws as in flip_mat/rotate_mat/zoom_mat/_WarpCoord/
    _BrightnessLogit/_ContrastLogit (augment.py:580-1010)."""
    b = x.shape[0]
    z, o = torch.zeros(b), torch.ones(b)

    def draw(lo: float, hi: float, p: float, neutral: float) -> torch.Tensor:  # _draw_mask / mask_tensor
        return torch.where(torch.rand(b) < p, torch.empty(b).uniform_(lo, hi), torch.full((b,), neutral))

    def mat(*r: torch.Tensor) -> torch.Tensor:  # affine_mat
        return torch.stack([torch.stack(r[:3], 1), torch.stack(r[3:], 1), torch.stack([z, z, o], 1)], 1)

    flip = torch.where(torch.rand(b) < 0.5, -o, o)
    th = draw(-10.0, 10.0, 0.75, 0.0) * math.pi / 180
    s = 1 / draw(1.0, 1.1, 0.75, 1.0)
    col, row = (1 - s) * (2 * torch.rand(b) - 1), (1 - s) * (2 * torch.rand(b) - 1)
    rot = mat(th.cos(), th.sin(), z, -th.sin(), th.cos(), z)
    m = mat(flip, z, z, z, o, z) @ rot @ mat(s, z, col, z, s, row)  # Flip @ Rotate @ Zoom, composed
    grid = F.affine_grid(m[:, :2], list(x.shape), align_corners=True)
    wx, wy = draw(-0.2, 0.2, 0.75, 0.0), draw(-0.2, 0.2, 0.75, 0.0)  # _WarpCoord.before_call
    src = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]).expand(b, 4, 2)
    corners = ((-1 - wy, -1 - wx), (-1 + wy, 1 + wx), (1 + wy, -1 + wx), (1 - wy, 1 - wx))
    dst = torch.stack([torch.stack(c, 1) for c in corners], 1)
    rows = []
    for i in range(4):  # find_coeffs(src, dst)
        (px, py), (qx, qy) = src[:, i].unbind(1), dst[:, i].unbind(1)
        rows += [
            torch.stack([qx, qy, o, z, z, z, -px * qx, -px * qy], 1),
            torch.stack([z, z, z, qx, qy, o, -py * qx, -py * qy], 1),
        ]
    h = torch.linalg.solve(torch.stack(rows, 1), src.reshape(b, 8, 1))
    h = torch.cat([h.squeeze(-1), o[:, None]], 1).view(b, 3, 3)
    c = grid.reshape(b, -1, 2) @ h[:, :, :2].transpose(1, 2) + h[:, :, 2].unsqueeze(1)  # apply_perspective
    grid = (c[..., :2] / c[..., 2:]).view_as(grid)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    bright = draw(0.5 * 0.8, 0.5 * 1.2, 0.75, 0.5)
    contrast = draw(math.log(0.8), -math.log(0.8), 0.75, 0.0).exp()
    lg = torch.logit(x.clamp(1e-7, 1 - 1e-7)) + torch.logit(bright).view(b, 1, 1, 1)
    return torch.sigmoid(lg * contrast.view(b, 1, 1, 1))


def _combined_cos(pos: float, pct: float, start: float, middle: float, end: float) -> float:
    """combined_cos (callback/schedule.py:84-86) of sched_cos (:49) at ``pos`` in [0, 1)."""
    a, b, t = (start, middle, pos / pct) if pos < pct else (middle, end, (pos - pct) / (1 - pct))
    return a + (1 + math.cos(math.pi * (1 - t))) * (b - a) / 2


def _fastai(ctx: SimpleNamespace) -> dict:
    base_lr, freeze_epochs, lr_mult, pct_start, div = 2e-3, 1, 100, 0.3, 5.0  # callback/schedule.py:164
    moms, wd = (0.95, 0.85, 0.95), 0.01  # learner.py:123; optimizer.py:239 (Learner wd=None -> Adam's)
    body = _Body(ctx.model, ctx.head, ctx.img_size)
    model = nn.Sequential(body, _fastai_head(body.nf, ctx.num_classes))
    groups = [list(model[0].parameters()), list(model[1].parameters())]  # default_split (v/learner.py:116)
    norm = {id(p) for m in model.modules() if isinstance(m, FASTAI_NORM) for p in m.parameters(recurse=False)}
    biases = {id(m.bias) for m in model.modules() if getattr(m, "bias", None) is not None}
    no_wd = norm | biases  # wd_bn_bias=False: no weight decay on norm and bias params (learner.py:121,198)
    # (n_epoch, lr_max per group, div, pct_start) of the two fit_one_cycle calls (schedule.py:168-171);
    # slice(lr) -> [lr/10, lr] and slice(a, b) -> even_mults(a, b, 2) = [a, b] (optimizer.py:58-59)
    lr2 = base_lr / 2
    phases = [(freeze_epochs, [base_lr / 10, base_lr], 25.0, 0.99)]  # fit_one_cycle's div=25 (:114)
    phases.append((ctx.epochs - freeze_epochs, [lr2 / lr_mult, lr2], div, pct_start))
    state = {}

    def start_epoch(epoch: int):
        if epoch in (0, freeze_epochs):  # freeze(), unfreeze(): each clears the optimizer (learner.py:662)
            for p in groups[0]:  # frozen, the body's norm layers train: train_bn=True (learner.py:122,200)
                p.requires_grad_(epoch > 0 or id(p) in norm)
            pgs = [{"params": [p for p in g if (id(p) in no_wd) == nwd], "weight_decay": 0.0 if nwd else wd,
                    "fa": i} for i, g in enumerate(groups) for nwd in (False, True)]  # fmt: skip
            # fastai Adam = AdamW: mom 0.9 (scheduled), sqr_mom 0.99, eps 1e-5, true wd (optimizer.py:233-240)
            pgs = [g for g in pgs if g["params"]]
            state["opt"] = torch.optim.AdamW(pgs, lr=base_lr, betas=(0.9, 0.99), eps=1e-5)
        return state["opt"]

    def before_batch(opt, epoch: int, step: int, n_iter: int) -> None:  # ParamScheduler, schedule.py:114-121
        phase = int(epoch >= freeze_epochs)
        n_epoch, lrs, dv, pct = phases[phase]
        pos = ((epoch - phase * freeze_epochs) * n_iter + step) / (n_epoch * n_iter)
        for g in opt.param_groups:
            g["lr"] = _combined_cos(pos, pct, lrs[g["fa"]] / dv, lrs[g["fa"]], lrs[g["fa"]] / 1e5)
            g["betas"] = (_combined_cos(pos, pct, *moms), 0.99)

    tf = T.Compose([T.Resize((ctx.img_size, ctx.img_size)), T.ToTensor()])  # item_tfms=Resize(img_size)
    return _fit(ctx, model, train_tf=tf, batch=64, drop_last=True, loss_fn=nn.CrossEntropyLoss(),
                start_epoch=start_epoch, batch_tf=lambda x: ctx.norm(_fastai_aug(x)),
                before_batch=before_batch)  # fmt: skip


# --- timm: train.py --pretrained-path W --num-classes N, argparse defaults ------------------------------------


def _timm(ctx: SimpleNamespace) -> dict:
    from timm.data import create_transform
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    a = SimpleNamespace(  # train.py argparse defaults (line numbers at aa4b5850)
        batch_size=128, opt="sgd", opt_eps=None, opt_betas=None, momentum=0.9, weight_decay=2e-5,  # 142,191-199
        sched="cosine", sched_on_updates=False, lr=None, lr_base=0.1, lr_base_size=256,  # 215-223
        lr_base_scale="",  # 225
        lr_noise=None, lr_cycle_mul=1.0, lr_cycle_decay=0.5, lr_cycle_limit=1, lr_k_decay=1.0,  # 227-239
        warmup_lr=1e-5, min_lr=0.0, epochs=ctx.epochs, warmup_epochs=5,  # 241-255
        warmup_prefix=False, cooldown_epochs=0,  # 257-259
        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, vflip=0.0, color_jitter=0.4, aa=None,  # 272-288
        reprob=0.0, smoothing=0.1, train_interpolation="random", seed=ctx.seed,  # 304, 326-328 (mixup/cutmix 0)
    )  # fmt: skip
    batch_ratio = a.batch_size / a.lr_base_size  # train.py:837-845: 'sgd' -> linear scaling -> lr 0.05
    a.lr_base_scale = "sqrt" if any(o in a.opt.lower() for o in ("ada", "lamb")) else "linear"
    a.lr = a.lr_base * (batch_ratio**0.5 if a.lr_base_scale == "sqrt" else batch_ratio)
    tf = create_transform(  # train.py:699-721, 805 -> create_loader -> create_transform
        ctx.img_size, is_training=True, scale=a.scale, ratio=a.ratio, hflip=a.hflip, vflip=a.vflip,
        color_jitter=a.color_jitter, auto_augment=a.aa, interpolation=a.train_interpolation,
        mean=ctx.mean, std=ctx.std, re_prob=a.reprob,
    )  # fmt: skip
    opt = create_optimizer_v2(ctx.model, **optimizer_kwargs(cfg=a))  # train.py:972-976 (nesterov SGD)
    n_iter = _steps(ctx, a.batch_size, True)  # drop_last=is_training (timm 1.0.29 data/loader.py:446)
    sched, _ = create_scheduler_v2(opt, **scheduler_kwargs(a), updates_per_epoch=n_iter)  # train.py:1079-1083
    return _fit(ctx, ctx.model, train_tf=tf, batch=a.batch_size, drop_last=True,
                loss_fn=LabelSmoothingCrossEntropy(smoothing=a.smoothing),  # train.py:900-909
                start_epoch=lambda _: opt,
                after_epoch=lambda e: sched.step(e + 1))  # per epoch: train.py:1201  # fmt: skip


# --- Lightning: BackboneFinetuning as its docs example configures it ------------------------------------------


def _lightning(ctx: SimpleNamespace) -> dict:
    # BackboneFinetuning(unfreeze_backbone_at_epoch=10, lambda_func=lambda epoch: 1.5,
    # backbone_initial_ratio_lr=0.1, should_align=True) as its docstring and docs write it (finetuning.py:397-402,
    # transfer_learning.rst:214-218); the constructor's defaults are these (finetuning.py:408-418) except
    # lambda_func, which doubles (finetuning.py:44-45); train_bn=True, initial_denom_lr unused (lr is given)
    unfreeze_at, lam, ratio, align, lr = 10, 1.5, 0.1, True, 1e-3
    model, head = ctx.model, _get(ctx.model, ctx.head)
    head_ids = {id(p) for p in head.parameters()}
    backbone = [(m, p) for m in model.modules() for p in m.parameters(recurse=False) if id(p) not in head_ids]
    for m, p in backbone:  # freeze_before_training -> freeze(backbone, train_bn=True) (:457-458, 207-223)
        p.requires_grad_(isinstance(m, _BatchNorm))
    # configure_optimizers of the docs: the head only (finetuning.py:392-394, transfer_learning.rst:208-210);
    # the backbone's BN affine params have requires_grad but are in no optimizer: only their running stats move
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    state = {"prev": None}

    def start_epoch(epoch: int):  # on_train_epoch_start -> finetune_function (finetuning.py:461-492)
        current = opt.param_groups[0]["lr"]
        if epoch == unfreeze_at:  # unfreeze_and_add_param_group(lr=current*ratio) (:255-281)
            for _, p in backbone:
                p.requires_grad_(True)
            state["prev"] = current * ratio
            opt.add_param_group({"params": [p for _, p in backbone], "lr": state["prev"]})
        elif epoch > unfreeze_at:
            nxt = lam * state["prev"]
            state["prev"] = opt.param_groups[-1]["lr"] = current if align and nxt > current else nxt
        return opt

    s = ctx.img_size  # cv_template.py:122-129 (Resize, RandomHorizontalFlip, ToTensor, Normalize); batch :163
    tf = T.Compose([T.Resize((s, s)), T.RandomHorizontalFlip(), T.ToTensor(), ctx.norm])
    return _fit(ctx, model, train_tf=tf, batch=32, loss_fn=nn.CrossEntropyLoss(), start_epoch=start_epoch)


_RUN = dict(zip(RECIPES, (_plain_sgd, _plain_adamw, _fastai, _timm, _lightning), strict=True))


def run_recipe(name: str, make_model: Callable[[], nn.Module], head: str, train_items: list[tuple[str, int]],
               val_items: list[tuple[str, int]], *, img_size: int, mean: tuple[float, ...], std: tuple[float, ...],
               epochs: int, seed: int, num_classes: int) -> dict:  # fmt: skip
    """Train ``make_model()`` with recipe ``name``; ``{"best", "final", "history"}`` of validation accuracy."""
    if name not in _RUN:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    norm = T.Normalize(mean, std)
    val = _Images(*_load(val_items), T.Compose([T.Resize((img_size, img_size)), T.ToTensor(), norm]))
    images, labels = _load(train_items)
    ctx = SimpleNamespace(model=make_model(), head=head, train_images=images, train_labels=labels,
                          img_size=img_size, mean=tuple(mean), std=tuple(std), norm=norm, epochs=epochs, seed=seed,
                          num_classes=num_classes, val_loader=DataLoader(val, batch_size=256))  # fmt: skip
    return _RUN[name](ctx)


def _items(root: Path) -> list[tuple[str, int]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    return [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).glob("*.png"))]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.transfer_data import cifar_resnet20, fashion_folder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="1 epoch, 130 train / 50 val images")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    fixtures = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
    sd = torch.load(fixtures / "cifar10_resnet20_dataparallel.th", map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in sd["state_dict"].items()}

    def make_model() -> nn.Module:  # P1: the CIFAR-10 ResNet-20 with a new 10-class head
        model = cifar_resnet20()
        model.load_state_dict(sd)
        model.linear = nn.Linear(64, 10)
        return model

    # 130 training images: timm's batch 128 and fastai's 64 drop the last partial batch, so fewer take no step
    small = dict(per_class=13, val_per_class=5) if args.smoke else {}
    root = fashion_folder(Path("/tmp/peer_recipes_smoke" if args.smoke else "/tmp/peer_recipes_p1"), **small)
    epochs = 1 if args.smoke else args.epochs
    for name in args.recipes:
        t0 = time.time()
        r = run_recipe(name, make_model, "linear", _items(root / "train"), _items(root / "val"), img_size=32,
                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), epochs=epochs, seed=args.seed,
                       num_classes=10)  # fmt: skip
        hist = " ".join(f"{a:.3f}" for a in r["history"])
        took = time.time() - t0
        print(f"{name:12s} best {r['best']:.3f} final {r['final']:.3f} ({took:.0f}s) [{hist}]", flush=True)


if __name__ == "__main__":
    main()
