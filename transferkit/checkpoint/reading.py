"""Reading checkpoints safely: :func:`load_checkpoint` and the torch and safetensors readers behind it.

Torch files are read with ``weights_only=True``; a file that needs more is refused with an
:class:`UnsafeCheckpointError` naming the globals (found by :mod:`.unsafe_globals`, nothing executed).
Read failures become one :class:`CheckpointError` that says what is wrong with the file.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from transferkit.checkpoint._files import (
    check_file,
    check_torch_zip,
    detect_format,
    pinned,
    remember_source,
)
from transferkit.checkpoint.formats import MapLocation, PathLike
from transferkit.checkpoint.safetensors_file import read_safetensors
from transferkit.checkpoint.unsafe_globals import FileScan, compressed_storages, scan_file, unsafe_globals_in
from transferkit.checkpoint.verdicts import DANGEROUS, classify_global, summarize_globals
from transferkit.errors import CheckpointError, ConfigError, TransferkitError, UnsafeCheckpointError

__all__ = ["load_checkpoint"]

# one logger for the whole package: the CLI quiets "transferkit.checkpoint" by name and prints the name
logger = logging.getLogger("transferkit.checkpoint")


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
            the CPU. Ignored for legacy and safetensors files. The tensors then read the file lazily: do
            not rewrite it in place while they are alive (the process gets SIGBUS). ``save_checkpoint`` over
            it is safe, since it replaces the file and the mapping keeps the old one; ``mmap=False`` reads
            everything into memory.
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
    path = check_file(path)
    if salvage:
        return _salvage(path, map_location)
    with pinned(path) as source:
        kind = detect_format(path, source)
        if kind == "safetensors":
            return read_safetensors(path, map_location, source)
        if kind == "zip":
            check_torch_zip(path, source)
        allowed = _resolve_safe_globals(safe_globals)
        # the static scan first: budgets, storage sizes and compression, before torch reads anything
        scan = scan_file(path, source) if not trusted else None
        if scan is not None and scan.kind in ("pickle", "zip-root"):
            raise _not_torch_file(path, source, scan, allowed)
        use_mmap = kind == "zip" and (_maps_to_cpu(map_location) if mmap is None else bool(mmap))
        compressed = scan.compressed if scan is not None else compressed_storages(source) if use_mmap else 0
        if use_mmap and compressed:
            # torch.load(mmap=True) maps the member's bytes as they lie in the file: deflated bytes would
            # come back as garbage weights, silently
            logger.info(
                "%s: %d storage member(s) are compressed (the file was re-zipped); reading without mmap",
                path,
                compressed,
            )
            use_mmap = False
        obj = _torch_load(path, source, map_location, trusted, allowed, use_mmap, scan)
    remember_source(obj, path)
    logger.debug("loaded %s (%s%s)", path, kind, ", mmap" if use_mmap else "")
    return obj


def _torch_load(
    path: Path,
    source: str,
    map_location: MapLocation,
    trusted: bool,
    allowed: list[Any],
    use_mmap: bool,
    scan: FileScan | None = None,
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
            raise _refusal(path, source, err, allowed, scan) from err
        raise CheckpointError(_read_failure(path, err).replace(source, str(path))) from err
    except (ImportError, AttributeError) as err:
        missing = _missing_class(err) if trusted else None
        if missing is None:
            raise CheckpointError(_read_failure(path, err).replace(source, str(path))) from err
        raise CheckpointError(
            f"{path}: a full unpickle (trusted=True) needs {missing} to rebuild the objects the file pickled "
            f"({type(err).__name__}: {err}); provide it and load again, or pass "
            "salvage=True to read the tensors without it (nothing from the file is executed)"
        ) from err
    except Exception as err:  # torch.load raises anything on damaged input; one clear error instead
        raise CheckpointError(_read_failure(path, err).replace(source, str(path))) from err


def _missing_class(err: BaseException) -> str | None:
    """What a full unpickle failed to import: ``"the package 'pytorch_lightning' installed"`` or ``"the class
    __main__.Backbone importable"``; ``None`` when the error is not about a missing module or class."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        return f"the package {err.name.split('.')[0]!r} installed"
    # pickle's own wording: "Can't get attribute 'Backbone' on <module '__main__' from '...'>"
    match = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", str(err))
    if match:
        return f"the class {match.group(2)}.{match.group(1)} importable"
    return None


def _salvage(path: Path, map_location: MapLocation) -> Any:
    from transferkit.salvage import salvage_load  # lazily: salvage is an optional, heavier path

    try:
        obj = salvage_load(path, map_location=map_location)
    except TransferkitError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path}: salvage failed ({type(err).__name__}: {err})") from err
    remember_source(obj, path)
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


def _refusal(
    path: Path, source: str, err: Exception, allowed: list[Any], scan: FileScan | None = None
) -> CheckpointError:
    """UnsafeCheckpointError naming the globals, or CheckpointError when the pickle is just damaged."""
    try:
        names = unsafe_globals_in(path, source, allowed, scan)
    except CheckpointError:
        names = []
    if not names:
        reason = str(err).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0][:300]
        return CheckpointError(f"{path}: the file is damaged or not a checkpoint ({reason})")
    return _unsafe(
        path,
        names,
        "refused by weights_only=True: the file needs globals beyond tensors and plain containers",
    )


def _unsafe(path: Path, names: list[str], what: str) -> UnsafeCheckpointError:
    """The refusal for a file naming ``names``: a bounded summary, dangerous ones first, and the ways
    forward, which never include trusted=True when a global is dangerous."""
    dangerous = [n for n in names if classify_global(n).kind == DANGEROUS]
    whole_model = any(n.startswith("torch.nn.modules.") for n in names)
    hint = (
        " It holds pickled nn.Module objects (a whole model saved with torch.save(model), or modules "
        "among its extras): those load only with trusted=True and their classes importable; prefer "
        "re-saving model.state_dict()."
        if whole_model and not dangerous
        else ""
    )
    salvage = (
        "load_checkpoint(..., salvage=True) reads the tensors without running anything (`salvage` with "
        "`init_checkpoint`, or transferkit inspect PATH `salvage`)."
    )
    if dangerous:
        forward = (
            f"DANGEROUS: it names {len(dangerous)} global(s) that can run code or touch the system; do not "
            f"load it with trusted=True or allow-list them. If you need its tensors, {salvage}"
        )
    else:
        forward = (
            "Ways forward: allow-list the ones you trust with load_checkpoint(path, safe_globals=[...]) (the "
            "classes, or 'module.Name' strings), or pass trusted=True for a file you trust (runs its code); "
            + salvage
        )
    message = (
        f"{path}: {what}: {summarize_globals(names)}. Nothing from the file was executed.{hint} {forward}"
    )
    return UnsafeCheckpointError(message, globals=names)


def _not_torch_file(path: Path, source: str, scan: FileScan, allowed: list[Any]) -> CheckpointError:
    """A plain pickle, or a zip with data.pkl at its root: torch.load cannot read either."""
    what = (
        f"a plain pickle (protocol {scan.protocol}), not a checkpoint torch.save wrote"
        if scan.kind == "pickle"
        else "a zip archive with data.pkl at its root, not inside a folder as torch.save writes it"
    )
    names = unsafe_globals_in(path, source, allowed, scan)
    if names:
        return _unsafe(path, names, f"{what}; torch.load cannot read it, and it names globals")
    return CheckpointError(
        f"{path}: {what}; torch.load cannot read it. It names no globals beyond tensors and containers: "
        "load_checkpoint(path, salvage=True) reads it without running anything"
    )


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
