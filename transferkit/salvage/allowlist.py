"""The allow-list: the only globals salvage maps to real objects, and the one place anything is called.

Pure constructors (containers, numbers, bytes, ``torch.Size``, ``torch.device``) and torch's tensor rebuild
functions, re-implemented with argument checks where torch's own would trust the file: a tensor is only
ever a view that lies inside a storage the file itself supplied. Dtypes, layouts, memory formats and
storage types are plain values. :data:`ALLOWED` maps dotted names to them; :func:`call_allowed` is the single
gate through which the unpickler calls anything (allow-listed callables and placeholders only).
:class:`Refused` is the error every part of salvage raises for "the file asks for something salvage will
not do".
"""

from __future__ import annotations

import collections
import logging
import pickle
from collections.abc import Callable
from typing import Any

import torch

from transferkit.salvage.placeholders import Placeholder, is_placeholder_class

__all__ = [
    "Refused",
    "Allowed",
    "StorageType",
    "ALLOWED",
    "call_allowed",
    "checked_int",
    "typed_storage",
    "checked_view",
]

# One logger for the whole package: "transferkit.salvage" is what users see in CLI log lines.
logger = logging.getLogger("transferkit.salvage")


class Refused(pickle.UnpicklingError):
    """The pickle asked for something salvage will not do; becomes a CheckpointError with the path."""


class Allowed:
    """An allow-listed callable: the only kind of object (besides placeholders) the unpickler calls."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<allowed {self.name}>"


class StorageType:
    """What ``torch.FloatStorage`` & co. unpickle to: just a dtype; never callable (no allocation)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


def typed_storage(untyped: torch.UntypedStorage, dtype: torch.dtype) -> torch.storage.TypedStorage:
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


def checked_int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise Refused(f"{what} must be an int, found {type(value).__name__}")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list):
        raise Refused(f"{what} must be a tuple of ints, found {type(value).__name__}")
    return tuple(checked_int(v, what) for v in value)


def _dtype(value: Any) -> torch.dtype:
    if not isinstance(value, torch.dtype):
        raise Refused(f"expected a torch dtype, found {type(value).__name__}")
    return value


def checked_view(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A tensor over ``storage`` after checking that every element it addresses lies inside the storage."""
    if type(storage) is not torch.storage.TypedStorage:
        raise Refused(
            f"a tensor's storage must come from the file's storages, found {type(storage).__name__}"
        )
    untyped = storage._untyped_storage
    dtype = storage.dtype if dtype is None else _dtype(dtype)
    offset, size, stride = checked_int(offset, "storage offset"), _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
        raise Refused(f"invalid tensor geometry: offset {offset}, size {size}, stride {stride}")
    available = untyped.nbytes() // dtype.itemsize
    needed = 0 if 0 in size else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if needed > available:
        raise Refused(
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
    return checked_view(storage, offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any = None
) -> torch.Tensor:
    return _finish(checked_view(storage, offset, size, stride), requires_grad, metadata)


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
    return _finish(checked_view(storage, offset, size, stride, dtype), requires_grad, metadata)


def _parameter(data: Any = None, requires_grad: Any = True, *ignored: Any) -> torch.nn.Parameter:
    if data is None:
        data = torch.empty(0)
    if not isinstance(data, torch.Tensor):
        raise Refused(f"a Parameter's data must be a tensor, found {type(data).__name__}")
    trainable = requires_grad is True and (data.is_floating_point() or data.is_complex())
    return torch.nn.Parameter(data, requires_grad=trainable)


def _rebuild_meta_tensor_no_storage(dtype: Any, size: Any, stride: Any, requires_grad: Any) -> torch.Tensor:
    return torch.empty_strided(
        _ints(size, "size"), _ints(stride, "stride"), dtype=_dtype(dtype), device="meta"
    )


def _tensor_type(*args: Any, **kwargs: Any) -> Any:
    raise Refused("the file calls torch.Tensor(...) directly; salvage only rebuilds tensors from storages")


_TENSOR = Allowed("torch.Tensor", _tensor_type)
_PARAMETER = Allowed("torch.nn.parameter.Parameter", _parameter)


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    """Tensor subclasses and tensors with Python attributes; only Parameter survives as a subclass."""
    if not isinstance(args, tuple):
        raise Refused(f"rebuild arguments must be a tuple, found {type(args).__name__}")
    result = call_allowed(func, args, {})
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
            raise Refused(
                f"{fn.__name__}() accepts one list/tuple/dict here, found {[type(a).__name__ for a in args]}"
            )
        if pairs and args and not isinstance(args[0], dict):
            bad = next(
                (item for item in args[0] if not (isinstance(item, list | tuple) and len(item) == 2)), None
            )
            if bad is not None or isinstance(args[0], set | frozenset):
                found = type(args[0]).__name__ if bad is None else type(bad).__name__
                raise Refused(f"{fn.__name__}() accepts (key, value) pairs here, found a {found}")
        return fn(*args)

    return build


def _bytes_like(kind: type) -> Callable[..., Any]:
    def build(data: Any = b"", encoding: Any = None, *rest: Any) -> Any:
        if isinstance(data, str) and encoding in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
            return kind(data.encode(encoding))
        if isinstance(data, bytes | bytearray) and encoding is None:
            return kind(data)
        raise Refused(f"{kind.__name__}() accepts bytes or (str, encoding) here")  # never an int size

    return build


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Protocol-2 pickles spell ``bytes`` as _codecs.encode(str, "latin1"); other codecs would import modules.
    if isinstance(text, str) and encoding in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        return text.encode(encoding, "strict")
    raise Refused(f"_codecs.encode is only allowed with latin1/utf-8/ascii text, found {encoding!r}")


def _number(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if len(args) > 2 or not all(isinstance(a, int | float | complex | str) for a in args):
            raise Refused(f"{kind.__name__}() accepts numbers or a string here")
        return kind(*args)

    return build


def _device(*args: Any) -> torch.device:
    if not args or not all(isinstance(a, str | int) for a in args):
        raise Refused("torch.device() accepts a string (and an index) here")
    return torch.device(*args)


def _size(*args: Any) -> torch.Size:
    return torch.Size(_ints(args[0], "torch.Size") if args else ())


def _slice(*args: Any) -> slice:
    if not all(a is None or type(a) is int for a in args):
        raise Refused("slice() accepts ints or None here")
    return slice(*args)


def _allowed_globals() -> dict[str, Any]:
    table: dict[str, Any] = {}

    def allow(name: str, fn: Callable[..., Any]) -> None:
        table[name] = Allowed(name, fn)

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
            table[f"{module}.{name}"] = StorageType(f"{module}.{name}", dtype)
    return table


ALLOWED = _allowed_globals()


def call_allowed(func: Any, args: tuple, kwargs: dict) -> Any:
    """The one place anything gets called while unpickling: allow-listed callables and placeholders only."""
    if isinstance(func, Allowed | Placeholder) or is_placeholder_class(func):
        return func(*args, **kwargs)
    what = (
        f"the {func.name} storage type"
        if isinstance(func, StorageType)
        else f"a {type(func).__name__} object"
    )
    raise Refused(f"the file calls {what}; salvage only calls allow-listed functions")
