"""Gradual unfreezing and learning-rate schedules that cover parameter groups added mid-run, and resume.

:class:`GradualUnfreeze` starts from "head only" and thaws an adapter's layer groups from the top down,
one every ``every`` epochs or at the epochs given in ``at``; each thawed group joins the optimizer as a new
named group at a discriminative rate (``lr * lr_decay**depth``, depth counted from the head), or at its
layers' rates under layer-wise decay (``layer_decay``, see :func:`transferkit.optim.layer_decay_scales`).
:class:`LRSchedule` sets every group's ``lr = group["initial_lr"] * factor(step)``, so a group that joins
later follows the same curve as the groups that were there from the start (the failure of schedulers that
store one base rate per group at construction: Lightning #8720, #12141, torch #79888).

Both have ``state_dict()`` / ``load_state_dict()``. The unfreeze schedule records its phase, which
parameters are frozen, which BatchNorm layers are held in eval mode, and the optimizer's groups *by
parameter name*, so a resumed run rebuilds the same groups, in the same order, before the optimizer's state
is loaded into them (Lightning #6891).

The modules: ``unfreeze`` (:class:`GradualUnfreeze`), ``unfreeze_state`` (its saved state: optimizer
groups by parameter name) and ``lr_schedule`` (:class:`LRSchedule`).

Resume order, in a fresh process::

    model = create_model("resnet18", num_classes=10)
    unfreeze_sched = GradualUnfreeze(model, every=2)          # 1. same schedule: freezes to head only
    optimizer = build_optimizer(model, "adamw", lr=1e-3)      # 2. same optimizer (head groups only)
    lr_sched = LRSchedule(optimizer, "cosine", total_steps=1000, warmup_steps=50)
    ckpt = load_checkpoint("last.pt")
    unfreeze_sched.load_state_dict(ckpt["extra"]["freeze_schedule"], optimizer)  # 3. groups + requires_grad
    restore_checkpoint(ckpt, model=model, optimizer=optimizer)                   # 4. weights, state, RNG
    lr_sched.load_state_dict(ckpt["extra"]["lr_schedule"])                       # 5. step counter
    for epoch in range(ckpt["epoch"] + 1, epochs):
        unfreeze_sched.step(epoch, optimizer)   # at the start of every epoch
        for batch in loader:
            ...; optimizer.step(); lr_sched.step()

and when saving: ``save_checkpoint(path, model=model, optimizer=optimizer, epoch=epoch,
extra={"freeze_schedule": unfreeze_sched.state_dict(), "lr_schedule": lr_sched.state_dict()})``.

Example:
    >>> import torch.nn as nn
    >>> from transferkit.optim import build_optimizer
    >>> class Net(nn.Sequential):
    ...     def layer_groups(self):
    ...         return {"body": ["0.weight", "0.bias"], "head": ["1.weight", "1.bias"]}
    >>> net = Net(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> sched = GradualUnfreeze(net, at={1: "body"}, lr_decay=0.1)
    >>> opt = build_optimizer(net, "sgd", lr=1.0)
    >>> [g["name"] for g in opt.param_groups]
    ['head']
    >>> sched.step(0, opt), sched.step(1, opt)
    ([], ['body'])
    >>> [(g["name"], g["lr"]) for g in opt.param_groups]
    [('head', 1.0), ('body', 0.1)]
"""

from __future__ import annotations

from transferkit.schedule.lr_schedule import LRSchedule
from transferkit.schedule.unfreeze import GradualUnfreeze

__all__ = ["GradualUnfreeze", "LRSchedule"]
