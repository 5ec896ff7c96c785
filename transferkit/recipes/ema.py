"""Model EMA: an exponential moving average of a model's weights and buffers (timm's ``ModelEmaV3``).

:class:`ModelEma` keeps the averaged copy in ``.module`` and counts its updates, so the decay warmup
(timm's ``use_warmup``: ``decay_t = min(decay, 1 - (1 + t) ** -2/3)``) continues where a resumed run
stopped. Fine-tuning runs are short (hundreds of steps); without the warmup a decay of 0.999 would keep
the average close to the starting weights for the whole run.

A checkpoint holds the averaged weights as a model of its own (``models["ema"]``) and
:meth:`ModelEma.state_dict` (decay, warmup, update count) beside them.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> ema = ModelEma(net, decay=0.9)
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(1.0)
    >>> ema.update(net)  # the first update copies the model (warmup: decay 0)
    >>> bool(torch.equal(ema.module.weight, net.weight)), ema.updates
    (True, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from transferkit.errors import CheckpointError, ConfigError

__all__ = ["ModelEma", "DEFAULT_EMA_DECAY"]

#: ``--model-ema`` without a value: with the warmup, about 0.95 after 100 steps, 0.99 after 1,000
DEFAULT_EMA_DECAY = 0.999


class ModelEma:
    """An averaged copy of ``model`` (parameters and floating-point buffers), updated after each step.

    Args:
        model: the model being trained (unwrapped: not DDP or compiled); it is deep-copied, so build the
            EMA after the model is on its device.
        decay: the decay the warmup rises to, in (0, 1).
        warmup: timm's decay warmup (on by default, see the module docstring).

    Raises:
        ConfigError: ``decay`` outside (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float = DEFAULT_EMA_DECAY, *, warmup: bool = True) -> None:
        from timm.utils import ModelEmaV3

        if not (isinstance(decay, int | float) and math.isfinite(decay) and 0 < decay < 1):
            raise ConfigError(f"EMA decay must be a number in (0, 1), e.g. 0.999, got {decay!r}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self._ema = ModelEmaV3(model, decay=self.decay, use_warmup=self.warmup)
        self._ema.module.requires_grad_(False)
        self.updates = 0

    @property
    def module(self) -> nn.Module:
        """The averaged model, always in eval mode."""
        return self._ema.module

    def current_decay(self) -> float:
        """The decay the next update will use."""
        return float(self._ema.get_decay(self.updates + 1))

    def update(self, model: nn.Module) -> None:
        """Average ``model``'s current weights in (call after every optimizer step)."""
        self.updates += 1
        self._ema.update(model, step=self.updates)

    def state_dict(self) -> dict[str, Any]:
        """Decay, warmup and the update count (the averaged weights are saved as a model of their own)."""
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the update count; the decay and warmup must be this EMA's.

        Raises:
            CheckpointError: the state is not an EMA state, or it was written with another decay.
        """
        if not isinstance(state, Mapping) or "updates" not in state:
            raise CheckpointError(f"expected a ModelEma state dict (from .state_dict()), got {state!r:.100}")
        if (
            float(state.get("decay", self.decay)) != self.decay
            or bool(state.get("warmup", True)) != self.warmup
        ):
            raise CheckpointError(
                f"the checkpoint's EMA has decay {state.get('decay')} (warmup {state.get('warmup')}), this run "
                f"{self.decay} (warmup {self.warmup}); resume with the run's own EMA settings"
            )
        self.updates = int(state["updates"])

    def describe(self) -> str:
        """One line for the run's records."""
        return f"decay {self.decay:g}" + (" with timm's warmup" if self.warmup else "")

    def __repr__(self) -> str:
        return f"ModelEma({self.describe()}, updates={self.updates})"
