"""Pairing checkpoint tensors with a model's by structure, when their names differ.

Two implementations of one architecture (lukemelas' EfficientNet and timm's, torchvision's ResNet and
timm's) usually register the same modules in the same order with the same shapes, under unrelated
names. :func:`align_by_structure` pairs them in that order, one *module* at a time: the tensors of a
module (everything before the last dot) stay together, so a BatchNorm's weight, bias, running_mean,
running_var and num_batches_tracked pair with one BatchNorm's, and a conv weight (4-d) never pairs with
a linear weight (2-d). Within a module, tensors pair by leaf name when both sides use the same leaf names,
else in order.

Only an unambiguous alignment is accepted:

* the whole sequence matches, module by module, in shape and dtype kind (floating, integer, bool);
* or it matches except for the last module, whose tensors have the same roles but other shapes (a head
  for another class count): that head is skipped for shape;
* tensors only one side has, within a paired module, are allowed when they carry no learned values
  (``num_batches_tracked``); they are listed.

Anything else raises :class:`~transferkit.errors.LoadError` naming the first place the sequences diverge
(index, both keys, both shapes), with the divergence as data on ``exc.divergence``. Nothing here writes
to a model: :func:`~transferkit.partial.load_partial` calls this before its checks, with
``align="structure"``, or with ``align="auto"`` when no name matches.

Example:
    >>> from torch import nn
    >>> src = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).state_dict()
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.stem, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
    >>> plan = align_by_structure(src, Net().state_dict())
    >>> plan.pairs["0.weight"], plan.pairs["1.running_var"]
    ('stem.weight', 'bn.running_var')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from transferkit.errors import LoadError
from transferkit.load_report import Shape, compact_keys

__all__ = ["ALIGN_MODES", "Alignment", "Divergence", "align_by_structure", "check_align_mode"]

logger = logging.getLogger(__name__)

ALIGN_MODES = ("auto", "names", "structure")

# Running statistics are buffers, not parameters: a statistic never pairs with a weight of the same shape.
_STAT_LEAVES = frozenset({"running_mean", "running_var", "moving_mean", "moving_variance"})
# Counters with no learned value: a checkpoint may lack them (older torch) and a model may lack them
# (track_running_stats=False, other implementations); leaving them unpaired loses nothing.
_COUNTER_LEAVES = frozenset({"num_batches_tracked"})


def check_align_mode(align: Any) -> str:
    """Return ``align`` when it is one of :data:`ALIGN_MODES`, else raise a ConfigError saying the choices.

    Example:
        >>> check_align_mode("auto")
        'auto'
    """
    from transferkit.errors import ConfigError

    if align not in ALIGN_MODES:
        raise ConfigError(
            f"`align` must be one of {', '.join(map(repr, ALIGN_MODES))}; got {align!r}. "
            "'auto' pairs by name and falls back to structure when no name matches",
            param="align",
        )
    return str(align)


@dataclass(frozen=True)
class _Tensor:
    key: str
    index: int  # position in its own state dict, as the user would count it
    shape: Shape
    kind: str  # "float", "int", "bool", "complex": dtypes within a kind are cast as usual

    @property
    def leaf(self) -> str:
        return self.key.rpartition(".")[2]

    @property
    def role(self) -> str:
        return "stat" if self.leaf in _STAT_LEAVES else "value"


@dataclass(frozen=True)
class _Module:
    name: str
    tensors: tuple[_Tensor, ...]  # without counters
    counters: tuple[_Tensor, ...]


@dataclass(frozen=True)
class Divergence:
    """Where two tensor sequences stop matching (``index`` counts the checkpoint's tensors from 0).

    ``model_index`` counts the model's. A side that has run out has ``None`` for its key and shape.
    """

    index: int
    model_index: int
    checkpoint_key: str | None
    model_key: str | None
    checkpoint_shape: Shape | None
    model_shape: Shape | None
    reason: str

    def __str__(self) -> str:
        def side(label: str, i: int, key: str | None, shape: Shape | None) -> str:
            if key is None:
                return f"the {label} has no tensor #{i} (it ends there)"
            return f"{label} tensor #{i} {key!r} {list(shape or ())}"

        return (
            f"{side('checkpoint', self.index, self.checkpoint_key, self.checkpoint_shape)} vs "
            f"{side('model', self.model_index, self.model_key, self.model_shape)}: {self.reason}"
        )


@dataclass(frozen=True)
class Alignment:
    """A structural pairing, proven unambiguous.

    Attributes:
        pairs: ``{checkpoint_key: model_key}`` of tensors with equal shapes (they load).
        head: ``{checkpoint_key: model_key}`` of the last module's tensors, whose shapes differ (another
            class count); they are skipped for shape.
        checkpoint_only: counters (``num_batches_tracked``) only the checkpoint has.
        model_only: counters only the model has (they keep their values).
    """

    pairs: dict[str, str] = field(default_factory=dict)
    head: dict[str, str] = field(default_factory=dict)
    checkpoint_only: list[str] = field(default_factory=list)
    model_only: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """Report lines: what was paired, and what one side lacked."""
        extent = "all but the head at the end" if self.head else "the whole sequence"
        lines = [
            f"aligned by structure: names differ, so {len(self.pairs) + len(self.head)} checkpoint tensors "
            f"were paired with the model's by order, shape and module grouping ({extent} matches)"
        ]
        if self.head:
            lines.append(
                f"aligned by structure: the last module ({', '.join(compact_keys(list(self.head.values())))}) "
                "has other shapes (another class count?) and is skipped for shape"
            )
        if self.model_only:
            lines.append(
                f"aligned by structure: the checkpoint lacks {len(self.model_only)} counter(s) the model has "
                f"({', '.join(compact_keys(self.model_only))}); they keep their values"
            )
        if self.checkpoint_only:
            lines.append(
                f"aligned by structure: the model has no place for {len(self.checkpoint_only)} checkpoint "
                f"counter(s) ({', '.join(compact_keys(self.checkpoint_only))}); left out"
            )
        return lines


def _kind(value: torch.Tensor) -> str:
    if value.dtype == torch.bool:
        return "bool"
    if value.is_complex():
        return "complex"
    return "float" if value.is_floating_point() else "int"


def _modules(state: Mapping[str, Any]) -> list[_Module]:
    """Tensors grouped by module, modules in order of their first tensor (a tied tensor counts once)."""
    groups: dict[str, list[_Tensor]] = {}
    seen: set[int] = set()
    for index, (key, value) in enumerate(state.items()):
        if not isinstance(value, torch.Tensor) or id(value) in seen:
            continue  # extra state is not a tensor; a tied tensor's second name is the same tensor
        seen.add(id(value))
        groups.setdefault(key.rpartition(".")[0], []).append(
            _Tensor(key, index, tuple(value.shape), _kind(value))
        )
    out = []
    for name, tensors in groups.items():
        counters = tuple(t for t in tensors if t.leaf in _COUNTER_LEAVES)
        out.append(_Module(name, tuple(t for t in tensors if t.leaf not in _COUNTER_LEAVES), counters))
    return out


def _ordered(a: _Module, b: _Module) -> tuple[tuple[_Tensor, ...], tuple[_Tensor, ...]]:
    """Both modules' tensors in pairing order: by leaf name where both use the same names, else as listed."""
    names_a, names_b = [t.leaf for t in a.tensors], [t.leaf for t in b.tensors]
    if sorted(names_a) == sorted(names_b) and len(set(names_a)) == len(names_a):
        by_leaf = {t.leaf: t for t in b.tensors}
        return a.tensors, tuple(by_leaf[n] for n in names_a)
    return a.tensors, b.tensors


def _difference(x: _Tensor, y: _Tensor) -> str:
    """Why two tensors cannot pair; empty when they can (equal shapes, or a head's other class count)."""
    if x.role != y.role:
        return "a running statistic would pair with a weight"
    if x.kind != y.kind:
        return f"dtypes of another kind ({x.kind} vs {y.kind})"
    if len(x.shape) != len(y.shape):
        return f"{len(x.shape)}-d vs {len(y.shape)}-d (another kind of layer)"
    # another class count changes a head's outputs (dim 0) only; any other difference is another layer
    return "shapes differ" if x.shape[1:] != y.shape[1:] else ""


def _compare(a: _Module, b: _Module) -> tuple[str, int, str]:
    """``("same" | "reshaped" | "different", position of the first difference, why)`` for two modules."""
    ta, tb = _ordered(a, b)
    if len(ta) != len(tb):
        return "different", 0, f"module {a.name!r} has {len(ta)} tensor(s), {b.name!r} has {len(tb)}"
    reshaped = None
    for i, (x, y) in enumerate(zip(ta, tb)):
        why = _difference(x, y)
        if why:
            return "different", i, why
        if x.shape != y.shape and reshaped is None:
            reshaped = i
    return ("same", -1, "") if reshaped is None else ("reshaped", reshaped, "shapes differ")


def _embeddings(short: Sequence[_Module], long: Sequence[_Module], cap: int = 100) -> int:
    """How many ways ``short`` fits into ``long`` as a subsequence of matching modules (capped)."""
    ways = [1] * (len(long) + 1)  # ways[j]: the first i modules of short within the first j of long
    for i, s in enumerate(short):
        new = [0] * (len(long) + 1)
        for j in range(1, len(long) + 1):
            new[j] = new[j - 1]
            if j - 1 >= i and _compare(s, long[j - 1])[0] == "same":
                new[j] = min(cap, new[j] + ways[j - 1])
        ways = new
    return ways[len(long)]


def _first_tensor(module: _Module) -> _Tensor | None:
    return (module.tensors or module.counters or (None,))[0]


def _divergence(ckpt: Sequence[_Module], model: Sequence[_Module], g: int) -> Divergence:
    """The first tensor where module ``g`` of each side differs (or where one side runs out)."""
    if g >= len(ckpt) or g >= len(model):
        mine = ckpt[g] if g < len(ckpt) else None
        theirs = model[g] if g < len(model) else None
        x = _first_tensor(mine) if mine else None
        y = _first_tensor(theirs) if theirs else None
        last_x = ckpt[-1].tensors[-1] if ckpt and ckpt[-1].tensors else None
        last_y = model[-1].tensors[-1] if model and model[-1].tensors else None
        return Divergence(
            x.index if x else (last_x.index + 1 if last_x else 0),
            y.index if y else (last_y.index + 1 if last_y else 0),
            x.key if x else None,
            y.key if y else None,
            x.shape if x else None,
            y.shape if y else None,
            f"the checkpoint has {len(ckpt)} modules with tensors, the model {len(model)}",
        )
    _, pos, why = _compare(ckpt[g], model[g])
    ta, tb = _ordered(ckpt[g], model[g])
    x, y = ta[pos], tb[pos]
    return Divergence(x.index, y.index, x.key, y.key, x.shape, y.shape, why)


def _why_not(ckpt: Sequence[_Module], model: Sequence[_Module], div: Divergence) -> str:
    """The sentence after the divergence: is it another architecture, or a checkpoint with gaps?"""
    if len(ckpt) == len(model):
        return "the two are not the same architecture at this point (another width or layer type?)"
    short, long, side = (ckpt, model, "checkpoint") if len(ckpt) < len(model) else (model, ckpt, "model")
    ways = _embeddings(short, long)
    extra = len(long) - len(short)
    if ways >= 2:
        shown = f"{ways}+" if ways >= 100 else str(ways)
        return (
            f"the {side} has {extra} fewer module(s) and {shown} different pairings would fit it by leaving "
            "out different ones: the alignment is ambiguous, so none is chosen"
        )
    if ways == 1:
        return (
            f"the {side} has {extra} fewer module(s); one pairing would fit by leaving some out, but only a "
            "whole sequence is aligned automatically (a model with extra layers?)"
        )
    return f"the {side} has {extra} fewer module(s) and no pairing fits (another depth or architecture?)"


def _sorted_hint(state: Mapping[str, Any]) -> str:
    keys = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    if len(keys) > 2 and keys == sorted(keys) and any(".10." in k or ".2." in k for k in keys):
        return (
            " The checkpoint's keys are in alphabetical order (safetensors files store them so), so their "
            "order says nothing about the architecture."
        )
    return ""


def align_by_structure(checkpoint: Mapping[str, Any], model_state: Mapping[str, Any]) -> Alignment:
    """Pair ``checkpoint`` tensors with ``model_state``'s by order, shape and module grouping.

    Args:
        checkpoint: ``{key: tensor}`` in the order the source implementation lists them (non-tensor
            values such as extra state are left out).
        model_state: the model's ``state_dict(keep_vars=True)`` (or any ``{key: tensor}`` in its order).

    Returns:
        The :class:`Alignment`.

    Raises:
        LoadError: the sequences diverge, or more than one pairing would fit; the message names the first
            divergence (index, both keys, both shapes) and ``exc.divergence`` holds it as a
            :class:`Divergence`.

    Example:
        >>> a = {"enc.w": torch.ones(2, 3), "enc.b": torch.ones(2)}
        >>> align_by_structure(a, {"lin.weight": torch.ones(2, 3), "lin.bias": torch.ones(2)}).pairs
        {'enc.w': 'lin.weight', 'enc.b': 'lin.bias'}
    """
    ckpt, model = _modules(checkpoint), _modules(model_state)
    verdicts = [_compare(a, b) for a, b in zip(ckpt, model)]
    last = len(ckpt) - 1
    bad = next(
        (
            g
            for g, (verdict, _, _) in enumerate(verdicts)
            if verdict == "different" or (verdict == "reshaped" and g != last)
        ),
        None,
    )
    if bad is None and len(ckpt) != len(model):
        bad = min(len(ckpt), len(model))
    if bad is None and not ckpt:
        bad = 0
    if bad is not None:
        div = _divergence(ckpt, model, bad)
        exc = LoadError(
            f"cannot align the checkpoint with the model by structure: the sequences diverge at {div}; "
            f"{_why_not(ckpt, model, div)}. Nothing was written.{_sorted_hint(checkpoint)} Structural "
            "alignment only pairs a whole sequence (or all but a reshaped head at the end); for anything "
            "else write rename rules (`rules`)"
        )
        exc.divergence = div  # type: ignore[attr-defined]  # structured, for callers that act on it
        raise exc
    plan = Alignment()
    for g, (a, b) in enumerate(zip(ckpt, model)):
        ta, tb = _ordered(a, b)
        target = plan.head if verdicts[g][0] == "reshaped" else plan.pairs
        target.update({x.key: y.key for x, y in zip(ta, tb)})
        # counters pair when both sides have them; otherwise the side that has them lists them
        for x, y in zip(a.counters, b.counters):
            plan.pairs[x.key] = y.key
        plan.checkpoint_only.extend(x.key for x in a.counters[len(b.counters) :])
        plan.model_only.extend(y.key for y in b.counters[len(a.counters) :])
    logger.debug("aligned %d checkpoint tensors by structure", len(plan.pairs) + len(plan.head))
    return plan
