"""``inspect_checkpoint``: a checkpoint described, and optionally a dry-run load into a model.

The description comes from :mod:`transferkit.inspect.description`, the dry run from
:mod:`transferkit.inspect.dry_run`; this module reads the file once (with ``mmap``, noting where each
storage was saved) and puts them together as an :class:`Inspection`.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "w.pt"
    >>> torch.save(torch.nn.Linear(2, 3).state_dict(), path)
    >>> inspect_checkpoint(path, against=path).load_fails
    False
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from transferkit.errors import ConfigError, UnsafeCheckpointError
from transferkit.inspect.description import describe_object
from transferkit.inspect.dry_run import (
    build_meta_model,
    dry_run_report,
    load_target,
    skeleton_from_state_dict,
)
from transferkit.inspect.reading import describe_salvaged, describe_unsafe, header_line, record_devices
from transferkit.rename import Rule, normalize_rules

__all__ = ["Inspection", "inspect_checkpoint"]


class Inspection(str):
    """What :func:`inspect_checkpoint` returns: the description (a ``str``), and whether a dry-run load fails.

    Attributes:
        load_fails: ``True`` when the dry run (``model=`` or ``against=``) found that the load would fail,
            so a caller (``transferkit inspect`` and its exit code) need not read the text.
    """

    load_fails: bool = False

    @classmethod
    def of(cls, text: str, load_fails: bool = False) -> Inspection:
        out = cls(text)
        out.load_fails = load_fails
        return out


def inspect_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: str | nn.Module | None = None,
    num_classes: int | None = None,
    against: str | os.PathLike[str] | None = None,
    rules: Sequence[Rule | str] = (),
    salvage: bool = False,
    key: str | None = None,
    align: str = "auto",
) -> str:
    """Describe a checkpoint file, and optionally dry-run loading it into a model.

    Args:
        path: the checkpoint (any format ``transferkit.checkpoint`` reads).
        model: a backbone name for ``transferkit.backbones.create_model`` (built on the meta device, no
            weights) or an ``nn.Module`` (left untouched).
        num_classes: classes for a ``model`` given by name (required then).
        against: another checkpoint: report how this one's weights would load into that layout.
        rules: rename rules (objects or CLI strings) for the dry run.
        salvage: read a file that ``weights_only`` refuses with the restricted unpickler (no code runs).
        key: dotted path of the weights inside the checkpoint (``"state_dict"``, ``"models.G"``).
        align: ``load_partial``'s pairing mode for the dry run; a pairing by structure is listed pair by
            pair (the plan a load would follow).

    Returns:
        A multi-line, human-readable description.

    Raises:
        CheckpointError: the file cannot be read.
        ConfigError: bad arguments (``model`` and ``against`` together, a name without ``num_classes``).
    """
    from transferkit.checkpoint import load_checkpoint

    path = Path(path)
    if model is not None and against is not None:
        raise ConfigError(
            "inspect takes either a `model` or `against` another checkpoint, not both", param="against"
        )
    if isinstance(model, str) and num_classes is None:
        raise ConfigError(f"inspecting against backbone {model!r} needs `num_classes`", param="num_classes")
    rules_t = normalize_rules(rules)
    devices: Counter[str] = Counter()
    try:
        # load_checkpoint validates the path first (missing, a folder, damaged -> CheckpointError);
        # mmap=True only applies to zip files, so storages are mapped, not read
        obj = load_checkpoint(path, map_location=record_devices(devices), mmap=True, salvage=salvage)
    except UnsafeCheckpointError as exc:
        return Inspection.of("\n".join([header_line(path), *describe_unsafe(path, exc)]))
    lines = [header_line(path)]
    if salvage:
        lines.extend(describe_salvaged(obj))
    lines.extend(describe_object(obj, key=key, devices=devices, path=path))
    if model is None and against is None:
        return Inspection.of("\n".join(lines))

    state = _state_dict(obj, key)
    if against is not None:
        other = _state_dict(load_checkpoint(against, map_location="cpu"), None)
        target: nn.Module = skeleton_from_state_dict(other)
        title = f"dry run against {Path(against).name} ({len(other)} tensors)"
    elif isinstance(model, nn.Module):
        target, title = model, f"dry run into {type(model).__name__}"
    else:
        target, title = (
            load_target(build_meta_model(str(model), int(num_classes)), state),
            f"dry run into {model} ({num_classes} classes)",
        )  # type: ignore[arg-type]
    lines.append("")
    lines.append(title)
    text, fails = dry_run_report(target, state, rules_t, path.name, align)
    lines.append(text)
    return Inspection.of("\n".join(lines), load_fails=fails)


def _state_dict(obj: Any, key: str | None) -> dict[str, Any]:
    from transferkit.checkpoint import extract_state_dict

    return dict(extract_state_dict(obj, key))
