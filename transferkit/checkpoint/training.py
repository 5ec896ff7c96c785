"""Training checkpoints: :func:`save_checkpoint` writes a complete training state, :func:`restore_checkpoint`
loads it back into live objects.

The file is a plain dict that ``weights_only=True`` reads back (layout in :mod:`transferkit.checkpoint`);
:func:`to_weights_only` converts what a caller gives into such data or says why it cannot be stored.
"""

from __future__ import annotations

import datetime as _dt
import logging
import numbers
import os
import sys
from collections import Counter, OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from transferkit.checkpoint._files import as_path, source_label
from transferkit.checkpoint.atomic import atomic_torch_save
from transferkit.checkpoint.containers import short_list, unwrap_model
from transferkit.checkpoint.formats import MapLocation, PathLike
from transferkit.checkpoint.reading import load_checkpoint
from transferkit.checkpoint.rng import capture_rng_state, restore_rng_state
from transferkit.errors import CheckpointError, CheckpointMismatchError, ConfigError

__all__ = ["FORMAT", "save_checkpoint", "restore_checkpoint", "require_training_checkpoint"]

# one logger for the whole package: the CLI quiets "transferkit.checkpoint" by name and prints the name
logger = logging.getLogger("transferkit.checkpoint")


FORMAT = "transferkit.checkpoint/1"


def checked_save_path(path: Any) -> Path:
    """The target of a save as a Path; a path written as a folder (trailing separator) is refused, since
    ``Path`` would silently drop the separator and write a file of that name."""
    out = as_path(path)
    text = os.fspath(path)
    if isinstance(text, str) and text.endswith((os.sep, "/")):
        raise ConfigError(
            f"{text!r} names a folder; give the file to write, e.g. {os.path.join(text, 'last.pt')!r}"
        )
    return out


def _refuse_meta(states: Mapping[str, Any], where: str) -> None:
    """Meta-device tensors have no data: a file of them loads back as shapes only, so refuse at save time."""
    for name, state in states.items():
        if not isinstance(state, Mapping):
            continue
        meta = [k for k, v in state.items() if isinstance(v, Tensor) and v.is_meta]
        if meta:
            raise ConfigError(
                f"cannot store {where}[{name!r}]: {len(meta)} tensor(s) are on the meta device and hold no "
                f"values (e.g. {meta[0]!r}); materialise the model first (load weights with assign=True, or "
                "model.to_empty(device='cpu') and initialise it)"
            )


def _state_of(obj: Any, what: str) -> Any:
    if isinstance(obj, nn.Module):
        return unwrap_model(obj).state_dict()
    if callable(getattr(obj, "state_dict", None)):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        return obj
    raise ConfigError(f"{what} must be an object with state_dict() or a state dict, got {type(obj).__name__}")


def _named(single: Any, several: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """Merge ``model=`` and ``models={...}`` (likewise optimizer/scheduler) into one name -> object dict."""
    out: dict[str, Any] = {}
    if several is not None:
        if not isinstance(several, Mapping):
            raise ConfigError(f"{name}s= must be a dict of name -> object, got {type(several).__name__}")
        out.update({str(k): v for k, v in several.items()})
    if single is not None:
        if name in out:
            raise ConfigError(f"{name}= and {name}s={{{name!r}: ...}} both name {name!r}; give it once")
        out[name] = single
    return out


_PLAIN = (str, int, float, bool, complex, bytes, bytearray, type(None), torch.dtype, torch.device)


def to_weights_only(value: Any, where: str) -> Any:
    """``value`` with only types ``weights_only=True`` reads back; numpy values and paths are converted."""
    if isinstance(value, Tensor | torch.Size) or type(value) in _PLAIN:
        return value
    if isinstance(value, Mapping):
        items = [
            (k, v, to_weights_only(k, where), to_weights_only(v, f"{where}[{k!r}]")) for k, v in value.items()
        ]
        if type(value) in (dict, OrderedDict, Counter) and all(a is c and b is d for a, b, c, d in items):
            return value  # unchanged: keep the very object (a state dict's _metadata survives)
        kind = type(value) if type(value) in (dict, OrderedDict, Counter) else dict
        return kind((c, d) for _, _, c, d in items)
    if type(value) in (list, tuple, set):
        items = [(v, to_weights_only(v, f"{where}[{i}]")) for i, v in enumerate(value)]
        if all(a is b for a, b in items):
            return value
        return type(value)(b for _, b in items)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(value, numpy.generic):
            return value.item()
        if isinstance(value, numpy.ndarray):
            return torch.from_numpy(numpy.ascontiguousarray(value))
    for kind in (bool, int, float, str):  # IntEnum, str subclasses, ...
        if isinstance(value, kind):
            return kind(value)
    raise ConfigError(
        f"cannot store {where}: a {type(value).__module__}.{type(value).__qualname__} would need its class "
        "to load again (weights_only=True refuses it); store plain data (numbers, strings, lists, dicts, "
        "tensors) or its state_dict()"
    )


def save_checkpoint(
    path: PathLike,
    *,
    model: Any = None,
    models: Mapping[str, Any] | None = None,
    optimizer: Any = None,
    optimizers: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    schedulers: Mapping[str, Any] | None = None,
    scaler: Any = None,
    epoch: int | None = None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    rng: bool = True,
) -> Path:
    """Save a complete training state atomically (see the module docstring for the layout).

    Args:
        path: the file to write; its folder is created if missing.
        model, models: a model (stored as ``"model"``) and/or a dict of named models; live modules
            (DataParallel/DDP/compiled wrappers are unwrapped) or state dicts.
        optimizer, optimizers, scheduler, schedulers: likewise (``"optimizer"``, ``"scheduler"``).
        scaler: an AMP ``GradScaler`` or its state dict.
        epoch, step: progress counters. metrics: e.g. ``{"loss": 0.3, "best_acc": 0.9}``.
        extra: free-form plain data, e.g. ``{"freeze_schedule": schedule.state_dict()}``.
        meta: e.g. ``{"backbone": "resnet18", "num_classes": 10, "class_names": [...]}``; versions
            and the creation time are added.
        rng: store the Python, NumPy, torch and CUDA RNG states.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        CheckpointError: writing failed (disk full, permission denied ...); the old file is intact.
        ConfigError: something given cannot be stored in a ``weights_only``-loadable file.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> path = save_checkpoint(Path(tempfile.mkdtemp()) / "last.pt", model=net, optimizer=opt, epoch=1)
        >>> sorted(load_checkpoint(path)["optimizers"])
        ['optimizer']
    """
    path = checked_save_path(path)
    import transferkit

    for what, value in (("epoch", epoch), ("step", step)):
        if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool)):
            raise ConfigError(f"{what} must be an int (or None), got {type(value).__name__}: {value!r:.80}")
    for what, value in (("metrics", metrics), ("extra", extra), ("meta", meta)):
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{what} must be a dict (or None), got {type(value).__name__}: {value!r:.80}")
    payload = {
        "format": FORMAT,
        "models": {n: _state_of(m, f"model {n!r}") for n, m in _named(model, models, "model").items()},
        "optimizers": {
            n: _state_of(o, f"optimizer {n!r}") for n, o in _named(optimizer, optimizers, "optimizer").items()
        },
        "schedulers": {
            n: _state_of(s, f"scheduler {n!r}") for n, s in _named(scheduler, schedulers, "scheduler").items()
        },
        "scaler": None if scaler is None else _state_of(scaler, "scaler"),
        "epoch": None if epoch is None else int(epoch),
        "step": None if step is None else int(step),
        "metrics": dict(metrics or {}),
        "rng": capture_rng_state() if rng else None,
        "extra": dict(extra or {}),
        "meta": {
            "transferkit_version": getattr(transferkit, "__version__", "unknown"),
            "torch_version": torch.__version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **dict(meta or {}),
        },
    }
    payload = to_weights_only(payload, "checkpoint")
    _refuse_meta(payload["models"], "checkpoint['models']")
    atomic_torch_save(payload, path)
    logger.info(
        "saved checkpoint %s (models: %s, epoch %s, step %s)",
        path,
        ", ".join(payload["models"]) or "none",
        epoch,
        step,
    )
    return path


# --------------------------------------------------------------------------------------------- restoring


def _custom_loading(module: nn.Module) -> bool:
    """True when a submodule loads its own way (renames keys, reshapes), so keys cannot be predicted."""
    return any(
        type(m)._load_from_state_dict is not nn.Module._load_from_state_dict or m._load_state_dict_pre_hooks
        for m in module.modules()
    )


def _precheck(target: Any, state: Any, what: str, label: str, hint: str | None) -> None:
    """Raise the error ``load_state_dict`` would raise, before anything is written."""
    problems: list[str] = []
    if isinstance(target, nn.Module) and isinstance(state, Mapping):
        module = unwrap_model(target)
        mine = module.state_dict()
        for k, v in state.items():
            own = mine.get(k)
            if isinstance(v, Tensor) and isinstance(own, Tensor) and v.shape != own.shape:
                problems.append(
                    f"size mismatch for {k}: checkpoint {list(v.shape)} vs model {list(own.shape)}"
                )
        if not _custom_loading(module):
            missing = [k for k in mine if k not in state]
            unexpected = [k for k in state if k not in mine]
            if missing:
                problems.append(f"missing {short_list(missing, 160)}")
            if unexpected:
                problems.append(f"unexpected {short_list(unexpected, 160)}")
    elif isinstance(target, torch.optim.Optimizer) and isinstance(state, Mapping):
        saved = state.get("param_groups")
        if isinstance(saved, list):
            have = [len(g["params"]) for g in target.param_groups]
            want = [len(g.get("params", ())) if isinstance(g, Mapping) else -1 for g in saved]
            if have != want:
                problems.append(
                    f"the checkpoint has {len(want)} parameter group(s) of sizes {want}, this optimizer "
                    f"{len(have)} of sizes {have}"
                )
    if problems:
        order = "; a GradualUnfreeze schedule's load_state_dict must run before the optimizer's"
        raise _mismatch(label, what, problems[:6], hint, order)


def _load_into(target: Any, state: Any, what: str, label: str, hint: str | None) -> None:
    try:
        if isinstance(target, nn.Module):
            unwrap_model(target).load_state_dict(state)
        else:
            target.load_state_dict(state)
    except Exception as err:  # size mismatch, missing keys, wrong group count ...
        raise _mismatch(label, what, [" ".join(str(err).split())[:600]], hint) from err


def _mismatch(
    label: str, what: str, problems: list[str], hint: str | None, more: str = ""
) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"{label}: cannot restore {what}: {'; '.join(problems)}. Nothing was restored.",
        what=what,
        problems=problems,
        hint=hint
        or f"Was the checkpoint written for this {what.split()[0]}? (to warm-start from other weights use "
        f"load_partial{more})",
    )


def require_training_checkpoint(
    ckpt: Any,
    label: str,
    *,
    epoch: bool = False,
    hint: str = "to load weights from another layout use load_partial",
) -> Mapping[str, Any]:
    """``ckpt`` when it is a training checkpoint (with an epoch when ``epoch``), else CheckpointError.

    The one check of a training checkpoint's shape: :func:`restore_checkpoint`, ``Trainer.resume`` and the
    CLI's ``--resume`` all use it, each with its own ``hint`` on what to do instead.
    """
    models = isinstance(ckpt, Mapping) and isinstance(ckpt.get("models"), Mapping)
    if models and (not epoch or ckpt.get("epoch") is not None):
        return ckpt
    found = short_list(list(ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
    needs = "'models' and 'epoch'" if epoch else "'models'"
    raise CheckpointError(
        f"{label}: not a transferkit training checkpoint (last.pt/best.pt of a run: expected 'format': "
        f"{FORMAT!r} with {needs}; found {found}); {hint}"
    )


def restore_checkpoint(
    source: PathLike | Mapping[str, Any],
    *,
    model: Any = None,
    models: Mapping[str, Any] | None = None,
    optimizer: Any = None,
    optimizers: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    schedulers: Mapping[str, Any] | None = None,
    scaler: Any = None,
    restore_rng: bool = True,
    map_location: MapLocation = "cpu",
    label: str | None = None,
    hint: str | None = None,
) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` file into live objects, so resuming is one call.

    Every name given must be in the checkpoint; all names, model keys and shapes, and optimizer group
    sizes are checked before anything is loaded, so a mismatch leaves every object as it was.
    Models keep their device (``load_state_dict`` copies into the existing parameters) and optimizer
    state follows its parameters.

    Args:
        source: a path, or a checkpoint dict already loaded with :func:`load_checkpoint`.
        model, models, optimizer, optimizers, scheduler, schedulers, scaler: the live objects, with the
            same names as when saving.
        restore_rng: put back the saved Python/NumPy/torch/CUDA RNG states.
        map_location: used when ``source`` is a path.
        label, hint: how errors name the checkpoint (default: its path) and what a mismatch advises
            (default: whether it was written for this model, and ``load_partial`` to warm-start).

    Returns:
        The checkpoint dict (``epoch``, ``step``, ``metrics``, ``extra``, ``meta`` ...).

    Raises:
        CheckpointError: not a transferkit training checkpoint, a name is missing, or the state does not
            fit the object.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> path = save_checkpoint(Path(tempfile.mkdtemp()) / "c.pt", model=torch.nn.Linear(2, 1), step=7)
        >>> restore_checkpoint(path, model=torch.nn.Linear(2, 1))["step"]
        7
    """
    if isinstance(source, Mapping):
        ckpt, label = source, label or source_label(source)
    else:
        ckpt, label = load_checkpoint(source, map_location=map_location), label or str(source)
    require_training_checkpoint(ckpt, label)
    plan: list[tuple[Any, Any, str]] = []
    for section, objects, kind in (
        ("models", _named(model, models, "model"), "model"),
        ("optimizers", _named(optimizer, optimizers, "optimizer"), "optimizer"),
        ("schedulers", _named(scheduler, schedulers, "scheduler"), "scheduler"),
    ):
        stored = ckpt.get(section) or {}
        for name, target in objects.items():
            if name not in stored:
                raise CheckpointError(
                    f"{label}: no {kind} named {name!r} in the checkpoint; it has {section}: "
                    f"{', '.join(map(str, stored)) or 'none'}"
                )
            plan.append((target, stored[name], f"{kind} {name!r}"))
    if scaler is not None:
        state = ckpt.get("scaler")
        if state:
            plan.append((scaler, state, "scaler"))
        elif getattr(scaler, "is_enabled", lambda: False)():
            logger.warning("%s: no grad-scaler state saved; the scaler starts afresh", label)
    # every object is checked before the first is written, so a mismatch leaves them all as they were
    # (torch's load_state_dict copies the tensors that fit before it reports the ones that do not)
    for target, state, what in plan:
        _precheck(target, state, what, label, hint)
    for target, state, what in plan:
        _load_into(target, state, what, label, hint)
    if restore_rng and ckpt.get("rng"):
        restore_rng_state(ckpt["rng"])
    logger.info(
        "restored %s from %s (epoch %s, step %s)",
        ", ".join(what for _, _, what in plan) or "nothing",
        label,
        ckpt.get("epoch"),
        ckpt.get("step"),
    )
    return dict(ckpt)
