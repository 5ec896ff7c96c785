"""What a pickle-based checkpoint would import, found by scanning its opcodes without executing any.

:func:`describe_unsafe_globals` is the public entry; :func:`_unsafe_globals` is what
:mod:`.reading` uses to name the globals behind a ``weights_only`` refusal.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from transferkit.checkpoint._files import PathLike, _check_file, _detect_format, _pinned
from transferkit.errors import CheckpointError, TransferkitError

__all__ = ["describe_unsafe_globals"]


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
