"""Freezing and thawing parameters: selectors, the BatchNorm policy, and a summary table.

A *selector* picks parameters of a model. It may be

- an ``nn.Module`` inside the model (all its parameters),
- a qualified name: a layer group of an adapter (``"head"``, ``"layer4"``), a module (``"backbone.layer1"``)
  or a parameter (``"backbone.fc.weight"``), tried in that order,
- a glob matched with :func:`fnmatch.fnmatchcase` against layer group, module and parameter names
  (``"layer[1-3].*"``),
- a compiled regular expression, searched in parameter names,
- a predicate ``(name, param) -> bool``,
- or a list/tuple of any of these.

Module and parameter names, plain or glob, may also be given relative to the network an adapter wraps
(``"layer1.0"``, ``"layer[1-3].*"`` for ``backbone.layer1.0``, ``backbone.layer1.*`` ...), as they appear
in the torchvision or timm model itself.

Parameters are handled by identity: a weight shared by two modules (tied embeddings) is one parameter and
is reported under its first name, the one :meth:`nn.Module.named_parameters` gives.

**BatchNorm policy.** A BatchNorm layer whose parameters are all frozen (and ``train_bn=False``) is put in
eval mode *and kept there*: its ``train()`` is replaced by one that keeps ``training=False`` (so
``model.train()`` leaves it in eval mode), and a forward pre-hook resets ``module.training = False`` before
every forward, so nothing can make it normalise with batch statistics or update its running statistics --
the classic "frozen backbone whose BN statistics still drift" bug. :func:`unfreeze` removes both guards.
Converting such layers to :class:`torchvision.ops.FrozenBatchNorm2d` (``freeze(..., bn="frozen")`` or
:func:`convert_frozen_bn`) is the permanent alternative: their affine terms become buffers.

The modules: ``selectors`` (:func:`select_parameters`), ``batchnorm`` (the BatchNorm policy,
:func:`convert_frozen_bn`), ``freezing`` (:func:`freeze`, :func:`unfreeze`, :func:`freeze_backbone`) and
``summary_table`` (:func:`summary`).

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    >>> changed = freeze(model, "0", "1")
    >>> changed
    ['0.weight', '0.bias', '1.weight', '1.bias']
    >>> _ = model.train()
    >>> is_bn_locked(model[1])
    True
    >>> unfreeze(model, model[1])
    ['1.weight', '1.bias']
"""

from __future__ import annotations

from transferkit.freeze.batchnorm import convert_frozen_bn, is_bn_locked, lock_bn, unlock_bn
from transferkit.freeze.freezing import (
    freeze,
    freeze_backbone,
    head_parameter_names,
    trainable_parameters,
    unfreeze,
)
from transferkit.freeze.selectors import Selector, check_model, select_parameters
from transferkit.freeze.summary_table import summary

__all__ = [
    "Selector",
    "freeze",
    "unfreeze",
    "freeze_backbone",
    "trainable_parameters",
    "summary",
    "select_parameters",
    "convert_frozen_bn",
    "is_bn_locked",
    "lock_bn",
    "unlock_bn",
    "check_model",
    "head_parameter_names",
]
