"""``load_partial`` and ``LoadReport``: load what fits from a checkpoint and say exactly what happened.

The pipeline: extract the state dict -> clean wrapper prefixes -> apply rename rules -> match every key
against the model -> check (strict, zero tensors, coverage) -> load through the model's own
``load_state_dict`` -> return a :class:`LoadReport`. Every check runs before the first tensor is written,
so when ``load_partial`` raises, the model is exactly as it was. The one exception is an error raised by
the model's *own* loading code (a ``_load_from_state_dict`` override or a hook) once writing has begun:
undoing it would need a second copy of the weights, so it is re-raised as a ``LoadError`` that says the
model may be partly written.

Example:
    >>> from torch import nn
    >>> src = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    >>> dst = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 5))
    >>> report = load_partial(dst, src)
    >>> report.loaded, list(report.mismatched)
    (['0.weight', '0.bias'], ['1.weight', '1.bias'])
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from transferkit.checkpoint import extract_state_dict, load_checkpoint
from transferkit.errors import ConfigError, LoadError, TransferkitError
from transferkit.rename import (
    Prefix,
    RenameOnLoadMixin,
    Rule,
    apply_rules,
    check_no_collisions,
    clean_keys,
    module_rule_renames,
    normalize_rules,
)

__all__ = ["LoadReport", "load_partial", "build_report", "compact_keys", "suggest_prefix_rule"]

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]


@dataclass
class LoadReport:
    """What a load did, key by key, in model-side names (after cleaning and renaming).

    Attributes:
        loaded: keys whose tensors were (or, in a dry run, would be) copied into the model.
        renamed: ``{checkpoint_key: model_key}`` for every key whose name changed (wrapper prefixes, rules).
        mismatched: ``{model_key: (checkpoint_shape, model_shape)}`` for keys skipped because shapes differ.
        missing: model keys the checkpoint did not provide (they keep their current values).
        unexpected: checkpoint keys the model has no place for.
        cast: ``{model_key: (checkpoint_dtype, model_dtype)}`` for loaded tensors whose dtype was converted.
        coverage: ``{top_level_module: fraction}`` of each module's parameter *elements* that were loaded
            (buffers such as BatchNorm running stats and ``num_batches_tracked`` are not counted). When all
            parameters sit under one module (an Adapter's ``backbone``), its children are listed instead.
        notes: free-text lines (wrapper prefixes stripped, head decisions, suggestions).
        dropped: checkpoint keys a rule dropped on purpose (a callable returned ``None``).
        loaded_params: parameter elements loaded.
        total_params: parameter elements in the model.
        source: a short description of where the weights came from.
        dry_run: True when nothing was written.
    """

    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, tuple[Shape, Shape]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    cast: dict[str, tuple[str, str]] = field(default_factory=dict)
    coverage: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    loaded_params: int = 0
    total_params: int = 0
    source: str = ""
    dry_run: bool = False

    @property
    def total_coverage(self) -> float:
        """Fraction of the model's parameter elements that were loaded (1.0 for a model with none)."""
        return self.loaded_params / self.total_params if self.total_params else 1.0

    @property
    def ok(self) -> bool:
        """True when nothing is missing (beyond ``num_batches_tracked``), unexpected or mismatched."""
        return not (self.mismatched or self.unexpected or _significant_missing(self.missing))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (shapes as lists).

        Example:
            >>> LoadReport(loaded=["w"]).to_dict()["loaded"]
            ['w']
        """
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "loaded": list(self.loaded),
            "renamed": dict(self.renamed),
            "mismatched": {k: [list(a), list(b)] for k, (a, b) in self.mismatched.items()},
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "cast": {k: list(v) for k, v in self.cast.items()},
            "coverage": dict(self.coverage),
            "total_coverage": self.total_coverage,
            "loaded_params": self.loaded_params,
            "total_params": self.total_params,
            "dropped": list(self.dropped),
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """One line: counts and overall parameter coverage."""
        n_ckpt = len(self.loaded) + len(self.mismatched) + len(self.unexpected)
        verb = "would load" if self.dry_run else "loaded"
        return (
            f"{verb} {len(self.loaded)}/{n_ckpt} checkpoint tensors "
            f"({self.loaded_params:,}/{self.total_params:,} parameters, {_pct(self.total_coverage)}); "
            f"renamed {len(self.renamed)}, skipped for shape {len(self.mismatched)}, "
            f"missing {len(self.missing)}, unexpected {len(self.unexpected)}, cast {len(self.cast)}"
        )

    def __str__(self) -> str:
        lines = [
            "LoadReport"
            + (f" ({self.source})" if self.source else "")
            + (" [dry run]" if self.dry_run else "")
        ]
        lines.append("  " + self.summary())
        if self.coverage:
            lines.append("coverage (fraction of parameters loaded, per top-level module)")
            cells = [f"{name} {_pct(frac)}" for name, frac in self.coverage.items()]
            lines.extend(_wrap(cells, 100))
        if self.mismatched:
            lines.append(f"skipped for shape ({len(self.mismatched)}): checkpoint -> model")
            by_shapes: dict[tuple[Shape, Shape], list[str]] = defaultdict(list)
            for key, pair in self.mismatched.items():
                by_shapes[pair].append(key)
            for (a, b), keys in by_shapes.items():
                lines.extend(f"  {k}  {list(a)} -> {list(b)}" for k in compact_keys(keys))
        for title, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("dropped by a rule", self.dropped),
        ):
            if keys:
                lines.append(f"{title} ({len(keys)})")
                lines.extend("  " + k for k in compact_keys(keys))
        if self.cast:
            lines.append(f"cast ({len(self.cast)})")
            by_pair: dict[tuple[str, str], list[str]] = defaultdict(list)
            for key, pair in self.cast.items():
                by_pair[pair].append(key)
            for (a, b), keys in by_pair.items():
                lines.extend(f"  {k}  {a} -> {b}" for k in compact_keys(keys))
        if self.renamed:
            lines.append(f"renamed ({len(self.renamed)})")
            lines.extend("  " + line for line in _compact_renames(self.renamed))
        if self.loaded:
            lines.append(f"loaded ({len(self.loaded)})")
            lines.extend("  " + k for k in compact_keys(self.loaded))
        if self.notes:
            lines.append("notes")
            lines.extend(f"  - {n}" for n in self.notes)
        return "\n".join(lines)


def _wrap(cells: list[str], width: int) -> list[str]:
    out, line = [], " "
    for cell in cells:
        if len(line) + len(cell) + 2 > width and line.strip():
            out.append(line)
            line = " "
        line += " " + cell + " "
    if line.strip():
        out.append(line.rstrip())
    return [o.rstrip() for o in out]


# ------------------------------------------------------------------------------------------- key compaction

_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")


def _format_numbers(nums: Iterable[int]) -> str:
    values = sorted(set(nums))
    runs: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        if prev - start >= 2:
            runs.append(f"{start}..{prev}")
        else:
            runs.extend(str(x) for x in range(start, prev + 1))
        if v is not None:
            start = prev = v
    return "{" + ",".join(runs) + "}"


def compact_keys(keys: Sequence[str]) -> list[str]:
    """Group keys that differ only in one number or in the last name, for display.

    Example:
        >>> compact_keys([f"layer1.{i}.conv1.weight" for i in range(3)])
        ['layer1.{0..2}.conv1.weight']
        >>> compact_keys(["bn.weight", "bn.bias", "fc.weight"])
        ['bn.{weight,bias}', 'fc.weight']
    """
    rows: list[list[str]] = [k.split(".") for k in keys]
    # 1. merge leaf names under the same parent (weight/bias/running_mean ...)
    rows = _merge_leaves(rows)
    # 2. merge trailing numbers, one segment position at a time, right to left
    depth = max((len(r) for r in rows), default=0)
    for pos in range(depth - 1, -1, -1):
        rows = _merge_numbers(rows, pos)
    return [".".join(r) for r in rows]


def _merge_leaves(rows: list[list[str]]) -> list[list[str]]:
    groups: dict[tuple[str, ...], list[str]] = {}
    for r in rows:
        groups.setdefault(tuple(r[:-1]), []).append(r[-1])
    out = []
    for parent, leaves in groups.items():
        leaf = leaves[0] if len(leaves) == 1 else "{" + ",".join(dict.fromkeys(leaves)) + "}"
        out.append([*parent, leaf])
    return out


def _merge_numbers(rows: list[list[str]], pos: int) -> list[list[str]]:
    groups: dict[tuple, list[int]] = {}  # insertion-ordered: the output keeps the first-seen order
    for r in rows:
        match = _TRAILING_NUMBER.match(r[pos]) if pos < len(r) else None
        if match is None or str(int(match.group(2))) != match.group(2):  # "01" is a name, not a number
            groups.setdefault(("literal", tuple(r)), [])
            continue
        groups.setdefault(("num", tuple(r[:pos]), match.group(1), tuple(r[pos + 1 :])), []).append(
            int(match.group(2))
        )
    out = []
    for sig, nums in groups.items():
        if sig[0] == "literal":
            out.append(list(sig[1]))
            continue
        _, head, stem, tail = sig
        seg = f"{stem}{nums[0]}" if len(set(nums)) == 1 else stem + _format_numbers(nums)
        out.append([*head, seg, *tail])
    return out


def _compact_renames(renamed: Mapping[str, str]) -> list[str]:
    """Summarise renames as prefix swaps (``module.* -> *``) where many keys share one."""
    groups: dict[tuple[str, str], list[str]] = {}
    for old, new in renamed.items():
        o, n = old.split("."), new.split(".")
        common = 0
        while common < min(len(o), len(n)) - 0 and o[-1 - common] == n[-1 - common]:
            common += 1
            if common == min(len(o), len(n)):
                break
        op = ".".join(o[: len(o) - common])
        np_ = ".".join(n[: len(n) - common])
        groups.setdefault((op, np_), []).append(old)
    lines = []
    for (op, np_), olds in groups.items():
        if len(olds) == 1:
            lines.append(f"{olds[0]} -> {renamed[olds[0]]}")
        else:
            left = f"{op}.*" if op else "*"
            right = f"{np_}.*" if np_ else "*"
            lines.append(f"{left} -> {right}  ({len(olds)} keys)")
    return lines


# ----------------------------------------------------------------------------------------------- the report


def _significant_missing(missing: Iterable[str]) -> list[str]:
    # Old checkpoints predate BatchNorm's num_batches_tracked; torch itself fills it in, so it never counts.
    return [k for k in missing if not k.endswith("num_batches_tracked")]


def build_report(
    model_state: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    *,
    renamed: Mapping[str, str] | None = None,
    mismatched: Mapping[str, tuple[Shape, Shape]] | None = None,
    unexpected: Sequence[str] | None = None,
    prefix: str = "",
    notes: Sequence[str] = (),
    dropped: Sequence[str] = (),
    source: str = "",
    dry_run: bool = False,
) -> LoadReport:
    """Classify keys and compute coverage.

    Args:
        model_state: the model's ``state_dict(keep_vars=True)`` (parameters are ``nn.Parameter``).
        checkpoint: ``{model_key: tensor}`` of what will load (model-side names, shapes already checked);
            keys not in ``model_state`` become ``unexpected``.
        renamed / mismatched: already decided by the caller.
        unexpected: extra unexpected keys found by the caller.
        prefix: prepended to every key in the report (a module nested inside a bigger model).

    Returns:
        The :class:`LoadReport`.
    """
    mismatched = dict(mismatched or {})
    loaded = [k for k in checkpoint if k in model_state]
    extra = [k for k in checkpoint if k not in model_state]
    mismatched_rel = {k[len(prefix) :] for k in mismatched}
    taken = set(loaded) | mismatched_rel
    missing = [k for k in model_state if k not in taken]
    cast: dict[str, tuple[str, str]] = {}
    for k in loaded:
        src, dst = checkpoint[k], model_state[k]
        if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.dtype != dst.dtype:
            cast[prefix + k] = (str(src.dtype).replace("torch.", ""), str(dst.dtype).replace("torch.", ""))
    coverage, loaded_params, total_params = _coverage(model_state, set(loaded))
    return LoadReport(
        loaded=[prefix + k for k in loaded],
        renamed=dict(renamed or {}),
        mismatched=mismatched,
        missing=[prefix + k for k in missing],
        unexpected=[*(unexpected or ()), *(prefix + k for k in extra)],
        cast=cast,
        coverage=coverage,
        notes=list(notes),
        dropped=list(dropped),
        loaded_params=loaded_params,
        total_params=total_params,
        source=source,
        dry_run=dry_run,
    )


def _coverage(model_state: Mapping[str, Any], loaded: set[str]) -> tuple[dict[str, float], int, int]:
    """Fraction of parameter elements loaded per top-level module (one level down while there is only one)."""
    params = [(key, value.numel()) for key, value in model_state.items() if isinstance(value, nn.Parameter)]
    depth = 1
    # A wrapper such as an Adapter holds everything under one name ("backbone"); show its parts instead.
    while len({_group(k, depth) for k, _ in params}) == 1 and all(k.count(".") >= depth for k, _ in params):
        depth += 1
    total: dict[str, int] = {}
    done: dict[str, int] = {}
    for key, n in params:
        group = _group(key, depth)
        total[group] = total.get(group, 0) + n
        done[group] = done.get(group, 0) + (n if key in loaded else 0)
    coverage = {group: (done[group] / n if n else 1.0) for group, n in total.items()}
    return coverage, sum(done.values()), sum(total.values())


def _group(key: str, depth: int) -> str:
    return ".".join(key.split(".")[:depth])


def _pct(fraction: float) -> str:
    """A percentage that never rounds a partial load up to 100% (or a tiny one down to 0%)."""
    if fraction in (0.0, 1.0):
        return f"{fraction:.0%}"
    text = f"{fraction:.1%}"
    if text == "100.0%":
        return ">99.9%"
    return "<0.1%" if text == "0.0%" else text


def _module_coverage(model_state: Mapping[str, Any], loaded: set[str], module: str) -> float | None:
    head = module.rstrip(".")
    total = done = 0
    for key, value in model_state.items():
        if isinstance(value, nn.Parameter) and (key == head or key.startswith(head + ".") or not head):
            total += value.numel()
            done += value.numel() if key in loaded else 0
    return done / total if total else None


# ------------------------------------------------------------------------------------------- the suggestion


def suggest_prefix_rule(
    checkpoint_keys: Sequence[str],
    model_keys: Sequence[str],
    *,
    checkpoint_shapes: Mapping[str, Shape] | None = None,
    model_shapes: Mapping[str, Shape] | None = None,
    max_prefixes: int = 64,
) -> tuple[Prefix, int] | None:
    """Find the prefix swap that maps the most ``checkpoint_keys`` onto ``model_keys``.

    With both shape maps given, a key only counts as a hit when its shape fits too.

    Returns:
        ``(rule, hits)`` or ``None`` when no swap matches anything.

    Example:
        >>> suggest_prefix_rule(["enc.0.weight", "enc.0.bias"], ["backbone.0.weight", "backbone.0.bias"])
        (Prefix('enc.', 'backbone.'), 2)
    """
    by_suffix: dict[str, set[str]] = defaultdict(set)
    for m in model_keys:
        parts = m.split(".")
        for i in range(len(parts)):
            by_suffix[".".join(parts[i:])].add(".".join(parts[:i]) + ("." if i else ""))
    votes: Counter[tuple[str, str]] = Counter()
    for k in checkpoint_keys:
        parts = k.split(".")
        seen: set[tuple[str, str]] = set()
        for i in range(len(parts)):
            prefixes = by_suffix.get(".".join(parts[i:]), ())
            if len(prefixes) > max_prefixes:  # a bare "weight" matches everything; it says nothing
                continue
            old = ".".join(parts[:i]) + ("." if i else "")
            for new in prefixes:
                if old != new and (old, new) not in seen:
                    seen.add((old, new))
                    votes[(old, new)] += 1
    if not votes:
        return None
    targets = set(model_keys)
    check_shapes = checkpoint_shapes is not None and model_shapes is not None

    def fits(key: str, target: str) -> bool:
        if target not in targets:
            return False
        return not check_shapes or checkpoint_shapes.get(key) == model_shapes.get(target)  # type: ignore[union-attr]

    best: tuple[Prefix, int] | None = None
    for (old, new), _ in votes.most_common(8):
        rule = Prefix(old, new)
        hits = sum(1 for k in checkpoint_keys if fits(k, rule(k)))
        # prefer more hits, then the shortest (most general) prefixes
        if (
            best is None
            or hits > best[1]
            or (hits == best[1] and len(old) + len(new) < len(best[0].old) + len(best[0].new))
        ):
            best = (rule, hits)
    return best if best and best[1] else None


def _first_segments(keys: Iterable[str]) -> str:
    counts = Counter(k.split(".", 1)[0] + ("." if "." in k else "") for k in keys)
    return ", ".join(f"{p!r} ({n})" for p, n in counts.most_common(4))


# --------------------------------------------------------------------------------------------- load_partial


def _unwrap(model: nn.Module, notes: list[str]) -> nn.Module:
    """Load into the wrapped module of DataParallel/DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            notes.append(f"loaded into the module inside {type(model).__name__}")
            model = model.module
        elif (
            isinstance(getattr(model, "_orig_mod", None), nn.Module)
            and type(model).__name__ == "OptimizedModule"
        ):
            notes.append("loaded into the original module inside torch.compile's wrapper")
            model = model._orig_mod
        else:
            return model


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    if isinstance(source, nn.Module):
        return f"module {type(source).__name__}"
    if isinstance(source, Mapping):
        return (
            "state dict" if all(isinstance(v, torch.Tensor) for v in source.values()) else "checkpoint dict"
        )
    return type(source).__name__


def _is_state_value(key: Any, value: Any) -> bool:
    # `get_extra_state()` values (any picklable object) sit in real state dicts next to the tensors
    return isinstance(value, torch.Tensor) or (isinstance(key, str) and key.endswith("_extra_state"))


def _check_no_lazy(model_state: Mapping[str, Any]) -> None:
    """Refuse lazy (uninitialised) parameters up front: their shapes, which every check needs, are unknown."""
    lazy = [k for k, v in model_state.items() if isinstance(v, torch.Tensor) and is_lazy(v)]
    if lazy:
        raise ConfigError(
            f"the model has {len(lazy)} uninitialised lazy parameter(s) or buffer(s) "
            f"({', '.join(compact_keys(lazy)[:4])}); load_partial needs their shapes to match the checkpoint. "
            "Run one forward pass on a dummy input first, or use the non-lazy module (e.g. nn.Linear)"
        )


def _resolve_source(
    source: Any, *, key: str | None, map_location: Any, salvage: bool, trusted: bool
) -> dict[str, Any]:
    """Turn a path, module, state dict or checkpoint dict into a flat ``{key: tensor}`` dict."""
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, (str, os.PathLike)):
        obj = load_checkpoint(source, map_location=map_location, trusted=trusted, salvage=salvage)
        return dict(extract_state_dict(obj, key))
    if isinstance(source, Mapping):
        if key is None and all(_is_state_value(k, v) for k, v in source.items()):
            return dict(source)
        return dict(extract_state_dict(source, key))
    raise ConfigError(
        "load_partial source must be a path, a state dict, a checkpoint dict or an nn.Module; "
        f"got {type(source).__name__}"
    )


def load_partial(
    model: nn.Module,
    source: Any,
    *,
    rules: Sequence[Rule | str] | Rule | str = (),
    strict: bool = False,
    key: str | None = None,
    map_location: Any = "cpu",
    min_coverage: float | Mapping[str, float] | None = None,
    salvage: bool = False,
    trusted: bool = False,
    assign: bool = False,
    dry_run: bool = False,
) -> LoadReport:
    """Load every tensor of ``source`` that fits ``model``; report the rest. All checks precede writing.

    Wrapper prefixes (``module.``, ``_orig_mod.``, Lightning's ``model.`` when it helps) are stripped,
    then ``rules`` run in order, then the renames of any :class:`~transferkit.rename.RenameOnLoadMixin`
    inside the model are predicted, and every key is classified. Tensors whose shape differs are skipped;
    dtypes are cast to the model's. Loading goes through ``model.load_state_dict(..., strict=False)`` so
    the model's own ``_load_from_state_dict`` overrides and hooks run. Coverage counts parameter elements
    only; buffers (running stats, ``num_batches_tracked``) are reported but never count against it.

    Args:
        model: the target; DataParallel/DDP/torch.compile wrappers are looked through.
        source: a checkpoint path (any format ``transferkit.checkpoint`` reads), a state dict, a loaded
            checkpoint dict (the weights are found inside), or another ``nn.Module``.
        rules: :class:`~transferkit.rename.Prefix`, :class:`~transferkit.rename.Regex`, callables, or
            CLI strings (``"old.=>new."``, ``"re:PAT=>REPL"``), applied after wrapper cleaning.
        strict: raise when anything is missing, unexpected or skipped for shape (a missing
            ``num_batches_tracked`` is tolerated, as torch tolerates it).
        key: dotted path of the weights inside a checkpoint (``"state_dict"``, ``"models.G"``).
        map_location: where tensors read from a file go (``"cpu"`` reads zip files with mmap).
        min_coverage: a fraction of the whole model's parameters that must load, or
            ``{module_name: fraction}`` for chosen modules (any qualified module name).
        salvage: read files that ``weights_only`` refuses with the restricted unpickler.
        trusted: allow a full (code-executing) unpickle; only for files you trust.
        assign: pass ``assign=True`` to ``load_state_dict``: parameters become the checkpoint's tensors
            (build the model on the meta device, then this materialises it without a second copy).
        dry_run: compute the report and run the checks, write nothing (works on a meta-device model).

    Returns:
        The :class:`LoadReport` (also kept on the error as ``exc.report`` when a check fails).

    Raises:
        LoadError: zero tensors would load (with a suggested rule), ``strict`` or ``min_coverage`` failed,
            a rename conflict, or a RenameOnLoadMixin with ``on_shape_mismatch="error"`` saw a mismatch
            (all raised before anything is written); or the model's own loading code raised while
            loading (the model may then be partly written, and the message says so).
        CheckpointError: the file cannot be read.
        ConfigError: bad arguments (e.g. a meta-device model without ``assign``/``dry_run``, a model with
            uninitialised lazy parameters).

    Example:
        >>> from torch import nn
        >>> ckpt = {"module.weight": torch.ones(2, 3), "module.bias": torch.zeros(2)}
        >>> report = load_partial(nn.Linear(3, 2), ckpt)
        >>> report.loaded
        ['weight', 'bias']
    """
    notes: list[str] = []
    target = _unwrap(model, notes)
    rules_t = normalize_rules(rules)
    model_state = target.state_dict(keep_vars=True)
    _check_no_lazy(model_state)
    state = _resolve_source(source, key=key, map_location=map_location, salvage=salvage, trusted=trusted)
    description = _describe(source)

    raw_keys = list(state)
    cleaned, clean_notes = clean_keys(raw_keys, model_state, rules_t, model=target)
    notes.extend(clean_notes)
    passed, final = _rename_chain(target, raw_keys, cleaned, rules_t)

    mismatched, fits, to_load = _classify(state, passed, final, model_state)
    report = build_report(
        model_state,
        fits,
        renamed={raw: new for raw, new in final.items() if new is not None and new != raw},
        mismatched=mismatched,
        notes=notes,
        dropped=[raw for raw, new in final.items() if new is None],
        source=description,
        dry_run=dry_run,
    )
    _add_hint(report, state, final, model_state)
    _check(
        report,
        target,
        model_state,
        state,
        final,
        strict=strict,
        min_coverage=min_coverage,
        assign=assign,
        dry_run=dry_run,
    )
    if dry_run:
        return report
    renamed_any = any(passed[r] != r for r in raw_keys)
    _write(
        target,
        _with_versions(to_load, target, None if renamed_any else getattr(state, "_metadata", None)),
        model_state,
        {passed[r]: final[r] for r in raw_keys if final[r] is not None},
        assign,
        report,
    )
    if isinstance(target, RenameOnLoadMixin):
        # its own _load_from_state_dict saw only the filtered dict; the full picture is this report
        target.load_report = report
    logger.info("load_partial(%s): %s", description, report.summary())
    return report


def _classify(
    state: Mapping[str, Any],
    passed: Mapping[str, str | None],
    final: Mapping[str, str | None],
    model_state: Mapping[str, Any],
) -> tuple[dict[str, tuple[Shape, Shape]], dict[str, Any], dict[str, Any]]:
    """Split the checkpoint into skipped-for-shape, what fits (model names), and what to pass to the model."""
    mismatched: dict[str, tuple[Shape, Shape]] = {}
    fits: dict[str, Any] = {}  # model key -> checkpoint tensor (keys unknown to the model become unexpected)
    to_load: dict[str, Any] = {}  # key as load_state_dict receives it -> tensor
    for raw, name in final.items():
        if name is None:
            continue
        value, mine = state[raw], model_state.get(name)
        if isinstance(value, torch.Tensor) and isinstance(mine, torch.Tensor) and value.shape != mine.shape:
            mismatched[name] = (tuple(value.shape), tuple(mine.shape))
            continue
        fits[name] = value
        if name in model_state:
            to_load[passed[raw]] = value  # type: ignore[index]
    return mismatched, fits, to_load


def _add_hint(
    report: LoadReport,
    state: Mapping[str, Any],
    final: Mapping[str, str | None],
    model_state: Mapping[str, Any],
) -> None:
    """Note a prefix swap that would load most of the unexpected keys into missing ones."""
    if not (report.unexpected and report.missing):
        return
    shapes = _shapes(state, final, model_state)
    hint = suggest_prefix_rule(report.unexpected, _significant_missing(report.missing), **shapes)
    if hint is not None and hint[1] * 2 >= len(report.unexpected):
        report.notes.append(f"the rule {hint[0]!r} (CLI --rule '{hint[0]}') would load {hint[1]} more key(s)")


def _rename_chain(
    target: nn.Module, raw_keys: Sequence[str], cleaned: Mapping[str, str], rules: Sequence[Rule]
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """raw key -> the key load_state_dict receives (after rules) -> the model key (after mixin renames)."""
    passed: dict[str, str | None] = {raw: apply_rules(cleaned[raw], rules) for raw in raw_keys}
    check_no_collisions(passed)
    through_mixins = module_rule_renames(target, [p for p in passed.values() if p is not None])
    final = {raw: (None if p is None else through_mixins[p]) for raw, p in passed.items()}
    check_no_collisions(final)
    return passed, final


def _fail(message: str, report: LoadReport) -> LoadError:
    exc = LoadError(message)
    exc.report = report  # type: ignore[attr-defined]  # callers (inspect, the CLI) show it
    return exc


def _check(
    report: LoadReport,
    target: nn.Module,
    model_state: Mapping[str, Any],
    state: Mapping[str, Any],
    final: Mapping[str, str | None],
    *,
    strict: bool,
    min_coverage: float | Mapping[str, float] | None,
    assign: bool,
    dry_run: bool,
) -> None:
    """Every reason to refuse, decided before a single tensor is written."""
    _check_mixin_policies(report, target)
    if not report.loaded:
        raise _fail(_zero_message(report, model_state, state, final), report)
    if strict and not report.ok:
        raise _fail(
            "strict load failed: the checkpoint and the model differ (nothing was written)\n"
            f"{report}\nhint: pass strict=False to load what fits, or add rename rules",
            report,
        )
    if min_coverage is not None:
        _check_coverage(report, model_state, min_coverage)
    if not dry_run and not assign:
        meta = [
            k
            for k in report.loaded
            if isinstance(model_state.get(k), torch.Tensor) and model_state[k].is_meta
        ]
        if meta:
            raise ConfigError(
                f"{len(meta)} target tensors are on the meta device (e.g. {meta[0]!r}); copying into them "
                "does nothing. Pass assign=True to materialise them from the checkpoint, or dry_run=True "
                "to only check"
            )


def _check_mixin_policies(report: LoadReport, target: nn.Module) -> None:
    for name, module in target.named_modules():
        if not isinstance(module, RenameOnLoadMixin) or module.on_shape_mismatch != "error":
            continue
        prefix = f"{name}." if name else ""
        bad = {k: v for k, v in report.mismatched.items() if k.startswith(prefix)}
        if bad:
            listing = "; ".join(f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, (a, b) in bad.items())
            raise _fail(
                f"{type(module).__name__} at {name or '<root>'!r} has on_shape_mismatch='error' and the "
                f"checkpoint differs in shape: {listing}; nothing was written",
                report,
            )


def _shapes(
    state: Mapping[str, Any], final: Mapping[str, str | None], model_state: Mapping[str, Any]
) -> dict[str, dict[str, Shape]]:
    """Shapes by model-side name, for suggestions that only count keys whose shapes fit."""
    return {
        "checkpoint_shapes": {
            name: tuple(state[raw].shape)
            for raw, name in final.items()
            if name is not None and isinstance(state[raw], torch.Tensor)
        },
        "model_shapes": {k: tuple(v.shape) for k, v in model_state.items() if isinstance(v, torch.Tensor)},
    }


def _zero_message(
    report: LoadReport,
    model_state: Mapping[str, Any],
    state: Mapping[str, Any],
    final: Mapping[str, str | None],
) -> str:
    if not state:
        return "the checkpoint holds no tensors; nothing was written. Check `key=` points at the weights"
    ckpt_keys = [k for k in final.values() if k is not None]
    model_keys = list(model_state)
    if not ckpt_keys:
        return f"no tensor loaded: the rules dropped all {len(final)} checkpoint keys; nothing was written"
    if report.mismatched:
        first = next(iter(report.mismatched))
        a, b = report.mismatched[first]
        message = (
            f"no tensor loaded: {len(report.mismatched)} of {len(ckpt_keys)} checkpoint keys match model "
            f"keys by name but all differ in shape (e.g. {first!r}: checkpoint {list(a)} vs model {list(b)}) "
            "and "
            f"{len(report.unexpected)} have no counterpart; nothing was written. Is this checkpoint for a "
            "different architecture or size?"
        )
    else:
        message = (
            f"no tensor loaded: none of the {len(ckpt_keys)} checkpoint keys (after cleaning and rules) "
            f"matches one of the model's {len(model_keys)} keys; nothing was written. Checkpoint keys start "
            f"with {_first_segments(ckpt_keys)}, e.g. {ckpt_keys[0]!r}; model keys with "
            f"{_first_segments(model_keys)}, e.g. {model_keys[0] if model_keys else '-'!r}."
        )
    suggestion = suggest_prefix_rule(ckpt_keys, model_keys, **_shapes(state, final, model_state))
    if suggestion is not None and suggestion[1] * 2 < len(ckpt_keys):
        suggestion = None  # a swap that fits a few keys by coincidence of shape is not a fix
    if suggestion is not None:
        rule, hits = suggestion
        message += (
            f" The rule {rule!r} would load {hits} of {len(ckpt_keys)} keys: pass rules=[{rule!r}] "
            f"(CLI: --rule '{rule}')."
        )
    elif not report.mismatched:
        message += " No prefix swap aligns them; write Regex rules or a callable."
    return message


def _check_coverage(
    report: LoadReport, model_state: Mapping[str, Any], min_coverage: float | Mapping[str, float]
) -> None:
    wanted = {"": min_coverage} if isinstance(min_coverage, (int, float)) else dict(min_coverage)
    loaded = set(report.loaded)
    for module, fraction in wanted.items():
        if not 0.0 <= float(fraction) <= 1.0:
            raise ConfigError(
                f"min_coverage for {module or 'the model'!r} must be within [0, 1]; got {fraction!r}"
            )
        got = _module_coverage(model_state, loaded, module)
        if got is None:
            tops = ", ".join(report.coverage) or "-"
            raise ConfigError(
                f"min_coverage names {module!r}, which has no parameters in the model; "
                f"top-level modules: {tops}"
            )
        if got < fraction:
            raise _fail(
                f"coverage of {module or 'the model'!r} is {got:.1%} of its parameters, below min_coverage "
                f"{fraction:.1%}; nothing was written\n{report}",
                report,
            )


def _with_versions(
    to_load: dict[str, Any], target: nn.Module, source_versions: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Attach per-module ``version`` metadata, as ``torch.load`` gives ``model.state_dict()`` output.

    ``load_state_dict`` hands each module ``state_dict._metadata[prefix]``; modules whose loading depends
    on it (torchvision's MNASNet refuses ``version=None``) need it on the filtered dict too. The file's own
    versions win where its prefixes are the model's (no renames); elsewhere the model's current ones apply.
    """
    versions: dict[str, Any] = {
        prefix: {"version": module._version} for prefix, module in target.named_modules()
    }
    for prefix, meta in (source_versions or {}).items():
        if prefix in versions and isinstance(meta, Mapping):
            versions[prefix] = dict(meta)
    out = OrderedDict(to_load)
    out._metadata = versions  # type: ignore[attr-defined]
    return out


def _write(
    target: nn.Module,
    to_load: dict[str, Any],
    model_state: Mapping[str, Any],
    passed_to_final: Mapping[str, str | None],
    assign: bool,
    report: LoadReport,
) -> None:
    if assign:
        # assign=True adopts the checkpoint tensor as is, so dtype and (real) device must already be right.
        for passed_key, value in to_load.items():
            mine = model_state.get(passed_to_final[passed_key])  # type: ignore[arg-type]
            if isinstance(value, torch.Tensor) and isinstance(mine, torch.Tensor):
                device = value.device if mine.is_meta else mine.device
                if value.dtype != mine.dtype or value.device != device:
                    to_load[passed_key] = value.to(device=device, dtype=mine.dtype)
    try:
        result = target.load_state_dict(to_load, strict=False, assign=assign)
    except Exception as exc:
        # Every check of transferkit's passed; this came from the model's own loading code (an override of
        # _load_from_state_dict, a hook). Undoing its partial writes would need a second copy of the
        # weights, which the memory budget of a load does not allow: say so instead of pretending.
        if isinstance(exc, TransferkitError) and not isinstance(exc, LoadError):
            raise
        raise _fail(
            f"the model's own loading code raised {type(exc).__name__}: {exc}. transferkit's checks had all "
            "passed, so tensors of modules that load_state_dict visited before the failing one may already "
            "be written; reload the model (or its weights) before using it",
            report,
        ) from exc
    if result.unexpected_keys:
        # a custom _load_from_state_dict consumed keys differently than predicted: say so, do not hide it
        report.notes.append(
            f"the model's own loading code left {len(result.unexpected_keys)} key(s) unused: "
            f"{', '.join(compact_keys(result.unexpected_keys))}"
        )
    if assign and report.missing:
        still_meta = [
            k
            for k in report.missing
            if isinstance(model_state.get(k), torch.Tensor) and model_state[k].is_meta
        ]
        if still_meta:
            report.notes.append(
                f"{len(still_meta)} tensor(s) not in the checkpoint are still on the meta device: "
                f"{', '.join(compact_keys(still_meta))}; initialise them before use"
            )
