"""Salvage tensors from checkpoints that ``weights_only=True`` refuses, without running code from the file.

A pickle is a small program: each ``GLOBAL`` names an importable object and ``REDUCE``/``NEWOBJ``/``INST``/
``OBJ``/``BUILD`` call it or feed it state. Many real checkpoints are refused by ``torch.load(weights_only=True)``
only because of harmless extras (a Lightning callback object, a pickled ``nn.Module``, ``argparse.Namespace``,
NumPy scalars). :func:`salvage_load` reads such files with a restricted unpickler:

* a short allow-list of pure constructors (torch's tensor rebuild functions re-implemented here with bounds
  checks, storage types, dtypes, ``torch.Size``, ``OrderedDict``, ``set`` ...) maps to real objects;
* every other global becomes a :class:`Placeholder` subclass that records its dotted name and, when the
  pickle "calls" it or gives it state, records the arguments and state; nothing from the file is imported,
  called or looked up with ``getattr``;
* storages are read from the zip members (or the raw bytes of a legacy pre-1.6 file) and moved with
  ``map_location``.

The tensors come out; :func:`find_placeholders` lists what was replaced.

Example:
    >>> import tempfile, argparse, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "ckpt.pt"
    >>> torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, path)
    >>> obj = salvage_load(path)
    >>> obj["w"]
    tensor([1., 1.])
    >>> find_placeholders(obj)
    ['argparse.Namespace']
    >>> obj["args"].state
    {'lr': 0.1}
"""

from __future__ import annotations

import _compat_pickle
import collections
import copy
import io
import logging
import os
import pickle
import reprlib
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from transferkit.errors import CheckpointError, TransferkitError

__all__ = ["Placeholder", "find_placeholders", "module_state_dict", "salvage_load"]

logger = logging.getLogger(__name__)

# Legacy (pre-1.6, non-zip) torch files start with these two pickled integers.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# A file naming more distinct globals than this is not a checkpoint; each placeholder class costs memory.
_MAX_GLOBALS = 10_000

# Torch writes storages uncompressed; a re-zipped file may deflate them, but not by more than this.
_MAX_RATIO = 1000

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxtuple = 60, 60, 3

MapLocation = str | torch.device | dict[str, str] | Callable[..., Any] | None


# ----------------------------------------------------------------------------------------------------------
# Placeholders: what every unknown global turns into.
# ----------------------------------------------------------------------------------------------------------


class _PlaceholderMeta(type):
    """Metaclass that makes placeholder classes read-only, so a pickle cannot patch them."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise TypeError(f"placeholder class for {cls.target!r} is read-only")

    def __repr__(cls) -> str:
        return f"<placeholder class {cls.target}>"


class Placeholder(metaclass=_PlaceholderMeta):
    """An inert stand-in for a global that salvage refused to import.

    Salvage generates one subclass per refused global; its ``target`` is the dotted name the file asked
    for (e.g. ``"__main__.Backbone"``). Calling the class or an instance never runs anything: it only
    records what the pickle passed.

    Attributes:
        target: the dotted name of the global this stands for (class attribute).
        args: positional arguments the pickle "called" it with.
        kwargs: keyword arguments (``NEWOBJ_EX`` only).
        state: what the last ``BUILD`` gave it (usually the object's ``__dict__``), or ``None``.
        states: every ``BUILD`` state in order (a pickle may BUILD the same object more than once).
        items: ``(key, value)`` pairs set by ``SETITEM(S)``.
        listitems: values added by ``APPEND(S)``/``ADDITEMS``.
        called_on: for a placeholder produced by calling another placeholder instance, that instance.

    Example:
        >>> cls = Placeholder._subclass_for("os.system")
        >>> p = cls("touch /tmp/x")
        >>> p.args, find_placeholders(p)
        (('touch /tmp/x',), ['os.system'])
    """

    __slots__ = ("args", "kwargs", "state", "states", "items", "listitems", "called_on")
    target: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        self = object.__new__(cls)
        # object.__setattr__ because instances are recorded once here; the pickle never sets attributes.
        for name, value in (("args", args), ("kwargs", kwargs), ("state", None), ("called_on", None)):
            object.__setattr__(self, name, value)
        for name in ("states", "items", "listitems"):
            object.__setattr__(self, name, [])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept and ignore constructor arguments (``__new__`` already recorded them)."""

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)
        self.states.append(state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        """Record an ``APPEND``."""
        self.listitems.append(value)

    def extend(self, values: Any) -> None:
        """Record an ``APPENDS`` (``values`` is always a list built by the unpickler)."""
        self.listitems.extend(values)

    def add(self, value: Any) -> None:
        """Record an ``ADDITEMS`` element."""
        self.listitems.append(value)

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        # e.g. the result of a refused ``getattr(os, "system")`` being called: record, never run.
        result = type(self)(*args, **kwargs)
        object.__setattr__(result, "called_on", self)
        return result

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"placeholder for {self.target!r} is read-only")

    def __copy__(self) -> Placeholder:
        return self._clone(lambda value: value)

    def __deepcopy__(self, memo: dict[int, Any]) -> Placeholder:
        return self._clone(lambda value: copy.deepcopy(value, memo))

    def _clone(self, copier: Callable[[Any], Any]) -> Placeholder:
        clone = type(self)(*copier(self.args), **copier(self.kwargs))
        for name in ("state", "states", "items", "listitems", "called_on"):
            object.__setattr__(clone, name, copier(getattr(self, name)))
        return clone

    def __reduce__(self) -> Any:
        raise TypeError(
            f"cannot pickle a salvage placeholder for {self.target!r}; drop it (find_placeholders lists "
            "where they are) before saving"
        )

    def __repr__(self) -> str:
        text = f"<placeholder {self.target}{_REPR.repr(self.args)}"
        if self.state is not None:
            text += " with state"
        return text + ">"

    @classmethod
    def _subclass_for(cls, target: str) -> type[Placeholder]:
        """A fresh, read-only placeholder class standing for ``target``."""
        short = target.rsplit(".", 1)[-1]
        name = short if short.isidentifier() else "Refused"
        return _PlaceholderMeta(name, (cls,), {"__slots__": (), "target": target, "__module__": __name__})


def _is_placeholder_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, Placeholder)


def find_placeholders(obj: Any) -> list[str]:
    """List the dotted names of the globals that salvage replaced, anywhere inside ``obj``.

    Walks dicts (keys and values), lists, tuples, sets, object ``__dict__`` s of plain containers, and the
    recorded arguments and state of placeholders; shared and cyclic references are visited once.

    Args:
        obj: a result of :func:`salvage_load` (or any part of one).

    Returns:
        Sorted unique names such as ``["__main__.Backbone", "argparse.Namespace"]``; empty when nothing
        was replaced.

    Example:
        >>> find_placeholders({"a": [1, 2], "b": "text"})
        []
    """
    found: set[str] = set()
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, str | bytes | int | float | bool | complex | torch.Tensor):
            continue
        seen.add(id(item))
        if _is_placeholder_class(item):
            found.add(item.target)
        elif isinstance(item, Placeholder):
            found.add(item.target)
            stack.extend((item.args, item.kwargs, item.states, item.items, item.listitems, item.called_on))
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
            stack.extend(getattr(item, "__dict__", {}).values())  # e.g. a state dict's ``_metadata``
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return sorted(found)


def module_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The ``state_dict()`` a pickled ``nn.Module`` would give, rebuilt from its inert placeholder.

    ``torch.save(model)`` pickles the module object itself; salvage turns it (and every submodule) into a
    placeholder whose recorded state holds ``_parameters``, ``_buffers`` and ``_modules``. This walks them
    in ``nn.Module.state_dict`` order, skipping non-persistent buffers, without calling anything.

    Args:
        obj: a placeholder for a module (e.g. ``salvage_load("model.pt")`` of a whole-model pickle).

    Returns:
        ``{"0.weight": tensor, ...}``; empty when ``obj`` is not a pickled module.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "whole.pt"
        >>> torch.save(torch.nn.Sequential(torch.nn.Linear(2, 3)), path)
        >>> list(module_state_dict(salvage_load(path)))
        ['0.weight', '0.bias']
    """
    result: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, Any]] = [("", obj)]
    seen: set[int] = set()
    while stack:
        prefix, node = stack.pop()
        state = node.state if isinstance(node, Placeholder) else None
        if not isinstance(state, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        skip = state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, value in (state.get(group) or {}).items():
                if isinstance(value, torch.Tensor) and not (group == "_buffers" and name in skip):
                    result[f"{prefix}{name}"] = value.detach()  # as state_dict() gives them
        children = list((state.get("_modules") or {}).items())
        stack.extend((f"{prefix}{name}.", child) for name, child in reversed(children))
    return result


# ----------------------------------------------------------------------------------------------------------
# The allow-list: pure constructors, re-implemented with argument checks where torch's own would trust input.
# ----------------------------------------------------------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """The pickle asked for something salvage will not do; becomes a CheckpointError with the path."""


class _Allowed:
    """An allow-listed callable: the only kind of object (besides placeholders) the unpickler calls."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<allowed {self.name}>"


class _StorageType:
    """What ``torch.FloatStorage`` & co. unpickle to: just a dtype; never callable (no allocation)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


def _typed(untyped: torch.UntypedStorage, dtype: torch.dtype) -> torch.storage.TypedStorage:
    """What persistent ids resolve to, as in torch.load (BUILD on it is refused, so it stays as made)."""
    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "QUInt8Storage": torch.quint8,
    "QInt8Storage": torch.qint8,
    "QInt32Storage": torch.qint32,
    "QUInt4x2Storage": torch.quint4x2,
    "QUInt2x4Storage": torch.quint2x4,
    "UntypedStorage": torch.uint8,
}


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise _Refused(f"{what} must be an int, found {type(value).__name__}")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list):
        raise _Refused(f"{what} must be a tuple of ints, found {type(value).__name__}")
    return tuple(_int(v, what) for v in value)


def _dtype(value: Any) -> torch.dtype:
    if not isinstance(value, torch.dtype):
        raise _Refused(f"expected a torch dtype, found {type(value).__name__}")
    return value


def _view(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A tensor over ``storage`` after checking that every element it addresses lies inside the storage."""
    if type(storage) is not torch.storage.TypedStorage:
        raise _Refused(
            f"a tensor's storage must come from the file's storages, found {type(storage).__name__}"
        )
    untyped = storage._untyped_storage
    dtype = storage.dtype if dtype is None else _dtype(dtype)
    offset, size, stride = _int(offset, "storage offset"), _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
        raise _Refused(f"invalid tensor geometry: offset {offset}, size {size}, stride {stride}")
    available = untyped.nbytes() // dtype.itemsize
    needed = 0 if 0 in size else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if needed > available:
        raise _Refused(
            f"a tensor of size {list(size)} (stride {list(stride)}, offset {offset}) needs {needed} elements "
            f"but its storage holds {available}"
        )
    tensor = torch.empty((0,), dtype=dtype, device=untyped.device)
    return tensor.set_(untyped, offset, size, stride)


def _finish(tensor: torch.Tensor, requires_grad: Any, metadata: Any = None) -> torch.Tensor:
    # Backward hooks saved in old files are deliberately dropped: they would be file-supplied callables.
    if (
        isinstance(metadata, dict)
        and metadata
        and set(metadata) <= {"conj", "neg"}
        and all(type(v) is bool for v in metadata.values())
    ):
        torch._utils.set_tensor_metadata(tensor, metadata)
    if requires_grad is True and (tensor.is_floating_point() or tensor.is_complex()):
        tensor.requires_grad_(True)
    return tensor


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor:
    return _view(storage, offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any = None
) -> torch.Tensor:
    return _finish(_view(storage, offset, size, stride), requires_grad, metadata)


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> torch.Tensor:
    return _finish(_view(storage, offset, size, stride, dtype), requires_grad, metadata)


def _parameter(data: Any = None, requires_grad: Any = True, *ignored: Any) -> torch.nn.Parameter:
    if data is None:
        data = torch.empty(0)
    if not isinstance(data, torch.Tensor):
        raise _Refused(f"a Parameter's data must be a tensor, found {type(data).__name__}")
    trainable = requires_grad is True and (data.is_floating_point() or data.is_complex())
    return torch.nn.Parameter(data, requires_grad=trainable)


def _rebuild_meta_tensor_no_storage(dtype: Any, size: Any, stride: Any, requires_grad: Any) -> torch.Tensor:
    return torch.empty_strided(
        _ints(size, "size"), _ints(stride, "stride"), dtype=_dtype(dtype), device="meta"
    )


def _tensor_type(*args: Any, **kwargs: Any) -> Any:
    raise _Refused("the file calls torch.Tensor(...) directly; salvage only rebuilds tensors from storages")


_TENSOR = _Allowed("torch.Tensor", _tensor_type)
_PARAMETER = _Allowed("torch.nn.parameter.Parameter", _parameter)


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    """Tensor subclasses and tensors with Python attributes; only Parameter survives as a subclass."""
    if not isinstance(args, tuple):
        raise _Refused(f"rebuild arguments must be a tuple, found {type(args).__name__}")
    result = _call(func, args, {})
    if new_type is _PARAMETER and isinstance(result, torch.Tensor):
        result = _parameter(result, result.requires_grad)
    if isinstance(state, dict) and state:
        # Attributes like ``t.foo = 1`` would need setattr with file-chosen names on a live tensor.
        logger.debug(
            "salvage dropped %d Python attribute(s) of a tensor: %s", len(state), sorted(map(str, state))
        )
    return result


def _sized(fn: Callable[..., Any], pairs: bool = False) -> Callable[..., Any]:
    """Wrap a container constructor so it only consumes containers the pickle itself built.

    Iterating a file-made tensor could take forever (a stride-0 view may claim 10**12 elements). With
    ``pairs`` (``dict``, ``OrderedDict``) each element of a list/tuple argument is unpacked as a key/value
    pair, which iterates it too, so every element must itself be a 2-item list or tuple.
    """

    def build(*args: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], list | tuple | dict | set | frozenset)):
            raise _Refused(
                f"{fn.__name__}() accepts one list/tuple/dict here, found {[type(a).__name__ for a in args]}"
            )
        if pairs and args and not isinstance(args[0], dict):
            bad = next(
                (item for item in args[0] if not (isinstance(item, list | tuple) and len(item) == 2)), None
            )
            if bad is not None or isinstance(args[0], set | frozenset):
                found = type(args[0]).__name__ if bad is None else type(bad).__name__
                raise _Refused(f"{fn.__name__}() accepts (key, value) pairs here, found a {found}")
        return fn(*args)

    return build


def _bytes_like(kind: type) -> Callable[..., Any]:
    def build(data: Any = b"", encoding: Any = None, *rest: Any) -> Any:
        if isinstance(data, str) and encoding in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
            return kind(data.encode(encoding))
        if isinstance(data, bytes | bytearray) and encoding is None:
            return kind(data)
        raise _Refused(f"{kind.__name__}() accepts bytes or (str, encoding) here")  # never an int size

    return build


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Protocol-2 pickles spell ``bytes`` as _codecs.encode(str, "latin1"); other codecs would import modules.
    if isinstance(text, str) and encoding in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        return text.encode(encoding, "strict")
    raise _Refused(f"_codecs.encode is only allowed with latin1/utf-8/ascii text, found {encoding!r}")


def _number(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if len(args) > 2 or not all(isinstance(a, int | float | complex | str) for a in args):
            raise _Refused(f"{kind.__name__}() accepts numbers or a string here")
        return kind(*args)

    return build


def _device(*args: Any) -> torch.device:
    if not args or not all(isinstance(a, str | int) for a in args):
        raise _Refused("torch.device() accepts a string (and an index) here")
    return torch.device(*args)


def _size(*args: Any) -> torch.Size:
    return torch.Size(_ints(args[0], "torch.Size") if args else ())


def _slice(*args: Any) -> slice:
    if not all(a is None or type(a) is int for a in args):
        raise _Refused("slice() accepts ints or None here")
    return slice(*args)


def _allowed_globals() -> dict[str, Any]:
    table: dict[str, Any] = {}

    def allow(name: str, fn: Callable[..., Any]) -> None:
        table[name] = _Allowed(name, fn)

    for name, fn in {
        "collections.OrderedDict": _sized(collections.OrderedDict, pairs=True),
        "builtins.set": _sized(set),
        "builtins.frozenset": _sized(frozenset),
        "builtins.list": _sized(list),
        "builtins.dict": _sized(dict, pairs=True),
        "builtins.tuple": _sized(tuple),
        "builtins.complex": _number(complex),
        "builtins.slice": _slice,
        "builtins.bytearray": _bytes_like(bytearray),
        "builtins.bytes": _bytes_like(bytes),
        "_codecs.encode": _codecs_encode,
        "torch.Size": _size,
        "torch.device": _device,
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _parameter,
        "torch._utils._rebuild_parameter_with_state": _parameter,  # the extra state is dropped
        "torch._utils._rebuild_meta_tensor_no_storage": _rebuild_meta_tensor_no_storage,
        "torch._tensor._rebuild_from_type": _rebuild_from_type,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
    }.items():
        allow(name, fn)
    table["torch.Tensor"] = _TENSOR
    table["torch.nn.parameter.Parameter"] = _PARAMETER
    table["torch.nn.Parameter"] = _PARAMETER
    # Plain values: dtypes, layouts and memory formats are pickled as globals (torch.float32, ...).
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype | torch.layout | torch.memory_format):
            table[f"torch.{name}"] = value
    for module in ("torch", "torch.cuda", "torch.storage"):
        for name, dtype in _STORAGE_DTYPES.items():
            table[f"{module}.{name}"] = _StorageType(f"{module}.{name}", dtype)
    return table


_ALLOWED = _allowed_globals()


def _call(func: Any, args: tuple, kwargs: dict) -> Any:
    """The one place anything gets called while unpickling: allow-listed callables and placeholders only."""
    if isinstance(func, _Allowed | Placeholder) or _is_placeholder_class(func):
        return func(*args, **kwargs)
    what = (
        f"the {func.name} storage type"
        if isinstance(func, _StorageType)
        else f"a {type(func).__name__} object"
    )
    raise _Refused(f"the file calls {what}; salvage only calls allow-listed functions")


# ----------------------------------------------------------------------------------------------------------
# The unpickler.
# ----------------------------------------------------------------------------------------------------------


class _SalvageUnpickler(pickle._Unpickler):
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
        if target in _ALLOWED:
            return _ALLOWED[target]
        if target not in self._placeholders:
            if len(self._placeholders) >= _MAX_GLOBALS:
                raise _Refused(f"the file names more than {_MAX_GLOBALS} distinct globals")
            self._placeholders[target] = Placeholder._subclass_for(target)
        return self._placeholders[target]

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise _Refused("unexpected persistent id in a plain pickle")
        return self._persistent(pid)

    def get_extension(self, code: int) -> None:
        # The stdlib version consults and fills copyreg's process-wide cache, bypassing find_class.
        raise _Refused(f"pickle extension code {code} is not supported")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        if type(args) is not tuple:
            raise _Refused(f"REDUCE arguments must be a tuple, found {type(args).__name__}")
        self.stack[-1] = _call(self.stack[-1], args, {})

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _new(self, cls: Any, args: Any, kwargs: Any) -> None:
        if type(args) is not tuple or type(kwargs) is not dict:
            raise _Refused("NEWOBJ arguments must be a tuple (and a dict)")
        if _is_placeholder_class(cls):
            self.append(cls.__new__(cls, *args, **kwargs))
        elif isinstance(cls, _Allowed):
            self.append(cls(*args, **kwargs))
        else:
            raise _Refused(f"NEWOBJ on a {type(cls).__name__} object is not allowed")

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
        self.append(_call(klass, tuple(args), {}))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Placeholder):
            inst.__setstate__(state)
        elif type(inst) is collections.OrderedDict and isinstance(state, dict):
            # A state_dict carries ``_metadata`` this way; only plain string attribute names.
            if not all(type(k) is str and not k.startswith("__") for k in state):
                raise _Refused("BUILD on an OrderedDict with non-attribute keys")
            inst.__dict__.update(state)
        elif isinstance(inst, torch.Tensor) and isinstance(state, tuple) and len(state) == 4:
            inst.set_(_view(*state))  # legacy tensor state: (storage, offset, size, stride)
        elif isinstance(inst, torch.Tensor):
            logger.debug("salvage ignored BUILD state on a tensor: %s", type(state).__name__)
        else:
            raise _Refused(f"BUILD (setting state) on a {type(inst).__name__} object is not allowed")

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
            raise _Refused(f"APPEND on a {type(target).__name__} object is not allowed")

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
            raise _Refused(f"SETITEM on a {type(target).__name__} object is not allowed")
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
            raise _Refused(f"ADDITEMS on a {type(target).__name__} object is not allowed")

    dispatch[pickle.ADDITEMS[0]] = load_additems


def _plain_load(stream: io.BytesIO) -> Any:
    """Unpickle one bookkeeping pickle (legacy header, key list) from ``stream``; it may name no globals."""
    unpickler = _SalvageUnpickler(stream, None)
    result = unpickler.load()
    if unpickler._placeholders:
        raise _Refused(f"a bookkeeping pickle names globals: {sorted(unpickler._placeholders)}")
    return result


# ----------------------------------------------------------------------------------------------------------
# Devices.
# ----------------------------------------------------------------------------------------------------------


def _to_device(data: torch.Tensor, location: str, map_location: MapLocation) -> torch.UntypedStorage:
    """Move the uint8 tensor ``data`` (on CPU) where ``map_location`` says; returns its untyped storage."""
    if callable(map_location) and not isinstance(map_location, torch.device):
        result = map_location(data.untyped_storage(), location)  # the caller's own function, not the file's
        if isinstance(result, torch.storage.TypedStorage):
            result = result._untyped_storage
        if isinstance(result, torch.UntypedStorage):
            return result
        if result is not None:
            raise CheckpointError(
                f"map_location returned a {type(result).__name__}; it must return a storage or None"
            )
        target: Any = location
    elif isinstance(map_location, dict):
        target = map_location.get(location, location)
    elif map_location is None:
        target = location
    else:
        target = map_location
    try:
        device = torch.device(target)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise _Refused(f"storage location {target!r} is not a device: {exc}") from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise _Refused(
            f"the file holds tensors saved on {device} but that device is not available here; "
            "pass map_location='cpu'"
        )
    return data.to(device).untyped_storage()


def _swap_bytes(data: torch.Tensor, itemsize: int) -> torch.Tensor:
    return data.view(-1, itemsize).flip(1).reshape(-1) if itemsize > 1 else data


# ----------------------------------------------------------------------------------------------------------
# File formats.
# ----------------------------------------------------------------------------------------------------------


def _read_member(archive: zipfile.ZipFile, name: str, nbytes: int) -> torch.Tensor:
    """The bytes of one storage member as a uint8 tensor, checked against the size the pickle declared."""
    try:
        member = archive.getinfo(name)
    except KeyError:
        raise _Refused(f"the pickle refers to storage {name}, which the archive does not contain") from None
    if member.file_size != nbytes:
        raise _Refused(f"storage {name} should hold {nbytes} bytes, the archive has {member.file_size}")
    if member.compress_type != zipfile.ZIP_STORED and nbytes > _MAX_RATIO * member.compress_size + 2**20:
        raise _Refused(f"storage {name} inflates {nbytes // max(member.compress_size, 1)}-fold: a zip bomb")
    buffer = bytearray(nbytes)
    with archive.open(member) as stream:  # zipfile checks the CRC once the member is read to its end
        got = stream.readinto(buffer)
        if got != nbytes or stream.read(1):
            raise _Refused(f"storage {name} holds {got} bytes, expected {nbytes}")
    return torch.frombuffer(buffer, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)


def _load_zip(path: Path, map_location: MapLocation) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise _Refused(
                f"it is a zip file without a torch data.pkl (members: {names[:5]}); not a torch checkpoint"
            )
        prefix = pickles[0][: -len("data.pkl")]
        big_endian = f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") == b"big"
        storages: dict[str, torch.UntypedStorage] = {}

        def persistent(pid: Any) -> Any:
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
                raise _Refused(f"unexpected persistent id {str(pid)[:80]}")
            _, storage_type, key, location, numel = pid
            if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
                raise _Refused(f"malformed storage reference {str(pid)[:80]}")
            nbytes = _int(numel, "storage size") * storage_type.dtype.itemsize
            if key not in storages:
                data = _read_member(archive, f"{prefix}data/{key}", nbytes)
                if big_endian != (sys.byteorder == "big"):
                    data = _swap_bytes(data, storage_type.dtype.itemsize)
                storages[key] = _to_device(data, str(location), map_location)
            elif storages[key].nbytes() != nbytes:  # the same storage seen again with another size
                raise _Refused(
                    f"storage {key} should hold {nbytes} bytes, the archive has {storages[key].nbytes()}"
                )
            return _typed(storages[key], storage_type.dtype)

        return _SalvageUnpickler(io.BytesIO(archive.read(pickles[0])), persistent).load()


def _load_legacy(path: Path, map_location: MapLocation) -> Any:
    raw = path.read_bytes()
    stream = io.BytesIO(raw)
    if _plain_load(stream) != _LEGACY_MAGIC:
        raise _Refused("not a legacy torch file (bad magic number)")
    if (version := _plain_load(stream)) != _LEGACY_PROTOCOL:
        raise _Refused(f"unsupported legacy protocol version {version!r}, expected {_LEGACY_PROTOCOL}")
    sys_info = _plain_load(stream)
    little = not (isinstance(sys_info, dict) and sys_info.get("little_endian") is False)
    main_start = stream.tell()

    # Pass 1 walks the main pickle with meta storages, only to learn each storage's dtype, size and
    # location; the raw bytes come after the pickle, in the order of a key list that follows it.
    declared: dict[str, tuple[torch.dtype, int, str]] = {}

    def declare(pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module") and len(pid) == 4:
            return pid[1]  # a whole-module pickle: the class (a placeholder) is the object itself
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise _Refused(f"unexpected persistent id {str(pid)[:80]}")
        _, storage_type, key, location, numel, view = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise _Refused(f"malformed storage reference {str(pid)[:80]}")
        nbytes = _int(numel, "storage size") * storage_type.dtype.itemsize
        if nbytes > len(raw):  # the bytes must be in the file: refuse before allocating anything
            raise _Refused(f"storage {key} claims {nbytes} bytes, more than the whole file ({len(raw)})")
        declared.setdefault(
            key,
            (storage_type.dtype, numel, location.decode() if isinstance(location, bytes) else str(location)),
        )
        return _legacy_view(torch.UntypedStorage(nbytes, device="meta"), storage_type.dtype, view)

    _SalvageUnpickler(stream, declare).load()  # leaves the stream just after the main pickle
    keys = _plain_load(stream)
    if not isinstance(keys, list) or set(keys) != set(declared):
        raise _Refused("the storage key list does not match the storages the pickle refers to")

    storages: dict[str, torch.UntypedStorage] = {}
    for key in keys:
        dtype, numel, location = declared[key]
        header = stream.read(8)
        if len(header) != 8:
            raise _Refused(f"file ends before the data of storage {key}")
        (count,) = struct.unpack("<q" if little else ">q", header)
        if count != numel:
            raise _Refused(f"storage {key} holds {count} elements, the pickle says {numel}")
        nbytes = count * dtype.itemsize
        chunk = stream.read(nbytes)
        if len(chunk) != nbytes:
            raise _Refused(f"file ends inside the data of storage {key} ({len(chunk)} of {nbytes} bytes)")
        data = (
            torch.frombuffer(bytearray(chunk), dtype=torch.uint8)
            if chunk
            else torch.empty(0, dtype=torch.uint8)
        )
        if not little and sys.byteorder == "little" or little and sys.byteorder == "big":
            data = _swap_bytes(data, dtype.itemsize)
        storages[key] = _to_device(data, location, map_location)

    def resolve(pid: Any) -> Any:
        if pid[0] in ("module", b"module"):
            return pid[1]
        _, storage_type, key, _location, _numel, view = pid
        return _legacy_view(storages[key], storage_type.dtype, view)

    stream.seek(main_start)
    return _SalvageUnpickler(stream, resolve).load()


def _legacy_view(untyped: torch.UntypedStorage, dtype: torch.dtype, view: Any) -> torch.storage.TypedStorage:
    """Legacy files may refer to a slice ``(view_key, offset, size)`` of a root storage."""
    if view is None:
        return _typed(untyped, dtype)
    if not (isinstance(view, tuple) and len(view) == 3):
        raise _Refused(f"malformed storage view {str(view)[:80]}")
    offset, size = _int(view[1], "view offset"), _int(view[2], "view size")
    start, stop = offset * dtype.itemsize, (offset + size) * dtype.itemsize
    if offset < 0 or size < 0 or stop > untyped.nbytes():
        raise _Refused(f"storage view {offset}+{size} lies outside its storage")
    return _typed(untyped[start:stop], dtype)


def _load_safetensors(path: Path, map_location: MapLocation) -> dict[str, torch.Tensor]:
    # Safetensors holds no code at all; reading it here keeps salvage a one-stop "get me the tensors".
    # The normal reader already honours every map_location form (device, dict, callable).
    from transferkit.checkpoint.reading import _load_safetensors as read_safetensors

    return read_safetensors(path, map_location)


def _detect(path: Path) -> str:
    with path.open("rb") as stream:
        head = stream.read(16)
    if not head:
        raise _Refused("the file is empty")
    if head.startswith(b"PK"):
        return "zip"
    if head.startswith(b"\x80\x02\x8a\x0a"):  # PROTO 2, LONG1 of 10 bytes: the legacy magic number
        return "legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len < path.stat().st_size:
            return "safetensors"
        if not head.startswith(b"\x80"):  # else it may be a plain pickle, tried below
            raise _Refused(
                f"a safetensors file whose header says {header_len} bytes but the file has only "
                f"{path.stat().st_size}; it is truncated or damaged"
            )
    if head.startswith(b"\x80"):
        return "pickle"
    raise _Refused(
        f"unrecognised format (starts with {head[:8]!r}); salvage reads torch zip files, legacy torch "
        "pickles, plain pickles and safetensors"
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _Refused):
        return str(exc)
    if isinstance(exc, EOFError):
        return "the data ends early; the file looks truncated"
    if isinstance(exc, zipfile.BadZipFile | zipfile.LargeZipFile):
        return f"the zip archive is damaged ({exc})"
    if isinstance(exc, MemoryError):
        return "it declares sizes too large to allocate; the file is damaged"
    if isinstance(exc, RecursionError):
        return "it is nested too deeply to read"
    return f"the file is damaged or not a checkpoint ({type(exc).__name__}: {str(exc)[:200]})"


def salvage_load(path: str | os.PathLike[str], *, map_location: MapLocation = "cpu") -> Any:
    """Load a checkpoint without executing anything from it; unknown globals become :class:`Placeholder` s.

    Use it for files ``weights_only=True`` refuses only because of harmless extras. Tensors (and
    ``Parameter`` s) are rebuilt from the file's storages after bounds checks; ``OrderedDict``, ``set``,
    ``torch.Size``, dtypes and the like are real; any other object is a placeholder recording its name,
    arguments and state. Tensor subclasses come back as plain tensors and tensors' Python attributes and
    backward hooks are dropped.

    Args:
        path: a torch zip checkpoint (``.pt``, ``.pth``, ``.ckpt`` ...), a legacy pre-1.6 torch file, a
            plain pickle or a ``.safetensors`` file.
        map_location: where storages go, as in ``torch.load``: a device string or ``torch.device``, a dict
            mapping saved locations to new ones, a callable ``(storage, location) -> storage | None``, or
            ``None`` to keep the saved device.

    Returns:
        The unpickled object (usually a dict) with placeholders where globals were refused.

    Raises:
        CheckpointError: the file is missing, damaged, or asks for something salvage will not do; the
            message names the path and the reason.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "w.pt"
        >>> torch.save({"w": torch.zeros(3)}, path)
        >>> salvage_load(path)["w"].shape
        torch.Size([3])
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"cannot salvage {path}: no such file; check the path")
    if not path.is_file():
        raise CheckpointError(f"cannot salvage {path}: it is a directory, not a checkpoint file")
    readers = {"zip": _load_zip, "legacy": _load_legacy, "safetensors": _load_safetensors}
    try:
        kind = _detect(path)
        if kind == "pickle":
            result = _SalvageUnpickler(io.BytesIO(path.read_bytes()), None).load()
        else:
            result = readers[kind](path, map_location)
    except TransferkitError:
        raise
    except Exception as exc:  # every parser failure becomes one clear error naming the file
        raise CheckpointError(f"cannot salvage {path}: {_describe(exc)}") from exc
    replaced = find_placeholders(result)
    if replaced:
        logger.warning(
            "salvaged %s without running its code; %d global(s) replaced by inert placeholders: %s",
            path,
            len(replaced),
            ", ".join(replaced),
        )
    return result
