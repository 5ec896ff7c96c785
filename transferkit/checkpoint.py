"""Safe, atomic checkpoint I/O: read what people actually have, write complete training states.

Reading (:func:`load_checkpoint`) accepts torch zip files (``.pt``, ``.pth``, ``.pth.tar``, ``.bin``,
Lightning ``.ckpt``), legacy pre-1.6 pickles (``.th`` ...) and ``.safetensors``, always with
``weights_only=True``: a file that needs other globals is refused with :class:`UnsafeCheckpointError`
naming them, and never silently unpickled. :func:`extract_state_dict` finds the weights inside
whatever container they came in. :func:`describe_unsafe_globals` lists what a file would import,
without running any of it.

Writing (:func:`save_checkpoint`, :func:`save_weights`, :func:`atomic_write`) goes through a temporary
file in the target folder (named ``.<name>.tmp-<random>``), which is flushed, fsynced and
``os.replace``-d over the target, after which the folder is fsynced. A crash, an exception, a full disk
or ``kill -9`` at any moment leaves the previous file at the path intact; only a SIGKILL can leave a
``.<name>.tmp-*`` file behind, never a partial file at the path.

A training checkpoint is a plain dict that ``weights_only=True`` reads back::

    {"format": "transferkit.checkpoint/1", "models": {name: state_dict}, "optimizers": {...},
     "schedulers": {...}, "scaler": state|None, "epoch": int|None, "step": int|None, "metrics": {...},
     "rng": {"python", "numpy", "torch", "cuda"}, "extra": {...},
     "meta": {"transferkit_version", "torch_version", "created", ...}}

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "last.pt"
    >>> model = torch.nn.Linear(2, 1)
    >>> _ = save_checkpoint(path, model=model, epoch=3)
    >>> ckpt = restore_checkpoint(path, model=torch.nn.Linear(2, 1))
    >>> ckpt["epoch"], sorted(extract_state_dict(ckpt))
    (3, ['bias', 'weight'])
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import io
import json
import logging
import os
import pickle
import pickletools
import random
import stat
import struct
import sys
import tempfile
import warnings
import weakref
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor, nn

from transferkit.errors import CheckpointError, ConfigError, TransferkitError, UnsafeCheckpointError

__all__ = [
    "FORMAT",
    "load_checkpoint",
    "extract_state_dict",
    "save_checkpoint",
    "restore_checkpoint",
    "save_weights",
    "snapshot_state",
    "atomic_write",
    "describe_unsafe_globals",
    "capture_rng_state",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

FORMAT = "transferkit.checkpoint/1"

PathLike = str | os.PathLike
MapLocation = str | torch.device | Mapping[str, Any] | Callable[..., Any] | None

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
_TEMP_INFIX = ".tmp-"


# ------------------------------------------------------------------------------------------------ files


def _as_path(path: Any, what: str = "path") -> Path:
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _check_file(path: Any) -> Path:
    """The path as a Path, or CheckpointError saying why there is no readable file there."""
    path = _as_path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        hint = "" if path.parent.is_dir() else f" (the folder {path.parent} does not exist either)"
        raise CheckpointError(f"{path}: no such file{hint}; check the path") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot access it ({err.strerror or err})") from err
    if stat.S_ISDIR(info.st_mode):
        found = sorted(p.name for p in path.iterdir() if p.suffix in _CKPT_SUFFIXES)[:5]
        hint = f"; checkpoint files in it: {', '.join(found)}" if found else ""
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file{hint}")
    if info.st_size == 0:
        raise CheckpointError(
            f"{path}: the file is empty (0 bytes); the save that wrote it was probably interrupted"
        )
    return path


_CKPT_SUFFIXES = frozenset({".pt", ".pth", ".tar", ".th", ".bin", ".ckpt", ".safetensors", ".pkl"})


@contextlib.contextmanager
def _pinned(path: Path) -> Iterator[str]:
    """A name for the file that stays bound to the same inode while it is read.

    ``torch.load(mmap=True)`` opens its path twice (zip reader, then the storage mapping); a save
    replacing the file in between would mix two files. Reading through ``/proc/self/fd/N`` of one open
    descriptor makes every open see the same file. Elsewhere the path itself is used.
    """
    if not os.path.isdir("/proc/self/fd"):
        yield str(path)
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot open it ({err.strerror or err})") from err
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _detect_format(path: Path, source: str | Path | None = None) -> str:
    """``"zip"``, ``"legacy"`` or ``"safetensors"``, from the file's first bytes (never its suffix)."""
    source = path if source is None else source
    try:
        with open(source, "rb") as f:
            head = f.read(512)
            size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror or err})") from err
    if head[:2] == b"PK":
        try:
            complete = zipfile.is_zipfile(source)
        except Exception:  # is_zipfile itself raises BadZipFile on some damaged archives
            complete = False
        if not complete:
            raise CheckpointError(
                f"{path}: a zip archive that is truncated or damaged (no end-of-archive record); "
                "re-download or re-save it"
            )
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > size - 8:
            raise CheckpointError(
                f"{path}: a safetensors file whose header says {header_len} bytes but the file has only "
                f"{size}; it is truncated or damaged"
            )
        return "safetensors"
    if head[:1] == b"\x80" or head[257:262] == b"ustar":
        return "legacy"  # a pickle stream (torch.save before 1.6) or the even older tar layout
    raise CheckpointError(f"{path}: not a PyTorch or safetensors checkpoint: {_describe_head(head)}")


def _describe_head(head: bytes) -> str:
    text = head.lstrip()[:64].lower()
    if text.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the file itself; run `git lfs pull`"
    if text.startswith((b"<!doctype", b"<html", b"<?xml")):
        return "it is an HTML/XML page (a failed download?), not weights"
    return (
        f"it starts with {head[:8]!r}; expected a zip archive (torch.save since 1.6), a pickle "
        "(legacy torch.save) or a safetensors header"
    )


def _check_torch_zip(path: Path, source: str | Path | None = None) -> list[str]:
    """The zip's member names; CheckpointError when it cannot be a torch checkpoint."""
    try:
        with zipfile.ZipFile(path if source is None else source) as archive:
            names = archive.namelist()
    except Exception as err:  # zipfile raises many types on damaged archives
        raise CheckpointError(f"{path}: the zip archive is damaged ({type(err).__name__}: {err})") from err
    if any(name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(
            f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint; load it with torch.jit.load"
        )
    if not any(name.endswith("data.pkl") for name in names):
        shown = ", ".join(names[:5]) or "none"
        raise CheckpointError(
            f"{path}: a zip archive but not a PyTorch checkpoint (no data.pkl inside; members: {shown})"
        )
    return names


# ------------------------------------------------------------------------------------------------ reading


def load_checkpoint(
    path: PathLike,
    *,
    map_location: MapLocation = "cpu",
    weights_only: bool = True,
    trusted: bool = False,
    safe_globals: Iterable[Any] = (),
    mmap: bool | None = None,
    salvage: bool = False,
) -> Any:
    """Read a checkpoint of any common format, safely.

    Args:
        path: a torch zip file (``.pt``, ``.pth``, ``.pth.tar``, ``.bin``, ``.ckpt``), a legacy pre-1.6
            torch pickle (``.th`` ...) or a ``.safetensors`` file; the format is read from the content.
        map_location: where tensors go, as in ``torch.load``: a device string, ``torch.device``, a dict
            ``{saved_location: new_location}``, a callable ``(storage, location) -> storage``, or
            ``None`` to keep the saved devices. The default ``"cpu"`` reads GPU-saved files anywhere.
        weights_only: must stay ``True`` unless ``trusted=True``.
        trusted: fully unpickle the file (runs code from it: whole pickled models, custom classes).
            Only for files you trust.
        safe_globals: classes/functions (or ``"module.Name"`` strings, imported) to allow on top of
            what ``weights_only=True`` accepts.
        mmap: memory-map the file's storages; ``None`` = when it is a zip file and the tensors go to
            the CPU. Ignored for legacy and safetensors files.
        salvage: read the tensors of a file ``weights_only`` refuses without executing anything, via
            :func:`transferkit.salvage.salvage_load` (unknown objects become inert placeholders).

    Returns:
        The loaded object, usually a dict; a ``.safetensors`` file gives a plain ``{name: tensor}`` dict.

    Raises:
        UnsafeCheckpointError: the file needs globals beyond ``weights_only``; ``.globals`` lists them.
        CheckpointError: missing, empty, truncated, damaged or not a checkpoint (the message says which).
        ConfigError: ``weights_only=False`` without ``trusted=True``.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "w.pth"
        >>> torch.save({"state_dict": {"w": torch.ones(2)}}, path)
        >>> load_checkpoint(path)["state_dict"]["w"].tolist()
        [1.0, 1.0]
    """
    if not weights_only and not trusted:
        raise ConfigError(
            "weights_only=False runs code stored in the file; pass trusted=True to say you trust it "
            "(or safe_globals=[...] to allow only specific classes)"
        )
    path = _check_file(path)
    if salvage:
        return _salvage(path, map_location)
    with _pinned(path) as source:
        kind = _detect_format(path, source)
        if kind == "safetensors":
            return _load_safetensors(path, map_location, source)
        if kind == "zip":
            _check_torch_zip(path, source)
        use_mmap = kind == "zip" and (_maps_to_cpu(map_location) if mmap is None else bool(mmap))
        obj = _torch_load(path, source, map_location, trusted, _resolve_safe_globals(safe_globals), use_mmap)
    _remember_source(obj, path)
    logger.debug("loaded %s (%s%s)", path, kind, ", mmap" if use_mmap else "")
    return obj


def _torch_load(
    path: Path, source: str, map_location: MapLocation, trusted: bool, allowed: list[Any], use_mmap: bool
) -> Any:
    try:
        with warnings.catch_warnings():
            # damaged files make torch warn about odd pickle protocols before it fails; the error says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            if trusted:
                logger.warning("fully unpickling %s (trusted=True): this runs code stored in the file", path)
                return torch.load(source, map_location=map_location, weights_only=False, mmap=use_mmap)
            with torch.serialization.safe_globals(allowed):
                return torch.load(source, map_location=map_location, weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            raise _refusal(path, source, err, allowed) from err
        raise CheckpointError(_read_failure(path, err).replace(source, str(path))) from err
    except Exception as err:  # torch.load raises anything on damaged input; one clear error instead
        raise CheckpointError(_read_failure(path, err).replace(source, str(path))) from err


def _salvage(path: Path, map_location: MapLocation) -> Any:
    from transferkit.salvage import salvage_load  # lazily: salvage is an optional, heavier path

    try:
        obj = salvage_load(path, map_location=map_location)
    except TransferkitError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path}: salvage failed ({type(err).__name__}: {err})") from err
    _remember_source(obj, path)
    return obj


def _maps_to_cpu(map_location: MapLocation) -> bool:
    def cpu(value: Any) -> bool:
        try:
            return torch.device(value).type == "cpu"
        except (RuntimeError, TypeError, ValueError):
            return False

    if isinstance(map_location, str | torch.device):
        return cpu(map_location)
    if isinstance(map_location, Mapping):
        return bool(map_location) and all(cpu(v) for v in map_location.values())
    return False


def _resolve_safe_globals(items: Iterable[Any]) -> list[Any]:
    """Objects for ``torch.serialization.safe_globals``; ``"module.Name"`` strings are imported."""
    resolved = []
    for item in items:
        if isinstance(item, str):
            module_name, _, name = item.rpartition(".")
            try:
                resolved.append(getattr(importlib.import_module(module_name), name))
            except (ImportError, AttributeError, ValueError) as err:
                raise ConfigError(
                    f"safe_globals entry {item!r} cannot be imported ({err}); pass the class itself, or "
                    "load with salvage=True to read the tensors without it"
                ) from err
        else:
            resolved.append(item)
    return resolved


def _refusal(path: Path, source: str, err: Exception, allowed: list[Any]) -> CheckpointError:
    """UnsafeCheckpointError naming the globals, or CheckpointError when the pickle is just damaged."""
    try:
        names = _unsafe_globals(path, source, allowed)
    except CheckpointError:
        names = []
    if not names:
        reason = str(err).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0][:300]
        return CheckpointError(f"{path}: the file is damaged or not a checkpoint ({reason})")
    whole_model = any(n.startswith("torch.nn.modules.") for n in names)
    hint = (
        " It holds pickled nn.Module objects (a whole model saved with torch.save(model), or modules "
        "among its extras): those load only with trusted=True and their classes importable; prefer "
        "re-saving model.state_dict()."
        if whole_model
        else ""
    )
    message = (
        f"{path}: refused by weights_only=True: the file needs {len(names)} global(s) beyond tensors and "
        f"plain containers: {', '.join(names)}. Nothing from the file was executed.{hint} Ways forward: "
        f"allow-list the ones you trust with load_checkpoint(path, safe_globals=[...]) (the classes, or "
        f"'module.Name' strings), or pass trusted=True for a file you trust (runs its code); "
        f"salvage=True reads the tensors without running anything."
    )
    return UnsafeCheckpointError(message, globals=names)


def _read_failure(path: Path, err: BaseException) -> str:
    text = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
    if "cuda" in text.lower() and ("deserialize" in text.lower() or "not available" in text.lower()):
        return (
            f"{path}: it holds CUDA tensors but CUDA is not available here ({text}); pass map_location='cpu'"
        )
    if isinstance(err, MemoryError):
        return f"{path}: it declares sizes too large to allocate; the file is damaged"
    if isinstance(err, EOFError) or "eof" in text.lower():
        return f"{path}: the file ends early (truncated?) ({type(err).__name__}: {text})"
    return f"{path}: the file is damaged or not a checkpoint ({type(err).__name__}: {text})"


def _load_safetensors(path: Path, map_location: MapLocation, source: str | None = None) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    device: Any = "cpu"
    if isinstance(map_location, str | torch.device):
        device = str(map_location)
    elif isinstance(map_location, Mapping):
        device = str(map_location.get("cpu", "cpu"))
    try:
        tensors = load_file(str(path if source is None else source), device=device)
    except Exception as err:  # SafetensorError, OSError, ...: one clear error
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({type(err).__name__}: {err})"
        ) from err
    if callable(map_location) and not isinstance(map_location, Mapping):
        for name, tensor in tensors.items():
            moved = map_location(tensor.untyped_storage(), "cpu")
            if isinstance(moved, torch.UntypedStorage) and moved.device != tensor.device:
                tensors[name] = tensor.to(moved.device)
    _remember_source(tensors, path)
    return tensors


# Which file a loaded object came from, so extract_state_dict's errors can name it. Keyed by id(), with
# a check that it is still the same object: a weak reference where the type allows one, else the
# top-level keys (plain dicts cannot be weakly referenced).
_SOURCES: OrderedDict[int, tuple[Callable[[Any], bool], Path]] = OrderedDict()


def _remember_source(obj: Any, path: Path) -> None:
    try:
        ref = weakref.ref(obj)
        same: Callable[[Any], bool] = lambda other: ref() is other  # noqa: E731
    except TypeError:
        signature = _key_signature(obj)
        same = lambda other: _key_signature(other) == signature  # noqa: E731
    _SOURCES[id(obj)] = (same, path)
    while len(_SOURCES) > 16:
        _SOURCES.popitem(last=False)


def _key_signature(obj: Any) -> frozenset | None:
    if not isinstance(obj, Mapping):
        return None
    try:
        return frozenset(obj.keys())
    except TypeError:
        return None


def _source_label(obj: Any) -> str:
    entry = _SOURCES.get(id(obj))
    if entry is not None and entry[0](obj):
        return str(entry[1])
    return "checkpoint"


# ------------------------------------------------------------------------------------------- unsafe globals


def describe_unsafe_globals(path: PathLike, *, allowed: Iterable[Any] = ()) -> list[str]:
    """The globals a file needs beyond what ``weights_only=True`` accepts, read without executing it.

    The pickle opcodes are scanned statically (``GLOBAL``, ``STACK_GLOBAL``, ``INST``); nothing is
    imported or called.

    Args:
        path: a torch zip file, a legacy torch file or a plain pickle (safetensors files have none).
        allowed: extra objects (or ``"module.Name"`` strings) to treat as allowed.

    Returns:
        Fully qualified names (``"module.Name"``) in order of first appearance; empty when the file
        loads with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, damaged or not a pickle-based checkpoint.

    Example:
        >>> import tempfile, torch, collections
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "c.pt"
        >>> torch.save({"c": collections.namedtuple("P", "x")(1)}, path)  # doctest: +SKIP
        >>> describe_unsafe_globals(path)  # doctest: +SKIP
        ['__main__.P']
    """
    path = _check_file(path)
    with _pinned(path) as source:
        return _unsafe_globals(path, source, allowed)


def _unsafe_globals(path: Path, source: str, allowed: Iterable[Any]) -> list[str]:
    kind = _detect_format(path, source)
    if kind == "safetensors":
        return []
    try:
        found = _globals_in_zip(path, source) if kind == "zip" else _globals_in_legacy(source)
    except TransferkitError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot scan its pickle for globals; it is damaged ({type(err).__name__}: {err})"
        ) from err
    safe = _safe_global_names()
    for item in allowed:
        if isinstance(item, str):
            safe.add(item)
        else:
            safe.add(
                f"{getattr(item, '__module__', '')}.{getattr(item, '__qualname__', getattr(item, '__name__', ''))}"
            )
    return [name for name in found if name not in safe]


def _safe_global_names() -> set[str]:
    try:  # private torch API, the same source torch.serialization.get_unsafe_globals_in_checkpoint uses
        from torch import _weights_only_unpickler as wou

        return set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except Exception:  # pragma: no cover - torch internals moved: report every global instead
        return set()


def _globals_in_zip(path: Path, source: str) -> list[str]:
    with zipfile.ZipFile(source) as archive:
        names = [n for n in archive.namelist() if n.endswith(".pkl")]
        if not names:
            raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint (no data.pkl inside)")
        found: dict[str, None] = {}
        for name in names:
            for item in _pickle_globals(io.BytesIO(archive.read(name))):
                found[item] = None
    return list(found)


def _globals_in_legacy(source: str) -> list[str]:
    # A legacy torch file is five pickles (magic, protocol, sys info, the object, storage keys) followed
    # by raw storage bytes; a plain pickle is one. Scan pickles until the stream stops being one.
    found: dict[str, None] = {}
    with open(source, "rb") as stream:
        for index in range(5):
            start = stream.tell()
            if not stream.read(1):
                break
            stream.seek(start)
            try:
                items = _pickle_globals(stream)
            except Exception:
                if index == 0:
                    raise
                break
            found.update(dict.fromkeys(items))
    return list(found)


def _pickle_globals(stream: BinaryIO) -> list[str]:
    """Globals named by one pickle in ``stream`` (which is left just after its STOP opcode)."""
    import _compat_pickle

    found: dict[str, None] = {}
    strings: list[Any] = []  # recent string pushes, for STACK_GLOBAL
    memo: dict[int, Any] = {}
    protocol = 0

    def add(module: str, name: str) -> None:
        if protocol < 3:  # Python 2 names, as pickle's fix_imports maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found[f"{module}.{name}"] = None

    for opcode, arg, _ in pickletools.genops(stream):
        code = opcode.name
        if code == "PROTO":
            protocol = arg
        elif code in ("GLOBAL", "INST"):
            module, _, name = str(arg).partition(" ")
            add(module, name)
        elif code == "STACK_GLOBAL":
            if len(strings) >= 2 and all(isinstance(s, str) for s in strings[-2:]):
                add(strings[-2], strings[-1])
            else:
                found["<dynamic STACK_GLOBAL>"] = None
        elif code in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING"):
            strings.append(arg)
        elif code in ("MEMOIZE",):
            memo[len(memo)] = strings[-1] if strings else None
        elif code in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = strings[-1] if strings else None
        elif code in ("BINGET", "LONG_BINGET", "GET"):
            strings.append(memo.get(arg))
        elif code == "STOP":
            break
        else:
            strings.append(None)  # any other push breaks a (module, name) pair
        del strings[:-2]
    return list(found)


# ------------------------------------------------------------------------------------------ state dicts


def _is_state_dict(obj: Any) -> bool:
    # a module with get_extra_state() saves "<prefix>_extra_state" entries of any type beside its tensors
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, Tensor) or k.endswith("_extra_state") for k, v in obj.items())
        and any(isinstance(v, Tensor) for v in obj.values())
    )


def _has_tensors(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, Tensor | nn.Module):
        return True
    if depth >= _SEARCH_DEPTH:
        return False
    if isinstance(obj, Mapping):
        return any(_has_tensors(v, depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_tensors(v, depth + 1) for v in obj)
    return False


def _join(where: str | None, key: Any) -> str:
    return str(key) if where is None else f"{where}.{key}"


def _looks_like_optimizer(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "state" in obj and "param_groups" in obj


def _candidates(obj: Any, where: str | None, depth: int = 0) -> list[tuple[str | None, Mapping]]:
    """Every tensor dict below ``obj`` that may be model weights, with its dotted path."""
    if _is_state_dict(obj):
        return [(where, obj)]
    if depth >= _SEARCH_DEPTH or _looks_like_optimizer(obj):
        return []
    found: list[tuple[str | None, Mapping]] = []
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if isinstance(key, str) and key.lower() in _NON_MODEL_KEYS:
                continue
            found.extend(_candidates(value, _join(where, key), depth + 1))
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            found.extend(_candidates(value, _join(where, index), depth + 1))
    elif isinstance(obj, nn.Module):
        found.append((where, obj.state_dict()))
    return found


def _find(obj: Any, where: str | None, label: str) -> tuple[Mapping[str, Tensor], str | None]:
    """The model weights at or below ``obj`` (reached by the dotted path ``where``)."""
    if isinstance(obj, nn.Module):
        return dict(_unwrap(obj).state_dict()), where
    if _is_state_dict(obj):
        return obj, where
    if isinstance(obj, Tensor):
        raise CheckpointError(
            f"{label}: {where or 'the file'} is a single tensor of shape {tuple(obj.shape)}, not a dict of "
            "named tensors"
        )
    if type(obj).__module__ == "transferkit.salvage":
        # a whole pickled module read by salvage: its recorded _parameters/_buffers are the weights
        from transferkit.salvage import module_state_dict

        state = module_state_dict(obj)
        if state:
            return state, where
    if not isinstance(obj, Mapping | list | tuple):
        raise CheckpointError(
            f"{label}: {where or 'the file'} holds a {type(obj).__name__!r} object, not a dict of named tensors"
        )
    if isinstance(obj, Mapping):
        if str(obj.get("format", "")).startswith("transferkit.checkpoint") and isinstance(
            obj.get("models"), Mapping
        ):
            return _find_in_models(obj["models"], _join(where, "models"), label)
        present = [k for k in _PRIMARY_KEYS + _EMA_KEYS if k in obj and _has_tensors(obj[k])]
        if present:
            if len(present) > 1:
                others = ", ".join(repr(_join(where, k)) for k in present[1:])
                logger.info("%s: also holds %s; pass key= to use one of those instead", label, others)
            return _find(obj[present[0]], _join(where, present[0]), label)
    found = _candidates(obj, where)
    if len(found) == 1:
        return found[0][1], found[0][0]
    if found:
        listing = ", ".join(f"{path} ({len(sd)} tensors)" for path, sd in found)
        raise CheckpointError(
            f"{label}: found {len(found)} model state dicts: {listing}; pass key= to choose one, "
            f"e.g. key={found[0][0]!r}"
        )
    keys = list(obj.keys()) if isinstance(obj, Mapping) else f"a {type(obj).__name__} of {len(obj)}"
    raise CheckpointError(
        f"{label}: no model weights (a dict of named tensors) found in {where or 'the file'}; it holds "
        f"{_short(keys)}"
    )


def _find_in_models(models: Mapping, where: str, label: str) -> tuple[Mapping[str, Tensor], str]:
    if len(models) == 1:
        name = next(iter(models))
        return _find(models[name], _join(where, name), label)
    listing = ", ".join(_join(where, n) for n in models) or "none"
    raise CheckpointError(
        f"{label}: a transferkit checkpoint with {len(models)} models ({listing}); pass key= to choose one, "
        f"e.g. key={_join(where, next(iter(models), 'model'))!r}"
    )


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
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
                    f"{label}: key={key!r}: no {parts[i]!r} at {where}; keys there: {_short(list(node))}"
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
    label = _source_label(obj)
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"key must be a non-empty dotted path such as 'state_dict', got {key!r}")
        node, start = _follow(obj, key, label)
        state, where = _find(node, start, label)
    else:
        state, where = _find(obj, None, label)
    logger.info("%s: using the %d tensors at %s", label, len(state), where or "the top level")
    return (state, where) if return_key else state  # type: ignore[return-value]


def _module_or_state(obj: Any, caller: str) -> Mapping[str, Any]:
    """The state dict of a module (wrappers removed), or ``obj`` itself when it already is one."""
    if isinstance(obj, nn.Module):
        return _unwrap(obj).state_dict()
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
    source = _module_or_state(model_or_state_dict, "snapshot_state")
    import copy

    return {k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in source.items()}


# ------------------------------------------------------------------------------------------ atomic write


def _file_mode(path: Path) -> int:
    """Permissions for the new file: the old file's, else what ``open`` would give (0o666 - umask)."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _describe_os_error(err: BaseException) -> str:
    if isinstance(err, OSError):
        reason = err.strerror or str(err)
        if err.errno == 28:
            reason += " (the disk is full)"
        return reason
    return f"{type(err).__name__}: {err}"


def _resolve_link(path: Path) -> Path:
    """Write through a symlink (``last.pt -> epoch_9.pt``) like ``open`` would, instead of replacing it."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _make_temp(path: Path) -> tuple[int, str]:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: cannot create folder {folder} ({err.strerror})") from err
    if path.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a directory")
    try:
        return tempfile.mkstemp(prefix=f".{path.name}{_TEMP_INFIX}", dir=folder)
    except OSError as err:
        raise CheckpointError(
            f"cannot write {path}: creating a temporary file in {folder} failed ({_describe_os_error(err)})"
        ) from err


def _discard(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable. Some file systems cannot fsync a folder: then warn, the file is in place."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as err:
        logger.warning(
            "could not open %s to fsync it (%s); the rename may not survive a power loss", folder, err
        )
        return
    try:
        os.fsync(fd)
    except OSError as err:
        logger.warning("could not fsync folder %s (%s); the rename may not survive a power loss", folder, err)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[BinaryIO]:
    """Write a file atomically: all of it appears at ``path``, or nothing changes there.

    Yields a binary file object on a temporary file ``.<name>.tmp-<random>`` in the same folder (created
    if missing). On a clean exit the data is flushed and fsynced, the temp file is ``os.replace``-d over
    ``path`` (through a symlink, as ``open`` would) and the folder is fsynced. On any exception the temp file is removed and the old file at
    ``path`` is untouched; ``OSError`` s (disk full, permission denied) become :class:`CheckpointError`,
    other exceptions propagate unchanged.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> with atomic_write(path) as f:
        ...     _ = f.write(b"hello")
        >>> path.read_bytes()
        b'hello'
    """
    path = _resolve_link(_as_path(path))
    mode = _file_mode(path)
    fd, tmp = _make_temp(path)
    try:
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _discard(tmp)
        if isinstance(err, OSError):
            raise CheckpointError(f"cannot write {path}: {_describe_os_error(err)}") from err
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[str]:
    """Like :func:`atomic_write`, for writers that insist on a path (safetensors' ``save_file``)."""
    path = _resolve_link(path)
    mode = _file_mode(path)
    fd, tmp = _make_temp(path)
    try:
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        _discard(tmp)
        if isinstance(err, OSError):
            raise CheckpointError(f"cannot write {path}: {_describe_os_error(err)}") from err
        raise
    _fsync_dir(path.parent)


class _RecordingWriter:
    """A file wrapper that remembers the OSError behind a failed write; torch.save reports it vaguely."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._f.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _torch_save(obj: Any, path: Path) -> None:
    with atomic_write(path) as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]
        except OSError:
            raise
        except Exception as err:
            if writer.error is not None:
                raise writer.error from err  # atomic_write turns it into CheckpointError
            raise CheckpointError(
                f"cannot write {path}: serialising failed ({type(err).__name__}: {err})"
            ) from err


# ------------------------------------------------------------------------------------------------- RNG


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


# ---------------------------------------------------------------------------------------------- saving


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def _state_of(obj: Any, what: str) -> Any:
    if isinstance(obj, nn.Module):
        return _unwrap(obj).state_dict()
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


def _plain(value: Any, where: str) -> Any:
    """``value`` with only types ``weights_only=True`` reads back; numpy values and paths are converted."""
    if isinstance(value, Tensor | torch.Size) or type(value) in _PLAIN:
        return value
    if isinstance(value, Mapping):
        items = [(k, v, _plain(k, where), _plain(v, f"{where}[{k!r}]")) for k, v in value.items()]
        if type(value) in (dict, OrderedDict, Counter) and all(a is c and b is d for a, b, c, d in items):
            return value  # unchanged: keep the very object (a state dict's _metadata survives)
        kind = type(value) if type(value) in (dict, OrderedDict, Counter) else dict
        return kind((c, d) for _, _, c, d in items)
    if type(value) in (list, tuple, set):
        items = [(v, _plain(v, f"{where}[{i}]")) for i, v in enumerate(value)]
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
    path = _as_path(path)
    import transferkit

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
    payload = _plain(payload, "checkpoint")
    _torch_save(payload, path)
    logger.info(
        "saved checkpoint %s (models: %s, epoch %s, step %s)",
        path,
        ", ".join(payload["models"]) or "none",
        epoch,
        step,
    )
    return path


# --------------------------------------------------------------------------------------------- restoring


def _load_into(target: Any, state: Any, what: str, label: str) -> None:
    try:
        if isinstance(target, nn.Module):
            _unwrap(target).load_state_dict(state)
        else:
            target.load_state_dict(state)
    except Exception as err:  # size mismatch, missing keys, wrong group count ...
        text = " ".join(str(err).split())[:600]
        raise CheckpointError(
            f"{label}: cannot restore {what}: {text}. Was the checkpoint written for this {what.split()[0]}? "
            "(to warm-start from other weights use load_partial)"
        ) from err


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
) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` file into live objects, so resuming is one call.

    Every name given must be in the checkpoint; all names are checked before anything is loaded.
    Models keep their device (``load_state_dict`` copies into the existing parameters) and optimizer
    state follows its parameters.

    Args:
        source: a path, or a checkpoint dict already loaded with :func:`load_checkpoint`.
        model, models, optimizer, optimizers, scheduler, schedulers, scaler: the live objects, with the
            same names as when saving.
        restore_rng: put back the saved Python/NumPy/torch/CUDA RNG states.
        map_location: used when ``source`` is a path.

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
        ckpt, label = source, _source_label(source)
    else:
        ckpt, label = load_checkpoint(source, map_location=map_location), str(source)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("models"), Mapping):
        found = _short(list(ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(
            f"{label}: not a transferkit training checkpoint (expected 'format': {FORMAT!r} with 'models'; "
            f"found {found}); to load weights from another layout use load_partial"
        )
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
    for target, state, what in plan:
        _load_into(target, state, what, label)
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


# ---------------------------------------------------------------------------------------------- weights


def _tensor_dict(state_dict_or_module: Any) -> dict[str, Tensor]:
    state = _module_or_state(state_dict_or_module, "save_weights")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ConfigError(f"save_weights needs a dict of named tensors; not tensors: {_short(bad)}")
    return dict(state)


def save_weights(
    path: PathLike,
    state_dict_or_module: nn.Module | Mapping[str, Tensor],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save weights alone, atomically: ``.safetensors`` by suffix, else a torch file.

    For safetensors, tensors are moved to the CPU and made contiguous; tensors sharing memory (tied
    weights) are stored as separate copies so every name loads back; metadata values that are not
    strings are JSON-encoded. A torch file holds the plain state dict, or
    ``{"state_dict": ..., "meta": metadata}`` when metadata is given.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> path = save_weights(Path(tempfile.mkdtemp()) / "m.safetensors", torch.nn.Linear(2, 1))
        >>> sorted(load_checkpoint(path))
        ['bias', 'weight']
    """
    path = _as_path(path)
    state = _tensor_dict(state_dict_or_module)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors: dict[str, Tensor] = {}
        seen: set[tuple[str, int]] = set()
        for name, tensor in state.items():
            t = tensor.detach().cpu()
            storage = (str(t.device), t.untyped_storage().data_ptr()) if t.numel() else None
            if storage is not None and storage in seen:
                t = t.clone()  # safetensors refuses tensors that share memory
            elif storage is not None:
                seen.add(storage)
            tensors[name] = t.contiguous()
        text_meta = {
            str(k): v if isinstance(v, str) else json.dumps(_plain_json(v))
            for k, v in (metadata or {}).items()
        }
        with _atomic_path(path) as tmp:
            try:
                save_file(tensors, tmp, metadata=text_meta or None)
            except OSError:
                raise
            except Exception as err:
                raise CheckpointError(f"cannot write {path}: {type(err).__name__}: {err}") from err
    else:
        payload: Any = (
            state if not metadata else {"state_dict": state, "meta": _plain(dict(metadata), "meta")}
        )
        _torch_save(payload, path)
    logger.info("saved %d tensors to %s", len(state), path)
    return path


def _plain_json(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
