"""Capturing and restoring the Python, NumPy, torch and CUDA random states, ``weights_only``-loadable."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["capture_rng_state", "restore_rng_state"]

# one logger for the whole package: the CLI quiets "transferkit.checkpoint" by name and prints the name
logger = logging.getLogger("transferkit.checkpoint")


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and every CUDA device's RNG state, in a ``weights_only``-loadable form.

    Example:
        >>> state = capture_rng_state()
        >>> sorted(state)
        ['cuda', 'numpy', 'python', 'torch']
    """
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": (version, tuple(internal), gauss),
        "numpy": None,
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch in practice
        np = None
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        # an ndarray needs numpy globals under weights_only; a tensor of the same numbers does not
        state["numpy"] = {
            "bit_generator": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back the RNG states from :func:`capture_rng_state`, so random streams continue exactly.

    Example:
        >>> import torch
        >>> saved = capture_rng_state()
        >>> a = torch.rand(2)
        >>> restore_rng_state(saved)
        >>> bool(torch.equal(a, torch.rand(2)))
        True
    """
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    if state.get("numpy") is not None:
        import numpy as np

        np_state = state["numpy"]
        keys = torch.as_tensor(np_state["keys"]).cpu().numpy().astype(np.uint32)
        np.random.set_state(
            (
                np_state["bit_generator"],
                keys,
                int(np_state["pos"]),
                int(np_state["has_gauss"]),
                float(np_state["cached_gaussian"]),
            )
        )
    if state.get("torch") is not None:
        torch.set_rng_state(torch.as_tensor(state["torch"]).cpu().to(torch.uint8))
    cuda = list(state.get("cuda") or [])
    if cuda:
        if not torch.cuda.is_available():
            logger.warning(
                "the checkpoint has CUDA RNG states for %d device(s); CUDA is not available", len(cuda)
            )
        else:
            count = torch.cuda.device_count()
            if count != len(cuda):
                logger.warning(
                    "the checkpoint has CUDA RNG states for %d device(s), this machine has %d; restoring %d",
                    len(cuda),
                    count,
                    min(count, len(cuda)),
                )
            for index, value in enumerate(cuda[:count]):
                torch.cuda.set_rng_state(torch.as_tensor(value).cpu().to(torch.uint8), index)
