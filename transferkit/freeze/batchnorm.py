"""The BatchNorm policy: a BN layer whose parameters are all frozen stops normalising with batch statistics.

Such a layer is put in eval mode *and kept there*: its ``train()`` is replaced by one that keeps
``training=False`` (so ``model.train()`` leaves it in eval mode), and a forward pre-hook resets
``module.training = False`` before every forward, so nothing can make it update its running statistics --
the classic "frozen backbone whose BN statistics still drift" bug (:func:`lock_bn`, :func:`unlock_bn`).
:func:`convert_frozen_bn` is the permanent alternative: ``FrozenBatchNorm2d``, affine terms as buffers.

Example:
    >>> from torch import nn
    >>> bn = nn.BatchNorm2d(4)
    >>> lock_bn(bn)
    >>> _ = bn.train()
    >>> bn.training, is_bn_locked(bn)
    (False, True)
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferkit.freeze.selectors import Selector, select_parameters

__all__ = ["is_bn_locked", "lock_bn", "unlock_bn", "bn_owners", "frozen_bn_layers", "convert_frozen_bn"]

logger = logging.getLogger("transferkit.freeze")


def _keep_bn_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen BN layer: whatever set ``training``, normalise with running stats."""
    module.training = False


def _locked_train(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen BN layer: ``model.train()`` reaches it through its parent and is ignored."""
    nn.Module.train(module, False)
    return module


def _is_locked_train(value: Any) -> bool:
    return isinstance(value, functools.partial) and value.func is _locked_train


def is_bn_locked(module: nn.Module) -> bool:
    """Whether ``module`` carries the frozen-BN hook that keeps it in eval mode."""
    return any(h is _keep_bn_eval for h in module._forward_pre_hooks.values())


def lock_bn(module: nn.Module) -> None:
    # Two guards: the instance-level train() keeps ``module.training`` False through model.train(), so
    # what the flag says is what the layer does; the pre-hook also covers ``bn.training = True`` set by
    # hand. A partial (not a bound method) survives deepcopy and pickle, pointing at the copy.
    if not is_bn_locked(module):
        module.register_forward_pre_hook(_keep_bn_eval)
    vars(module)["train"] = functools.partial(_locked_train, module)
    module.training = False


def unlock_bn(module: nn.Module, training: bool) -> None:
    # Hooks are removed by identity of the function, not through a stored handle: a handle holds a weakref
    # to the original module's hook dict, which deepcopy would not follow.
    hooks = module._forward_pre_hooks
    for key in [k for k, h in hooks.items() if h is _keep_bn_eval]:
        del hooks[key]
    if _is_locked_train(vars(module).get("train")):
        del vars(module)["train"]
    module.train(training)


def bn_owners(model: nn.Module) -> list[tuple[str, _BatchNorm, list[str]]]:
    """Every BN layer with the parameter names that decide whether it counts as frozen.

    Those are its own affine parameters; a BN layer without any follows the nearest enclosing module that
    has parameters (a ResNet block, at worst the whole model).
    """
    name_of = {id(p): n for n, p in model.named_parameters()}
    modules = dict(model.named_modules())
    out = []
    for mname, module in modules.items():
        if not isinstance(module, _BatchNorm):
            continue
        owner, prefix = module, mname
        while not any(True for _ in owner.parameters()) and prefix:
            prefix = prefix.rpartition(".")[0]
            owner = modules[prefix]
        owned = [name_of[id(p)] for p in owner.parameters()]
        if owned:
            out.append((mname, module, owned))
    return out


def frozen_bn_layers(model: nn.Module, chosen: set[str]) -> list[tuple[str, _BatchNorm]]:
    """BN layers touched by ``chosen`` whose deciding parameters are now all frozen."""
    params = dict(model.named_parameters())
    return [
        (name, bn)
        for name, bn, owned in bn_owners(model)
        if any(n in chosen for n in owned) and not any(params[n].requires_grad for n in owned)
    ]


def convert_frozen_bn(model: nn.Module, *selectors: Selector) -> list[str]:
    """Replace ``nn.BatchNorm2d`` layers whose parameters are all frozen with ``FrozenBatchNorm2d``.

    The converted layers keep their weight, bias and running statistics, now as buffers, so they can never
    train again (unfreeze does not bring them back) and the ``num_batches_tracked`` key leaves the state
    dict. Convert *before* building the optimizer: the old parameters leave the model.

    Args:
        model: any module.
        *selectors: limit the conversion to these parameters' BN layers (default: every frozen BN2d).

    Returns:
        Qualified names of the converted modules.

    Example:
        >>> from transferkit.freeze import freeze
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> _ = freeze(m)
        >>> convert_frozen_bn(m)
        ['1']
    """
    from torchvision.ops import FrozenBatchNorm2d

    converted = []
    for name, bn in frozen_bn_layers(model, set(select_parameters(model, *selectors))):
        if type(bn) is not nn.BatchNorm2d or bn.running_mean is None:
            logger.info("not converting %s (%s without running stats or not 2d)", name, type(bn).__name__)
            continue
        fbn = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
        with torch.no_grad():
            if bn.affine:
                fbn.weight.copy_(bn.weight)
                fbn.bias.copy_(bn.bias)
            fbn.running_mean.copy_(bn.running_mean)
            fbn.running_var.copy_(bn.running_var)
        fbn.to(device=bn.running_mean.device)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, fbn)
        converted.append(name)
    return converted
