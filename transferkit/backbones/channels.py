"""Input-channel adaptation: make a network built for RGB take 1, 2, 4, ... channels.

The first convolution's weight is adapted, not re-initialised, so pretrained filters keep working:

* ``"sum"`` (to 1 channel): the filters are summed over the source channels — a grey image ``g``
  then gives the response the RGB network gives to ``(g, g, g)``;
* ``"repeat-scale"`` (any other count): the source channels are repeated cyclically up to the new
  count and scaled by ``source / new``, so the expected activation magnitude is unchanged
  (timm's ``adapt_input_conv`` semantics, extended to any source count);
* ``"none"``: the count already matches.

Example:
    >>> import torch
    >>> w = torch.ones(1, 3, 1, 1)
    >>> adapt_conv_weight(w, 1).flatten().tolist(), adapt_conv_weight(w, 6).flatten().tolist()
    ([3.0], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
"""

from __future__ import annotations

import copy
import logging
import math

from torch import Tensor, nn

from transferkit.backbones.heads import canonical_path, get_module, set_module
from transferkit.errors import ConfigError

__all__ = ["adapt_conv_weight", "channel_strategy", "find_first_conv", "adapt_input_channels"]

logger = logging.getLogger(__name__)


def channel_strategy(source: int, target: int) -> str:
    """``"none"``, ``"sum"`` or ``"repeat-scale"`` for adapting ``source`` input channels to ``target``."""
    if target == source:
        return "none"
    return "sum" if target == 1 else "repeat-scale"


def adapt_conv_weight(weight: Tensor, in_chans: int) -> Tensor:
    """Adapt a conv weight ``[out, source, kh, kw]`` to ``in_chans`` input channels (see module docstring).

    Raises:
        ConfigError: the weight is not 4-D or ``in_chans < 1``.
    """
    if weight.ndim != 4:
        raise ConfigError(
            f"input-channel adaptation needs a 4-D conv weight, got shape {tuple(weight.shape)}"
        )
    if in_chans < 1:
        raise ConfigError(f"in_chans must be >= 1, got {in_chans}")
    source = weight.shape[1]
    dtype = weight.dtype
    w = weight.float()  # half-precision sums on CPU are slow and lossy
    strategy = channel_strategy(source, in_chans)
    if strategy == "sum":
        w = w.sum(dim=1, keepdim=True)
    elif strategy == "repeat-scale":
        w = w.repeat(1, math.ceil(in_chans / source), 1, 1)[:, :in_chans] * (source / in_chans)
    return w.to(dtype)


def find_first_conv(net: nn.Module) -> str:
    """The qualified name of the network's input convolution.

    timm models name it in ``pretrained_cfg["first_conv"]``; otherwise it is the first ``nn.Conv2d``
    (registration order) with 3 input channels, or simply the first ``nn.Conv2d``.

    Raises:
        ConfigError: the network has no Conv2d.
    """
    cfg = getattr(net, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, list | tuple):
        first = first[0] if first else None
    if first:
        try:
            if isinstance(get_module(net, first), nn.Conv2d):
                return canonical_path(net, first)
        except AttributeError:
            pass
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(net).__name__} has no nn.Conv2d, so in_chans cannot be adapted")
    for name, conv in convs:
        if conv.in_channels == 3:
            return name
    return convs[0][0]


def adapt_input_channels(net: nn.Module, in_chans: int) -> tuple[str, str]:
    """Replace the first convolution in place by one taking ``in_chans`` channels, weights adapted.

    Returns:
        ``(strategy, conv_name)``: the strategy used (``"none"``, ``"sum"``, ``"repeat-scale"``) and the
        qualified name of the convolution.

    Raises:
        ConfigError: no suitable convolution, or a grouped one.
    """
    name = find_first_conv(net)
    conv = get_module(net, name)
    strategy = channel_strategy(conv.in_channels, in_chans)
    if strategy == "none":
        return strategy, name
    if conv.groups != 1:
        raise ConfigError(
            f"cannot adapt {name} (a grouped convolution, groups={conv.groups}) to {in_chans} channels"
        )
    # a copy keeps the conv's own class (timm's Conv2dSame pads differently) and its other settings
    new = copy.deepcopy(conv)
    new.in_channels = in_chans
    new.weight = nn.Parameter(adapt_conv_weight(conv.weight.detach(), in_chans), conv.weight.requires_grad)
    set_module(net, name, new)
    logger.info("adapted %s from %d to %d input channels (%s)", name, conv.in_channels, in_chans, strategy)
    return strategy, name
