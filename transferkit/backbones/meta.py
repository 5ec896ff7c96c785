"""Fast construction: build a network on the ``meta`` device, and give real tensors only to what a
checkpoint does not cover, initialised the way the network's own constructor initialises them.

A meta build allocates nothing and runs no initialisation, so loading a checkpoint with ``assign=True``
costs only the reading of the file. What the checkpoint lacks (a new head, a missing tensor, BatchNorm
statistics) must then be created *with the constructor's initialisation*: torchvision draws a VGG head
from ``normal(0, 0.01)``, timm a ViT head from ``trunc_normal(0.02)`` with a zero bias, neither of which
``reset_parameters()`` reproduces.

How: every tensor factory call (``torch.empty``, ``torch.zeros``, ...) of the constructor is routed by
:class:`FactoryRouter` and numbered. After loading, the tensors still on meta are traced back to the
factory calls that created them, and the constructor is run once more on meta, with *only those calls*
on the CPU: the constructor's own initialisation code then fills exactly those tensors (initialising a
meta tensor is a no-op), and they are moved into the loaded network. The values follow the same
distribution as a normal build (not the same random draws: a normal build consumes the random stream
for every layer first).

Tensors that no factory call created directly (a head replaced after construction, a conv adapted to
other input channels) fall back to :func:`materialize_defaults`: the family's head initialisation from
:data:`~transferkit.backbones.heads.HEADS`, ``reset_running_stats()`` for BatchNorm, else
``reset_parameters()``. A network where neither works is rebuilt the normal way by the caller.

Example:
    >>> from torch import nn
    >>> net, rec = build_on_meta(lambda: nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), {})
    >>> net[0].weight.is_meta, rec.calls
    (True, 7)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from transferkit.backbones.head_surgery import new_head_like
from transferkit.backbones.heads import HeadInfo, get_module, set_module

__all__ = ["FactoryRouter", "Recording", "build_on_meta", "meta_safe", "replay_init", "materialize_defaults"]

logger = logging.getLogger(__name__)


def _constructors() -> frozenset[Callable[..., Any]]:
    # the functions torch.device("meta") itself redirects; private, so keep a fallback for other versions
    try:
        from torch.utils._device import _device_constructors

        return frozenset(_device_constructors())
    except (ImportError, AttributeError):  # pragma: no cover - depends on the torch version
        names = ("empty", "zeros", "ones", "full", "rand", "randn", "randint", "arange", "tensor", "eye")
        return frozenset(getattr(torch, n) for n in names)


_CONSTRUCTORS = _constructors()


class FactoryRouter(TorchFunctionMode):
    """Put each tensor factory call without an explicit ``device`` on meta, or on the CPU when its call
    number is in ``real``; remember every call's output (a meta build costs no memory)."""

    def __init__(self, real: Iterable[int] = ()) -> None:
        super().__init__()
        self.real = frozenset(real)
        self.outputs: list[Any] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _CONSTRUCTORS and kwargs.get("device") is None:
            device = "cpu" if len(self.outputs) in self.real else "meta"
            out = func(*args, **{**kwargs, "device": device})
            self.outputs.append(out)
            return out
        return func(*args, **kwargs)


@dataclass
class Recording:
    """What a meta build created: the number of factory calls, and each call's storage -> call number."""

    calls: int
    storage_to_call: dict[int, int]
    # the meta outputs stay referenced, so no later tensor can reuse a recorded storage's address
    outputs: list[Any] = field(default_factory=list, repr=False)

    def call_of(self, tensor: Tensor) -> int | None:
        """The factory call whose output ``tensor`` is (or views), or ``None``."""
        return self.storage_to_call.get(_storage_id(tensor))


def _storage_id(t: Tensor) -> int:
    return t.untyped_storage()._cdata


def build_on_meta(builder: Callable[..., nn.Module], kwargs: dict[str, Any]) -> tuple[nn.Module, Recording]:
    """Build ``builder(**kwargs)`` with every factory call on meta, recording the calls."""
    router = FactoryRouter()
    with router:
        net = builder(**kwargs)
    storage = {}
    for i, out in enumerate(router.outputs):
        if isinstance(out, Tensor):
            storage.setdefault(_storage_id(out), i)
    return net, Recording(len(router.outputs), storage, router.outputs)


def meta_safe(net: nn.Module) -> bool:
    """False when the network holds tensors a checkpoint cannot restore (non-persistent buffers, plain
    tensor attributes computed in ``__init__``)."""
    for m in net.modules():
        if m._non_persistent_buffers_set:
            return False
        if any(isinstance(v, Tensor) for v in vars(m).values()):
            return False
    return True


def _meta_tensors(net: nn.Module) -> list[tuple[str, nn.Module, str, bool, Tensor]]:
    """``(qualified name, owner module, local name, is_parameter, tensor)`` for every tensor on meta."""
    found = []
    for mod_name, mod in net.named_modules():
        for is_param, table in ((True, mod._parameters), (False, mod._buffers)):
            for local, t in table.items():
                if t is not None and t.is_meta:
                    found.append((f"{mod_name}.{local}" if mod_name else local, mod, local, is_param, t))
    return found


def replay_init(
    net: nn.Module, builder: Callable[..., nn.Module], kwargs: dict[str, Any], recording: Recording
) -> list[str]:
    """Give the tensors of ``net`` still on meta their constructor's initialisation, where they came
    straight from a factory call of the constructor (see the module docstring).

    Returns:
        The qualified names materialised; tensors it cannot trace are left on meta.
    """
    pending = [(entry, recording.call_of(entry[4])) for entry in _meta_tensors(net)]
    pending = [(entry, call) for entry, call in pending if call is not None]
    if not pending:
        return []
    router = FactoryRouter(real={call for _, call in pending})
    try:
        with router:
            again = builder(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a constructor mixing real and meta tensors: use the fallbacks
        logger.debug(
            "replaying the constructor with real tensors failed (%s); using default initialisation", exc
        )
        return []
    if len(router.outputs) != recording.calls:
        logger.debug("the constructor's factory calls changed between builds; using default initialisation")
        return []
    again_tensors = {name: t for name, t in _named_tensors(again)}
    done = []
    for (name, mod, local, is_param, old), _ in pending:
        new = again_tensors.get(name)
        if new is None or new.is_meta or new.shape != old.shape or new.dtype != old.dtype:
            continue
        if is_param:
            param = new if isinstance(new, nn.Parameter) else nn.Parameter(new)
            param.requires_grad_(old.requires_grad)
            mod._parameters[local] = param
        else:
            mod._buffers[local] = new
        done.append(name)
    if done:
        logger.info("initialised %d tensor(s) the checkpoint lacks as the constructor does", len(done))
    return done


def _named_tensors(net: nn.Module) -> Iterable[tuple[str, Tensor]]:
    for mod_name, mod in net.named_modules():
        for table in (mod._parameters, mod._buffers):
            for local, t in table.items():
                if t is not None:
                    yield (f"{mod_name}.{local}" if mod_name else local), t


def materialize_defaults(net: nn.Module, info: HeadInfo) -> bool:
    """Create and initialise what is still on meta by each module's own rules.

    Heads get the family's initialisation (:class:`~transferkit.backbones.heads.HeadInfo`), BatchNorm
    statistics ``reset_running_stats()``, anything else ``reset_parameters()``.

    Returns:
        False when something cannot be initialised that way (the caller then builds normally).
    """
    for path in (info.main, *info.aux):
        head = get_module(net, path)
        if any(p.is_meta for p in head.parameters()):
            set_module(net, path, new_head_like(head, head.weight.shape[0], info.init, device="cpu"))
    for name, mod in net.named_modules():
        own = {
            **{f"p:{k}": v for k, v in mod._parameters.items()},
            **{f"b:{k}": v for k, v in mod._buffers.items()},
        }
        metas = [k for k, v in own.items() if v is not None and v.is_meta]
        if not metas:
            continue
        is_norm = isinstance(mod, nn.modules.batchnorm._NormBase)
        if any(k.startswith("b:") for k in metas) and not is_norm:
            return False  # a buffer only the constructor knows how to compute
        reset = getattr(mod, "reset_parameters", None)
        if any(k.startswith("p:") for k in metas) and not callable(reset):
            return False
        real = {k: v for k, v in own.items() if v is not None and not v.is_meta}
        mod.to_empty(device="cpu", recurse=False)
        if callable(reset):
            reset()
        elif is_norm:
            mod.reset_running_stats()
        for k, v in real.items():  # keep what the checkpoint gave
            (mod._parameters if k.startswith("p:") else mod._buffers)[k[2:]] = v
        logger.info(
            "initialised %s (%s) with its defaults", name or "<root>", ", ".join(k[2:] for k in metas)
        )
    return True
