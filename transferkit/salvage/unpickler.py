"""The restricted unpickler: every opcode that could import, call or mutate something goes through checks.

Globals resolve through :data:`~transferkit.salvage.allowlist._ALLOWED` or become fresh placeholder
classes; calls go through :func:`~transferkit.salvage.allowlist._call`; ``BUILD``, ``APPEND(S)``,
``SETITEM(S)`` and ``ADDITEMS`` only touch plain containers and placeholders. :func:`plain_load` reads the
small bookkeeping pickles of legacy files, which may name no globals at all.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import logging
import pickle
from collections.abc import Callable
from typing import Any

import torch

from transferkit.salvage.allowlist import ALLOWED, Allowed, Refused, call_allowed, checked_view
from transferkit.salvage.placeholders import Placeholder, is_placeholder_class

__all__ = ["SalvageUnpickler", "plain_load"]

# One logger for the whole package: "transferkit.salvage" is what users see in CLI log lines.
logger = logging.getLogger("transferkit.salvage")

# A file naming more distinct globals than this is not a checkpoint; each placeholder class costs memory.
_MAX_GLOBALS = 10_000


class SalvageUnpickler(pickle._Unpickler):
    """Restricted unpickler. Built on the pure-Python unpickler on purpose: its memo is a dict (the C
    one preallocates a list sized by the largest memo index a file names) and every opcode that could
    call, import or mutate something is overridden below."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, stream: io.BytesIO, persistent: Callable[[Any], Any] | None) -> None:
        # An in-memory stream: a declared length beyond the end yields short reads, never a huge allocation.
        super().__init__(stream, encoding="utf-8")
        self._persistent = persistent
        self._placeholders: dict[str, type[Placeholder]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 spellings, e.g. __builtin__.set
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        target = f"{module}.{name}"
        if target in ALLOWED:
            return ALLOWED[target]
        if target not in self._placeholders:
            if len(self._placeholders) >= _MAX_GLOBALS:
                raise Refused(f"the file names more than {_MAX_GLOBALS} distinct globals")
            self._placeholders[target] = Placeholder._subclass_for(target)
        return self._placeholders[target]

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise Refused("unexpected persistent id in a plain pickle")
        return self._persistent(pid)

    def get_extension(self, code: int) -> None:
        # The stdlib version consults and fills copyreg's process-wide cache, bypassing find_class.
        raise Refused(f"pickle extension code {code} is not supported")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        if type(args) is not tuple:
            raise Refused(f"REDUCE arguments must be a tuple, found {type(args).__name__}")
        self.stack[-1] = call_allowed(self.stack[-1], args, {})

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _new(self, cls: Any, args: Any, kwargs: Any) -> None:
        if type(args) is not tuple or type(kwargs) is not dict:
            raise Refused("NEWOBJ arguments must be a tuple (and a dict)")
        if is_placeholder_class(cls):
            self.append(cls.__new__(cls, *args, **kwargs))
        elif isinstance(cls, Allowed):
            self.append(cls(*args, **kwargs))
        else:
            raise Refused(f"NEWOBJ on a {type(cls).__name__} object is not allowed")

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self._new(self.stack.pop(), args, {})

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        self._new(self.stack.pop(), args, kwargs)

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ
        self.append(call_allowed(klass, tuple(args), {}))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Placeholder):
            inst.__setstate__(state)
        elif type(inst) is collections.OrderedDict and isinstance(state, dict):
            # A state_dict carries ``_metadata`` this way; only plain string attribute names.
            if not all(type(k) is str and not k.startswith("__") for k in state):
                raise Refused("BUILD on an OrderedDict with non-attribute keys")
            # names of OrderedDict's own methods (items, keys, get ...) would shadow them on the instance
            shadowing = sorted(k for k in state if hasattr(collections.OrderedDict, k))
            if shadowing:
                logger.warning(
                    "salvage dropped attributes that would shadow OrderedDict methods: %s", shadowing
                )
            inst.__dict__.update((k, v) for k, v in state.items() if k not in shadowing)
        elif isinstance(inst, torch.Tensor) and isinstance(state, tuple) and len(state) == 4:
            inst.set_(checked_view(*state))  # legacy tensor state: (storage, offset, size, stride)
        elif isinstance(inst, torch.Tensor):
            logger.debug("salvage ignored BUILD state on a tensor: %s", type(state).__name__)
        else:
            raise Refused(f"BUILD (setting state) on a {type(inst).__name__} object is not allowed")

    dispatch[pickle.BUILD[0]] = load_build

    def load_append(self) -> None:
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._extend(self.stack[-1], items)

    dispatch[pickle.APPENDS[0]] = load_appends

    @staticmethod
    def _extend(target: Any, items: list) -> None:
        if type(target) is list or isinstance(target, Placeholder):
            target.extend(items)
        else:
            raise Refused(f"APPEND on a {type(target).__name__} object is not allowed")

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._setitems(self.stack[-1], [key, value])

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._setitems(self.stack[-1], items)

    dispatch[pickle.SETITEMS[0]] = load_setitems

    @staticmethod
    def _setitems(target: Any, items: list) -> None:
        if type(target) not in (dict, collections.OrderedDict) and not isinstance(target, Placeholder):
            raise Refused(f"SETITEM on a {type(target).__name__} object is not allowed")
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is set:
            target.update(items)
        elif isinstance(target, Placeholder):
            target.extend(items)
        else:
            raise Refused(f"ADDITEMS on a {type(target).__name__} object is not allowed")

    dispatch[pickle.ADDITEMS[0]] = load_additems


def plain_load(stream: io.BytesIO) -> Any:
    """Unpickle one bookkeeping pickle (legacy header, key list) from ``stream``; it may name no globals."""
    unpickler = SalvageUnpickler(stream, None)
    result = unpickler.load()
    if unpickler._placeholders:
        raise Refused(f"a bookkeeping pickle names globals: {sorted(unpickler._placeholders)}")
    return result
