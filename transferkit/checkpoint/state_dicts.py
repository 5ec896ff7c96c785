"""Finding and copying model weights: :func:`extract_state_dict` and :func:`snapshot_state`.

:func:`extract_state_dict` looks through whatever container the weights came in (conventional keys,
EMA copies, a transferkit training checkpoint, nested dicts and lists, modules) and raises instead of
guessing when there are several candidates. :func:`unwrap_model` removes DataParallel / DDP /
``torch.compile`` wrappers for the savers too.
"""

from __future__ import annotations

import logging
import reprlib
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from transferkit.checkpoint._files import source_label
from transferkit.errors import CheckpointError, ConfigError

__all__ = ["extract_state_dict", "snapshot_state"]

# one logger for the whole package: the CLI quiets "transferkit.checkpoint" by name and prints the name
logger = logging.getLogger("transferkit.checkpoint")


# Keys under which people store model weights, most conventional first; the EMA copies come last so
# the raw weights win when both are present (the EMA alternative is logged).
_PRIMARY_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params")
_EMA_KEYS = ("ema", "model_ema", "state_dict_ema", "ema_state_dict")
# Keys that hold tensors which are not model weights (optimizer moments, RNG states, ...).
_NON_MODEL_KEYS = frozenset(
    {
        "optimizer",
        "optimizers",
        "optimizer_state_dict",
        "optimizer_states",
        "optim",
        "opt",
        "scheduler",
        "schedulers",
        "lr_scheduler",
        "lr_schedulers",
        "scaler",
        "grad_scaler",
        "amp",
        "rng",
        "rng_state",
        "rng_states",
        "meta",
        "extra",
        "callbacks",
        "loops",
        "hyper_parameters",
        "hparams",
        "args",
        "config",
        "metrics",
    }
)
_SEARCH_DEPTH = 4


def unwrap_model(module: nn.Module, notes: list[str] | None = None) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers.

    Each wrapper taken off is described in ``notes`` when given (``load_partial`` reports them).
    """
    while True:
        if isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
            if notes is not None:
                notes.append(f"loaded into the module inside {type(module).__name__}")
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            if notes is not None:
                notes.append("loaded into the original module inside torch.compile's wrapper")
            module = module._orig_mod
        else:
            return module


def _items(obj: Mapping) -> Any:
    """A mapping's items, read without calling anything the file could have replaced.

    A pickle's ``BUILD`` can give an ``OrderedDict`` instance attributes named ``items``, ``keys`` or
    ``values`` (torch's ``weights_only`` allows it), which shadow the methods; ``dict.items`` cannot be
    shadowed.
    """
    return dict.items(obj) if isinstance(obj, dict) else obj.items()


def _values(obj: Mapping) -> Any:
    return dict.values(obj) if isinstance(obj, dict) else obj.values()


def _keys(obj: Mapping) -> list[Any]:
    return list(dict.keys(obj) if isinstance(obj, dict) else obj.keys())


class _Walk:
    """The budget of one search through a loaded object: each container is visited once (a list that
    holds itself 100 times is one node, not 100^4), and at most ``limit`` entries are looked at."""

    limit = 1_000_000

    def __init__(self, label: str) -> None:
        self.label = label
        self.seen: set[int] = set()
        self.answers: dict[int, bool] = {}  # for _has_tensors
        self.entries = 0

    def first_visit(self, obj: Any) -> bool:
        """Whether ``obj`` (a container) is new to this walk; counts its entries against the budget."""
        if id(obj) in self.seen:
            return False
        self.seen.add(id(obj))
        self.entries += 1 + (len(obj) if isinstance(obj, Mapping | list | tuple) else 0)
        if self.entries > self.limit:
            raise CheckpointError(
                f"{self.label}: gave up looking for the weights after {self.limit:,} entries of nested "
                "containers (a checkpoint this large or this self-referencing is not a plain set of "
                "weights); pass key= to say where the weights are"
            )
        return True


def _is_state_dict(obj: Any) -> bool:
    # a module with get_extra_state() saves "<prefix>_extra_state" entries of any type beside its tensors
    if not isinstance(obj, Mapping) or len(obj) == 0:
        return False
    items = list(_items(obj))
    return (
        all(isinstance(k, str) for k, _ in items)
        and all(isinstance(v, Tensor) or k.endswith("_extra_state") for k, v in items)
        and any(isinstance(v, Tensor) for _, v in items)
    )


def _has_tensors(obj: Any, walk: _Walk, depth: int = 0) -> bool:
    """Whether ``obj`` holds a tensor within the search depth; answers are remembered per container, and a
    container met again on its own path (a cycle) adds nothing."""
    if isinstance(obj, Tensor | nn.Module):
        return True
    if depth >= _SEARCH_DEPTH or not isinstance(obj, Mapping | list | tuple):
        return False
    if id(obj) in walk.answers:
        return walk.answers[id(obj)]
    walk.first_visit(obj)
    walk.answers[id(obj)] = False
    values = _values(obj) if isinstance(obj, Mapping) else obj
    walk.answers[id(obj)] = found = any(_has_tensors(v, walk, depth + 1) for v in list(values))
    return found


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) and len(key) <= 200 else short_list(key, 60)


def _join(where: str | None, key: Any) -> str:
    return str(key) if where is None else f"{where}.{key}"


def _looks_like_optimizer(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "state" in obj and "param_groups" in obj


def _candidates(obj: Any, where: str | None, walk: _Walk, depth: int = 0) -> list[tuple[str | None, Mapping]]:
    """Every tensor dict below ``obj`` that may be model weights, with its dotted path."""
    if isinstance(obj, Mapping | list | tuple) and not walk.first_visit(obj):
        return []  # reached before by another path (shared or self-referencing containers)
    if _is_state_dict(obj):
        return [(where, obj)]
    if depth >= _SEARCH_DEPTH or _looks_like_optimizer(obj):
        return []
    found: list[tuple[str | None, Mapping]] = []
    if isinstance(obj, Mapping):
        for key, value in list(_items(obj)):
            if isinstance(key, str) and key.lower() in _NON_MODEL_KEYS:
                continue
            found.extend(_candidates(value, _join(where, _key_text(key)), walk, depth + 1))
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            found.extend(_candidates(value, _join(where, index), walk, depth + 1))
    elif isinstance(obj, nn.Module):
        found.append((where, obj.state_dict()))
    return found


def _find(
    obj: Any, where: str | None, label: str, walk: _Walk | None = None
) -> tuple[Mapping[str, Tensor], str | None]:
    """The model weights at or below ``obj`` (reached by the dotted path ``where``)."""
    walk = _Walk(label) if walk is None else walk
    if isinstance(obj, nn.Module):
        return dict(unwrap_model(obj).state_dict()), where
    if _is_state_dict(obj):
        return obj, where
    if isinstance(obj, Tensor):
        raise CheckpointError(
            f"{label}: {where or 'the file'} is a single tensor of shape {tuple(obj.shape)}, not a dict of "
            "named tensors"
        )
    salvage = sys.modules.get("transferkit.salvage")  # no placeholder exists unless salvage was imported
    if salvage is not None and salvage.is_placeholder(obj):
        # a whole pickled module read by salvage: its recorded _parameters/_buffers are the weights
        state = salvage.module_state_dict(obj)
        if state:
            return state, where
    if not isinstance(obj, Mapping | list | tuple):
        raise CheckpointError(
            f"{label}: {where or 'the file'} holds a {type(obj).__name__!r} object, not a dict of named tensors"
        )
    if isinstance(obj, Mapping):
        entries = dict(_items(obj)) if isinstance(obj, dict) else obj
        if str(entries.get("format", ""))[:40].startswith("transferkit.checkpoint") and isinstance(
            entries.get("models"), Mapping
        ):
            return _find_in_models(entries["models"], _join(where, "models"), label, walk)
        present = [k for k in _PRIMARY_KEYS + _EMA_KEYS if k in entries and _has_tensors(entries[k], walk)]
        if present:
            if len(present) > 1:
                others = ", ".join(repr(_join(where, k)) for k in present[1:])
                logger.info("%s: also holds %s; pass key= to use one of those instead", label, others)
            return _find(entries[present[0]], _join(where, present[0]), label, walk)
    found = _candidates(obj, where, walk)
    if len(found) == 1:
        return found[0][1], found[0][0]
    if found:
        listing = ", ".join(f"{path} ({len(sd)} tensors)" for path, sd in found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        raise CheckpointError(
            f"{label}: found {len(found)} model state dicts: {listing}{more}; pass key= to choose one, "
            f"e.g. key={found[0][0]!r}"
        )
    keys = _keys(obj) if isinstance(obj, Mapping) else f"a {type(obj).__name__} of {len(obj)}"
    raise CheckpointError(
        f"{label}: no model weights (a dict of named tensors) found in {where or 'the file'}; it holds "
        f"{short_list(keys)}{_not_tensors(obj, walk)}"
    )


def _not_tensors(obj: Any, walk: _Walk) -> str:
    """For a dict that is almost a state dict: which entries keep it from being one, and the fix."""
    if not isinstance(obj, Mapping) or not obj:
        return ""
    bad = [(k, v) for k, v in list(_items(obj)) if not isinstance(v, Tensor) and not _has_tensors(v, walk)]
    if not bad or len(bad) == len(obj) and not any(type(v).__module__ == "numpy" for _, v in bad):
        return ""
    shown = ", ".join(f"{short_list(k, 60)} ({type(v).__name__})" for k, v in bad[:4])
    numpy = any(type(v).__module__ == "numpy" for _, v in bad)
    fix = "convert them with torch.from_numpy" if numpy else "drop them (or replace them with tensors)"
    return f". {len(bad)} of its {len(obj)} entries are not tensors: {shown}; {fix} to load the weights"


def _find_in_models(models: Mapping, where: str, label: str, walk: _Walk) -> tuple[Mapping[str, Tensor], str]:
    names = _keys(models)
    if len(names) == 1:
        return _find(models[names[0]], _join(where, _key_text(names[0])), label, walk)
    listing = ", ".join(_join(where, _key_text(n)) for n in names[:10]) or "none"
    raise CheckpointError(
        f"{label}: a transferkit checkpoint with {len(models)} models ({listing}); pass key= to choose one, "
        f"e.g. key={_join(where, next(iter(models), 'model'))!r}"
    )


_REPR = reprlib.Repr()
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 12
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


def short_list(value: Any, limit: int = 200) -> str:
    # reprlib, not repr: a loaded object may be a DAG of shared lists that a full repr would expand
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _follow(obj: Any, key: str, label: str) -> tuple[Any, str]:
    """Walk the dotted path ``key``; a part may itself contain dots (``"module.fc"``), longest first."""
    parts = key.split(".")
    node, walked, i = obj, [], 0
    while i < len(parts):
        where = ".".join(walked) or "the top level"
        if isinstance(node, Mapping):
            for j in range(len(parts), i, -1):
                name = ".".join(parts[i:j])
                hit = name if name in node else int(name) if name.isdigit() and int(name) in node else None
                if hit is not None:
                    node, i = node[hit], j
                    walked.append(name)
                    break
            else:
                raise CheckpointError(
                    f"{label}: key={key!r}: no {parts[i]!r} at {where}; keys there: {short_list(list(node))}"
                )
        elif isinstance(node, list | tuple) and parts[i].isdigit() and int(parts[i]) < len(node):
            node = node[int(parts[i])]
            walked.append(parts[i])
            i += 1
        else:
            raise CheckpointError(
                f"{label}: key={key!r}: {where} is a {type(node).__name__}, which has no {parts[i]!r}"
            )
    return node, ".".join(walked)


def extract_state_dict(
    obj: Any, key: str | None = None, *, return_key: bool = False
) -> dict[str, Tensor] | tuple[dict[str, Tensor], str | None]:
    """Find the model weights (a dict of named tensors) inside a loaded checkpoint.

    A plain state dict is returned as is. Otherwise the usual containers are tried: the model of a
    transferkit checkpoint, then ``state_dict``, ``model_state_dict``, ``model``, ``net``, ``network``,
    ``module``, ``weights``, ``params``, then the EMA copies (``ema``, ``model_ema``,
    ``state_dict_ema``). Failing those, the one tensor dict found anywhere outside optimizer/RNG
    entries. Several candidates (``modelA``/``modelB``, ``G``/``D``) raise instead of guessing.

    Args:
        obj: what :func:`load_checkpoint` returned (or any nested container, or an ``nn.Module``).
        key: dotted path to the weights, e.g. ``"state_dict"``, ``"models.G"``, ``"model.ema"``.
        return_key: also return the dotted path used (``None`` when ``obj`` itself is the state dict).

    Returns:
        The state dict, or ``(state_dict, key_path)`` with ``return_key=True``.

    Raises:
        CheckpointError: no tensors, several candidates (listed), or ``key`` does not exist.

    Example:
        >>> import torch
        >>> ckpt = {"epoch": 3, "net": {"fc.weight": torch.zeros(2, 2)}}
        >>> extract_state_dict(ckpt, return_key=True)[1]
        'net'
    """
    label = source_label(obj)
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"key must be a non-empty dotted path such as 'state_dict', got {key!r}")
        node, start = _follow(obj, key, label)
        state, where = _find(node, start, label)
    else:
        state, where = _find(obj, None, label)
    state = _checked(state, where, label)
    logger.info("%s: using the %d tensors at %s", label, len(state), where or "the top level")
    return (state, where) if return_key else state  # type: ignore[return-value]


def _checked(state: Mapping[str, Any], where: str | None, label: str) -> Mapping[str, Any]:
    """The state dict as plain data: exotic tensor kinds refused, attributes a pickle planted dropped.

    Nested and sparse tensors load into no ``nn.Module`` parameter, and would fail later with torch's own
    errors; an ``OrderedDict`` whose ``BUILD`` state shadowed ``items``/``keys`` is rebuilt (keeping a
    well-formed ``_metadata``, which ``load_state_dict`` uses for module versions).
    """
    exotic = [
        (k, "nested" if v.is_nested else str(v.layout).replace("torch.", ""))
        for k, v in _items(state)
        if isinstance(v, Tensor) and (v.is_nested or v.layout != torch.strided)
    ]
    if exotic:
        shown = ", ".join(f"{_key_text(k)} ({kind})" for k, kind in exotic[:5])
        raise CheckpointError(
            f"{label}: {len(exotic)} tensor(s) at {where or 'the top level'} are not dense tensors: {shown}; "
            "model weights are dense (strided) tensors. Convert them before saving (to_dense(), "
            "to_padded_tensor()) or drop them"
        )
    extra = getattr(state, "__dict__", None)
    if type(state) is dict or not isinstance(state, dict) or not extra:
        return state
    metadata = extra.get("_metadata")
    if set(extra) == {"_metadata"} and _plain_metadata(metadata):
        return state
    logger.warning(
        "%s: the state dict at %s carries attributes %s; they were dropped",
        label,
        where or "the top level",
        short_list(sorted(map(str, extra)), 120),
    )
    clean: OrderedDict[str, Any] = OrderedDict(_items(state))
    if _plain_metadata(metadata):
        clean._metadata = metadata  # type: ignore[attr-defined]
    return clean


def _plain_metadata(value: Any) -> bool:
    """``{prefix: {"version": int}}``, as nn.Module.state_dict writes it."""
    return type(value) in (dict, OrderedDict) and all(
        isinstance(k, str) and type(v) is dict for k, v in dict.items(value)
    )


def module_or_state(obj: Any, caller: str) -> Mapping[str, Any]:
    """The state dict of a module (wrappers removed), or ``obj`` itself when it already is one."""
    if isinstance(obj, nn.Module):
        return unwrap_model(obj).state_dict()
    if isinstance(obj, Mapping):
        return obj
    raise ConfigError(f"{caller} takes an nn.Module or a state dict, got {type(obj).__name__}")


def snapshot_state(model_or_state_dict: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """A detached deep copy of a model's state, e.g. for "best so far" tracking.

    ``model.state_dict()`` returns tensors that share memory with the live parameters, so it keeps
    changing as training continues; this copy does not.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> best = snapshot_state(model)
        >>> with torch.no_grad():
        ...     _ = model.weight.add_(1.0)
        >>> bool(torch.equal(best["weight"], model.weight))
        False
    """
    source = module_or_state(model_or_state_dict, "snapshot_state")
    import copy

    return {k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in source.items()}
