"""``inspect_checkpoint``: what is inside a checkpoint, and what a load into a model would do.

Without a model it describes the file: format, nested structure, which dict holds the weights, tensor
and parameter counts, dtypes, the devices the tensors were saved on (read from the file's storage
records, no GPU needed), grouped key prefixes, metadata, and whether optimizer state is present.
With a model (a backbone name built on the meta device, or an ``nn.Module``) or another checkpoint it
adds the :class:`~transferkit.load_report.LoadReport` of a dry run. Zip files are read with ``mmap``, so
large files inspect quickly; files that ``weights_only`` refuses are described, never executed.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "w.pt"
    >>> torch.save({"epoch": 3, "state_dict": torch.nn.Linear(2, 3).state_dict()}, path)
    >>> print(inspect_checkpoint(path).splitlines()[0])  # doctest: +ELLIPSIS
    checkpoint: w.pt (... KB, zip torch file)
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.errors import CheckpointError, ConfigError, LoadError, UnsafeCheckpointError
from transferkit.load_report import LoadReport, compact_keys
from transferkit.partial import load_partial
from transferkit.rename import Rule, normalize_rules, strip_wrappers

__all__ = [
    "inspect_checkpoint",
    "Inspection",
    "describe_object",
    "skeleton_from_state_dict",
    "scan_checkpoint",
    "ScanResult",
]


class Inspection(str):
    """What :func:`inspect_checkpoint` returns: the description (a ``str``), and whether a dry-run load fails.

    Attributes:
        load_fails: ``True`` when the dry run (``model=`` or ``against=``) found that the load would fail,
            so a caller (``transferkit inspect`` and its exit code) need not read the text.
    """

    load_fails: bool = False

    @classmethod
    def of(cls, text: str, load_fails: bool = False) -> Inspection:
        out = cls(text)
        out.load_fails = load_fails
        return out


logger = logging.getLogger(__name__)

# Buffers that are not parameters: excluded from the parameter count.
_STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_OPTIMIZER_KEYS = ("optimizer", "optimizers", "optimizer_states", "optimizer_state_dict", "optim", "opt")
_MAX_LINES = 40
_MAX_GLOBALS = 20  # globals listed beyond the dangerous ones


def inspect_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: str | nn.Module | None = None,
    num_classes: int | None = None,
    against: str | os.PathLike[str] | None = None,
    rules: Sequence[Rule | str] = (),
    salvage: bool = False,
    key: str | None = None,
    align: str = "auto",
) -> str:
    """Describe a checkpoint file, and optionally dry-run loading it into a model.

    Args:
        path: the checkpoint (any format ``transferkit.checkpoint`` reads).
        model: a backbone name for ``transferkit.backbones.create_model`` (built on the meta device, no
            weights) or an ``nn.Module`` (left untouched).
        num_classes: classes for a ``model`` given by name (required then).
        against: another checkpoint: report how this one's weights would load into that layout.
        rules: rename rules (objects or CLI strings) for the dry run.
        salvage: read a file that ``weights_only`` refuses with the restricted unpickler (no code runs).
        key: dotted path of the weights inside the checkpoint (``"state_dict"``, ``"models.G"``).
        align: ``load_partial``'s pairing mode for the dry run; a pairing by structure is listed pair by
            pair (the plan a load would follow).

    Returns:
        A multi-line, human-readable description.

    Raises:
        CheckpointError: the file cannot be read.
        ConfigError: bad arguments (``model`` and ``against`` together, a name without ``num_classes``).
    """
    from transferkit.checkpoint import load_checkpoint

    path = Path(path)
    if model is not None and against is not None:
        raise ConfigError(
            "inspect takes either a `model` or `against` another checkpoint, not both", param="against"
        )
    if isinstance(model, str) and num_classes is None:
        raise ConfigError(f"inspecting against backbone {model!r} needs `num_classes`", param="num_classes")
    rules_t = normalize_rules(rules)
    devices: Counter[str] = Counter()
    try:
        # load_checkpoint validates the path first (missing, a folder, damaged -> CheckpointError);
        # mmap=True only applies to zip files, so storages are mapped, not read
        obj = load_checkpoint(path, map_location=_recorder(devices), mmap=True, salvage=salvage)
    except UnsafeCheckpointError as exc:
        return Inspection.of("\n".join([_header(path), *_describe_unsafe(path, exc)]))
    lines = [_header(path)]
    if salvage:
        lines.extend(_describe_salvaged(obj))
    lines.extend(describe_object(obj, key=key, devices=devices, path=path))
    if model is None and against is None:
        return Inspection.of("\n".join(lines))

    state = _state_dict(obj, key)
    if against is not None:
        other = _state_dict(load_checkpoint(against, map_location="cpu"), None)
        target: nn.Module = skeleton_from_state_dict(other)
        title = f"dry run against {Path(against).name} ({len(other)} tensors)"
    elif isinstance(model, nn.Module):
        target, title = model, f"dry run into {type(model).__name__}"
    else:
        target, title = (
            _load_target(_build_meta_model(str(model), int(num_classes)), state),
            f"dry run into {model} ({num_classes} classes)",
        )  # type: ignore[arg-type]
    lines.append("")
    lines.append(title)
    text, fails = _dry_run(target, state, rules_t, path.name, align)
    lines.append(text)
    return Inspection.of("\n".join(lines), load_fails=fails)


# ---------------------------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class ScanResult:
    """A scanner's verdict on one file (:func:`scan_checkpoint`).

    Attributes:
        path: the file.
        verdict: ``"ok"`` (the default reader accepts it), ``"refused"`` (it would be refused: unknown
            globals, damaged, or beyond a budget) or ``"dangerous"`` (it names globals that can run code,
            import modules or touch files or the network).
        reason: one line saying why (empty when ok).
        globals: the globals it needs beyond ``weights_only`` (the full list, however long).
    """

    path: Path
    verdict: str
    reason: str = ""
    globals: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the file passes (what ``transferkit scan`` exits 0 for)."""
        return self.verdict == "ok"

    def line(self) -> str:
        """``PATH: ok``, ``PATH: refused: why`` or ``PATH: DANGEROUS: which``: one line for CI logs."""
        label = "DANGEROUS" if self.verdict == "dangerous" else self.verdict
        return f"{self.path}: {label}" + (f": {self.reason}" if self.reason else "")


def scan_checkpoint(path: str | os.PathLike[str]) -> ScanResult:
    """Say whether a checkpoint would load safely, as a pickle scanner would, without running anything.

    The file's pickles are scanned statically (every global classified, budgets checked, zip members
    checked); a file with no unsafe global is then read with ``weights_only=True`` and mmap, as
    :func:`~transferkit.checkpoint.load_checkpoint` would.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "w.pt"
        >>> torch.save({"w": torch.ones(2)}, path)
        >>> scan_checkpoint(path).verdict
        'ok'
    """
    from transferkit.checkpoint import describe_unsafe_globals, load_checkpoint
    from transferkit.checkpoint.verdicts import DANGEROUS, classify_global, summarize_globals

    path = Path(path)
    try:
        names = describe_unsafe_globals(path)
        if not names:
            load_checkpoint(path, mmap=True)
    except UnsafeCheckpointError as exc:
        names = list(exc.globals)
    except CheckpointError as exc:
        return ScanResult(path, "refused", _without_path(str(exc), path))
    if not names:
        return ScanResult(path, "ok")
    dangerous = any(classify_global(n).kind == DANGEROUS for n in names)
    reason = summarize_globals(names)
    if not dangerous:
        reason = f"weights_only would refuse it: {reason}"
    return ScanResult(path, "dangerous" if dangerous else "refused", reason, tuple(names))


def _without_path(message: str, path: Path) -> str:
    text = " ".join(message.split())
    return text[len(str(path)) + 2 :] if text.startswith(f"{path}: ") else text


# ----------------------------------------------------------------------------------------------- reading


def _recorder(devices: Counter[str]) -> Any:
    """A map_location that notes where each storage was saved and keeps it on the CPU."""

    def record(storage: Any, location: str) -> Any:
        devices[str(location)] += 1
        return storage

    return record


def _size(path: Path) -> str:
    n = path.stat().st_size
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"


def _header(path: Path) -> str:
    return f"checkpoint: {path.name} ({_size(path)}, {_format(path)})"


_FORMAT_LABELS = {
    "safetensors": "safetensors",
    "legacy": "legacy torch pickle (pre-1.6)",
    "tar": "legacy torch pickle (pre-1.6)",
}


def _format(path: Path) -> str:
    from transferkit.checkpoint.formats import read_head, sniff_format

    try:
        if zipfile.is_zipfile(path):
            return "zip torch file"
        head, size = read_head(path)
    except (OSError, zipfile.BadZipFile, ValueError):
        return "unknown format"
    kind = sniff_format(head, size)
    if kind == "pickle":
        return "legacy torch pickle (pre-1.6)" if head[:1] == b"\x80" else "plain pickle (protocol 0/1)"
    return _FORMAT_LABELS.get(kind, "unknown format")


def _describe_unsafe(path: Path, exc: UnsafeCheckpointError) -> list[str]:
    from transferkit.checkpoint import describe_unsafe_globals
    from transferkit.checkpoint.verdicts import DANGEROUS, classify_global

    names = list(exc.globals) or describe_unsafe_globals(path)
    verdicts = sorted((classify_global(n) for n in names), key=lambda v: v.kind != DANGEROUS)
    dangerous = [v for v in verdicts if v.kind == DANGEROUS]
    labels = {"data": "harmless data type", "unknown": "unknown class"}
    shown = dangerous + [v for v in verdicts if v.kind != DANGEROUS][:_MAX_GLOBALS]
    lines = [
        "refused by weights_only=True: the file needs globals beyond plain tensors and containers "
        "(nothing from it was executed)",
        f"globals it needs ({len(names)}, {len(dangerous)} dangerous):",
        *(
            f"  {v.name}  [{('DANGEROUS: ' + v.category) if v.kind == DANGEROUS else labels[v.kind]}]"
            for v in shown[:200]
        ),
    ]
    if len(names) > len(shown[:200]):
        lines.append(f"  ... and {len(names) - len(shown[:200])} more")
    if dangerous:
        lines.append(
            "DANGEROUS: do not load this file with trusted=True or allow-list these globals; to get the "
            "tensors out without running anything: `salvage`=True (load_checkpoint(..., salvage=True))"
        )
    else:
        lines.append(
            "to get the tensors out without running code: `salvage`=True "
            "(load_checkpoint(..., salvage=True)); "
            "a full unpickle (trusted=True) runs code from the file: only for files you trust"
        )
    return lines


def _describe_salvaged(obj: Any) -> list[str]:
    from transferkit.salvage import find_placeholders

    found = find_placeholders(obj)
    return [f"salvaged: {len(found)} global(s) replaced by inert placeholders: {', '.join(found) or '-'}"]


def _state_dict(obj: Any, key: str | None) -> dict[str, Any]:
    from transferkit.checkpoint import extract_state_dict

    return dict(extract_state_dict(obj, key))


# -------------------------------------------------------------------------------------------- description


def describe_object(
    obj: Any, *, key: str | None = None, devices: Mapping[str, int] | None = None, path: Path | None = None
) -> list[str]:
    """Describe a loaded checkpoint: structure, weights, dtypes, devices, prefixes, metadata, optimizer.

    Returns:
        Lines of text.
    """
    from transferkit.checkpoint import extract_state_dict

    if _is_weights(obj):
        lines = [f"structure: a plain state dict ({len(obj)} tensors)"]
    else:
        lines = ["structure:", *_tree(obj, depth=0)]
    try:
        state, where = extract_state_dict(obj, key, return_key=True)
    except CheckpointError as exc:
        if key is not None:
            raise  # a --key that names nothing is the caller's mistake, not a fact about the file
        lines.append(f"weights: not found ({exc})")
        return lines
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    elements = sum(v.numel() for v in tensors.values())
    params = sum(v.numel() for k, v in tensors.items() if not k.endswith(_STAT_SUFFIXES))
    with_stats = f" ({elements:,} elements with BatchNorm statistics)" if elements != params else ""
    lines.append(
        f"weights: {'at ' + repr(where) if where else 'the top-level dict'}: {len(tensors)} tensors, "
        f"{params:,} parameters{with_stats}, {_bytes(tensors)}"
    )
    dtypes = Counter(str(v.dtype).replace("torch.", "") for v in tensors.values())
    lines.append("dtypes: " + ", ".join(f"{d} ({n})" for d, n in dtypes.most_common()))
    if path is not None and _format(path) == "safetensors":
        lines.append("saved on: safetensors records no device (tensors load on the CPU)")
    elif devices:
        lines.append(
            "saved on: " + ", ".join(f"{d} ({n} storages)" for d, n in Counter(devices).most_common())
        )
    lines.append("key prefixes:")
    lines.extend(_prefixes(list(state)))
    lines.append("keys (grouped):")
    grouped = compact_keys(list(state))
    lines.extend("  " + k for k in grouped[:_MAX_LINES])
    if len(grouped) > _MAX_LINES:
        lines.append(f"  ... {len(grouped) - _MAX_LINES} more groups")
    lines.extend(_metadata(obj, where, path))
    lines.append(_optimizer(obj))
    return lines


def _items(value: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    """A loaded mapping's items; ``dict.items`` because a pickle can plant an ``items`` attribute."""
    return list(dict.items(value) if isinstance(value, dict) else value.items())


def _values(value: Mapping[Any, Any]) -> list[Any]:
    return [v for _, v in _items(value)]


def _bytes(tensors: Mapping[str, torch.Tensor]) -> str:
    n = sum(v.numel() * v.element_size() for v in tensors.values())
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _summary(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return f"tensor {value.item()!r} ({str(value.dtype).replace('torch.', '')})"
        return f"tensor {list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, Mapping):
        n_tensors = sum(isinstance(v, torch.Tensor) for v in _values(value))
        if value and n_tensors == len(value):
            return f"dict of {n_tensors} tensors"
        return f"dict ({len(value)} keys)"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, (int, float, bool, str)) or value is None:
        text = repr(value)
        return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
    stand_in = _placeholder(value)
    if stand_in is not None:
        return stand_in
    return type(value).__module__ + "." + type(value).__qualname__


def _placeholder(value: Any) -> str | None:
    """``Placeholder(__main__.Backbone)`` for a salvage stand-in (instance or class), else ``None``: its own
    type is a generated class in transferkit.salvage, which would look like a real transferkit class."""
    from transferkit.salvage import is_placeholder

    if is_placeholder(value):
        return f"Placeholder({value.target})"
    return None


def _label(name: Any) -> str:
    stand_in = _placeholder(name)  # e.g. Lightning keys its callbacks by class: the dotted name is the point
    if stand_in is not None:
        return stand_in
    return str(name) if len(str(name)) <= 60 else str(name)[:57] + "..."


def _is_weights(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in _values(value))
    )


def _tree(
    obj: Any, depth: int, max_depth: int = 2, max_items: int = 12, seen: set[int] | None = None
) -> list[str]:
    indent = "  " * (depth + 1)
    if not isinstance(obj, Mapping):
        return [f"{indent}{_summary(obj)}"]
    seen = set() if seen is None else seen
    seen.add(id(obj))
    lines = []
    items = _items(obj)
    for name, value in items[:max_items]:
        label = _label(name)
        if isinstance(value, Mapping | list | tuple) and id(value) in seen:
            # a container shown already (shared, or the dict itself): once is enough
            lines.append(f"{indent}{label}: {_summary(value)} (shown above)")
            continue
        lines.append(f"{indent}{label}: {_summary(value)}")
        # weights and optimizer state are summarised on their own lines below; do not list them here
        expand = isinstance(value, Mapping) and not _is_weights(value) and not _is_optimizer(value)
        if expand and depth < max_depth:
            lines.extend(_tree(value, depth + 1, max_depth, max_items, seen))
    if len(items) > max_items:
        lines.append(f"{indent}... {len(items) - max_items} more")
    return lines


def _prefixes(keys: list[str]) -> list[str]:
    top = Counter(k.split(".", 1)[0] for k in keys)
    lines = []
    for name, n in list(top.items())[:_MAX_LINES]:
        second = Counter(".".join(k.split(".")[:2]) for k in keys if k.split(".", 1)[0] == name and "." in k)
        detail = ""
        if 1 < len(second) <= 12:
            detail = "  [" + ", ".join(f"{s.split('.', 1)[1]} ({c})" for s, c in second.items()) + "]"
        lines.append(
            f"  {name}{'.' if any(k.startswith(name + '.') for k in keys) else ''}  {n} tensors{detail}"
        )
    return lines


def _metadata(obj: Any, where: str | None, path: Path | None) -> list[str]:
    lines = []
    if isinstance(obj, Mapping) and not _is_weights(obj):
        skip = {(where or "").split(".", 1)[0], *_OPTIMIZER_KEYS}
        for name, value in _items(obj):
            if name in skip or isinstance(value, Mapping) and _is_optimizer(value):
                continue
            if isinstance(value, (int, float, str, bool)) or (
                isinstance(value, torch.Tensor) and value.dim() == 0
            ):
                lines.append(f"  {name}: {_summary(value)}")
            elif isinstance(value, Mapping) and name in (
                "meta",
                "hyper_parameters",
                "hparams",
                "config",
                "args",
            ):
                for sub, v in _items(value)[:12]:
                    lines.append(f"  {name}.{sub}: {_summary(v)}")
    if path is not None and _format(path) == "safetensors":
        from transferkit.checkpoint.safetensors_file import read_safetensors_metadata

        meta = read_safetensors_metadata(path)
        lines.extend(f"  {k}: {v[:80]}" for k, v in meta.items())
        if not meta:
            lines.append("  (the safetensors header has no metadata)")
    return ["metadata:", *lines] if lines else ["metadata: none"]


def _is_optimizer(value: Mapping[str, Any]) -> bool:
    return "state" in value and "param_groups" in value


def _optimizer(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return "optimizer state: none"
    found = []
    for name, value in _items(obj):
        candidates: list[tuple[str, Any]] = []
        if isinstance(value, Mapping) and _is_optimizer(value):
            candidates = [(str(name), value)]
        elif name in _OPTIMIZER_KEYS and isinstance(value, (list, tuple)):
            candidates = [
                (f"{name}[{i}]", v)
                for i, v in enumerate(value)
                if isinstance(v, Mapping) and _is_optimizer(v)
            ]
        elif name in _OPTIMIZER_KEYS and isinstance(value, Mapping):
            candidates = [
                (f"{name}.{k}", v) for k, v in _items(value) if isinstance(v, Mapping) and _is_optimizer(v)
            ]
        for where, opt in candidates:
            state = opt["state"] if isinstance(opt["state"], Mapping) else {}
            slots = sorted({str(s) for per in _values(state) if isinstance(per, Mapping) for s in per})
            groups = opt["param_groups"] if isinstance(opt["param_groups"], list | tuple) else []
            lr = groups[0]["lr"] if groups and isinstance(groups[0], Mapping) and "lr" in groups[0] else None
            found.append(
                f"{where!r} ({len(groups)} param group(s), state for {len(state)} parameter(s)"
                f"{', slots ' + ', '.join(slots) if slots else ''}{f', lr {lr}' if lr is not None else ''})"
            )
    return "optimizer state: " + ("; ".join(found) if found else "none")


# ---------------------------------------------------------------------------------------------- dry runs


def skeleton_from_state_dict(state: Mapping[str, Any]) -> nn.Module:
    """A meta-device module with one parameter (or buffer, for BatchNorm statistics) per state-dict entry.

    Lets a checkpoint stand in for a model in a dry run (``inspect --against``) without allocating.

    Example:
        >>> m = skeleton_from_state_dict({"0.weight": torch.ones(2, 3), "0.running_mean": torch.zeros(2)})
        >>> m.state_dict()["0.weight"].shape, m.state_dict()["0.weight"].is_meta
        (torch.Size([2, 3]), True)
    """
    root = nn.Module()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        *path, leaf = key.split(".")
        module = root
        for part in path:
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        tensor = torch.empty(value.shape, dtype=value.dtype, device="meta")
        if key.endswith(_STAT_SUFFIXES) or not tensor.is_floating_point():
            module.register_buffer(leaf, tensor)
        else:
            module.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
    return root


def _build_meta_model(name: str, num_classes: int) -> nn.Module:
    from transferkit.backbones import create_model

    # Built on the meta device: the layout and shapes without allocating or initialising any weight.
    with torch.device("meta"):
        return create_model(name, num_classes, weights=None)


def _load_target(adapter: nn.Module, state: Mapping[str, Any]) -> nn.Module:
    """The module ``create_model(weights=...)`` would load this checkpoint into.

    A checkpoint in the network's own layout (``features.0.weight``) loads into the network inside the
    Adapter, so the report reads in the checkpoint's names; one saved from an Adapter
    (``backbone.features.0.weight``) loads into the Adapter itself.
    """
    inner = getattr(adapter, "backbone", None)
    if not isinstance(inner, nn.Module):
        return adapter
    adapter_layout = any(strip_wrappers(str(k)).startswith("backbone.") for k in state)
    return adapter if adapter_layout else inner


def _dry_run(
    target: nn.Module, state: Mapping[str, Any], rules: Sequence[Rule], source: str = "", align: str = "auto"
) -> tuple[str, bool]:
    """The dry run's report as text, and whether the load would fail."""
    try:
        report: LoadReport = load_partial(target, dict(state), rules=rules, dry_run=True, align=align)
    except LoadError as exc:
        report = getattr(exc, "report", None)  # type: ignore[assignment]
        if report is None:
            return f"a load would fail: {exc}", True
        report.source = source or report.source
        return f"{report}\na load would fail: {str(exc).splitlines()[0]}", True
    report.source = source or report.source
    return str(report), False
