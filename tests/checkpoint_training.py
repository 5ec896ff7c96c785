"""A tiny GAN-style training state for the checkpoint resume tests, and a child-process entry point.

Two models (``G``, ``D``), two optimizers (Adam, SGD with momentum), two LR schedulers and an AMP grad
scaler, trained on noise drawn from all three RNGs (Python, NumPy, torch) with dropout, so a resume is
only bitwise identical when every piece of state (weights, moments, schedules, scale, RNG) came back.

``python tests/checkpoint_training.py CKPT STEPS OUT`` restores CKPT into fresh objects, trains STEPS
more steps and writes the resulting parameters to OUT (safetensors): the fresh-process resume test.

Example:
    >>> state = build(seed=0)
    >>> sorted(state.models), sorted(state.optimizers)
    (['D', 'G'], ['D', 'G'])
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["TrainState", "build", "train", "parameters", "checkpoint_kwargs", "main"]


@dataclass
class TrainState:
    """Everything a resume must bring back."""

    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    scaler: torch.amp.GradScaler


def build(seed: int) -> TrainState:
    """Fresh objects; different seeds give different initial weights."""
    torch.manual_seed(seed)
    gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 6))
    disc = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Dropout(0.1), nn.Linear(12, 1))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-2, weight_decay=1e-3)
    opt_d = torch.optim.SGD(disc.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    return TrainState(
        models={"G": gen, "D": disc},
        optimizers={"G": opt_g, "D": opt_d},
        schedulers={
            "G": torch.optim.lr_scheduler.CosineAnnealingLR(opt_g, T_max=7),
            "D": torch.optim.lr_scheduler.StepLR(opt_d, step_size=3, gamma=0.5),
        },
        # a small scale that grows every 2 steps, so the scaler's state changes during training
        scaler=torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=2),
    )


def train(state: TrainState, steps: int) -> list[float]:
    """``steps`` adversarial steps; returns the losses. One thread, so float sums are reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen, disc = state.models["G"], state.models["D"]
    losses = []
    try:
        for _ in range(steps):
            gen.train()
            disc.train()
            # every RNG feeds the data, so a missing RNG restore changes the numbers
            scale = 1.0 + random.random()
            shift = torch.from_numpy(np.random.standard_normal(6).astype(np.float32))
            real = torch.randn(8, 6) * scale + shift
            fake = gen(torch.randn(8, 4))
            d_loss = (disc(real) - 1).pow(2).mean() + disc(fake.detach()).pow(2).mean()
            state.optimizers["D"].zero_grad()
            state.scaler.scale(d_loss).backward()
            state.scaler.step(state.optimizers["D"])
            g_loss = (disc(fake) - 1).pow(2).mean()
            state.optimizers["G"].zero_grad()
            state.scaler.scale(g_loss).backward()
            state.scaler.step(state.optimizers["G"])
            state.scaler.update()
            for scheduler in state.schedulers.values():
                scheduler.step()
            losses += [d_loss.item(), g_loss.item()]
    finally:
        torch.set_num_threads(threads)
    return losses


def parameters(state: TrainState) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of both models, copied, under ``G.``/``D.`` prefixes."""
    return {
        f"{name}.{key}": value.detach().clone()
        for name, model in state.models.items()
        for key, value in model.state_dict().items()
    }


def checkpoint_kwargs(state: TrainState) -> dict[str, Any]:
    """The keyword arguments for save_checkpoint / restore_checkpoint."""
    return {
        "models": state.models,
        "optimizers": state.optimizers,
        "schedulers": state.schedulers,
        "scaler": state.scaler,
    }


def main(argv: list[str]) -> int:
    """Child process: restore ``argv[0]`` into fresh objects, train ``argv[1]`` steps, save to ``argv[2]``."""
    from transferkit.checkpoint import restore_checkpoint, save_weights

    ckpt_path, steps, out = Path(argv[0]), int(argv[1]), Path(argv[2])
    state = build(seed=12345)  # deliberately different weights and RNG: all must come from the file
    restore_checkpoint(ckpt_path, **checkpoint_kwargs(state))
    losses = train(state, steps)
    save_weights(out, parameters(state), metadata={"losses": losses})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
