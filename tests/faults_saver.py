"""Child-process side of the save fault tests: save checkpoints over one path until killed.

``test_save_faults.py`` starts :func:`save_versions` in forkserver children (torch already imported, so a
child starts in milliseconds), kills them with SIGKILL at random moments or runs two at once, then checks
that the file at the path is always one complete version. A version's content is fully determined by its
number, so any mix of two versions, or a half-written file, is detectable.

Example:
    >>> state = make_state(3, numel=4)
    >>> state["weight"].tolist()
    [3.0, 3.0, 3.0, 3.0]
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["make_state", "save_versions", "check_version"]


def make_state(version: int, numel: int) -> dict[str, torch.Tensor]:
    """The state dict of ``version``: every element derived from the version number."""
    return {
        "weight": torch.full((numel,), float(version)),
        "table": torch.arange(4096, dtype=torch.int64).reshape(64, 64) + version,
        "bias": torch.full((17,), -float(version)),
    }


def check_version(checkpoint: dict[str, Any], numel: int) -> int:
    """The version a loaded checkpoint holds; raises AssertionError when it is not exactly one version."""
    version = checkpoint["epoch"]
    assert checkpoint["extra"]["version"] == version, "metadata from two different saves"
    saved = checkpoint["models"]["model"]
    expected = make_state(version, numel)
    assert saved.keys() == expected.keys(), f"keys {sorted(saved)}"
    for key, value in expected.items():
        assert torch.equal(saved[key], value), f"tensor {key} is not version {version}'s"
    return version


def save_versions(
    path: str, first: int, count: int, numel: int, started: Any, done: Any, gate: Any = None, writers: int = 1
) -> None:
    """Save versions ``first, first + 1, ...`` (``count`` of them, or forever when ``count`` is 0).

    ``started``/``done`` are shared integers: the version being written and the last one whose
    ``save_checkpoint`` returned. ``gate`` (a shared integer with a lock) makes ``writers`` children
    start saving together, so a race between them really happens even when one is slow to start.
    """
    import time

    from transferkit.checkpoint import save_checkpoint

    torch.set_num_threads(1)  # a forked child must not touch the parent's thread pool
    if gate is not None:
        with gate.get_lock():
            gate.value += 1
        deadline = time.monotonic() + 30
        while gate.value < writers and time.monotonic() < deadline:
            time.sleep(0.001)
    version = first
    while count == 0 or version < first + count:
        state = make_state(version, numel)
        started.value = version
        save_checkpoint(path, model=state, epoch=version, extra={"version": version}, rng=False)
        done.value = version
        version += 1
