"""Optimizers over the trainable parameters only, in named groups with discriminative learning rates.

:func:`build_optimizer` puts every ``requires_grad=True`` parameter (by identity: a tied weight once) into a
named parameter group. Groups follow the model's layer groups when it has ``layer_groups()`` (an adapter),
or the ``groups=`` mapping you give, else one group ``"params"``. With ``lr_decay`` the last group (the head)
trains at ``lr`` and each group below it at the rate of the one above times ``lr_decay``. With
``layer_decay`` the rates fall per *layer* instead (:func:`layer_decay_scales`: timm's fine layers, a block
each, for timm networks), and a layer group holding layers at several rates is split into
``"<group>/0"``, ``"<group>/1"``, ... from the input side. Biases and normalisation weights get no weight
decay: they sit in a sibling group named ``"<group>.no_decay"``.

Every group carries ``"name"`` and ``"initial_lr"`` (its rate before any schedule), and the optimizer's
groups carry ``"param_names"``, so a checkpoint says which parameter each state belongs to.
:class:`transferkit.schedule.LRSchedule` scales every group by ``initial_lr``, so groups added later by
:func:`add_param_group` (or :class:`transferkit.schedule.GradualUnfreeze`) follow the same curve.

The modules: ``build`` (:func:`build_optimizer`, :func:`add_param_group`), ``param_groups`` (layouts,
group dicts, :func:`no_decay_names`), ``layer_decay`` (:func:`layer_decay_scales`) and ``optimizers``
(the table of optimizers and the options each takes).

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    >>> opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    >>> [(g["name"], g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    [('params', 0.05, 2), ('params.no_decay', 0.0, 4)]
"""

from __future__ import annotations

from transferkit.optim.build import add_param_group, build_optimizer
from transferkit.optim.layer_decay import layer_decay_scales
from transferkit.optim.optimizers import OPTIMIZERS, optimizer_names
from transferkit.optim.param_groups import no_decay_names

__all__ = [
    "build_optimizer",
    "add_param_group",
    "optimizer_names",
    "no_decay_names",
    "layer_decay_scales",
    "OPTIMIZERS",
]
