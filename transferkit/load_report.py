"""``LoadReport``: what a load did, key by key, and the readable table it prints as.

Holds the report dataclass, :func:`build_report` (classify keys against a model's state dict and compute
per-module parameter coverage), and the display helpers behind the table: :func:`compact_keys` groups
keys that differ in one number (``layer1.{0..2}.conv1.weight``) or in the last name
(``bn.{weight,bias}``), renames are summarised as prefix swaps, pairs made by structure as first..last
runs (:func:`compact_pairs`), and percentages never round a partial load up to 100%. :func:`~transferkit.partial.load_partial` builds and returns the report; this module
knows nothing of checkpoints or rename rules.

Example:
    >>> from torch import nn
    >>> model = nn.Linear(3, 2)
    >>> report = build_report(model.state_dict(keep_vars=True), {"weight": torch.ones(2, 3)})
    >>> report.missing, report.coverage
    (['bias'], {'weight': 1.0, 'bias': 0.0})
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["LoadReport", "build_report", "compact_keys", "compact_pairs"]

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
        method: how checkpoint tensors were paired with the model's: ``"names"`` (keys after cleaning
            and rules) or ``"structure"`` (order, shapes and module grouping; see :mod:`transferkit.align`).
        aligned: ``{checkpoint_key: model_key}`` of every pair made by structure (empty for ``"names"``).
        unwritten: model keys whose checkpoint tensor was offered but that the model's own loading code (a
            ``_load_from_state_dict`` override, a hook) did not write; they are in ``missing`` too.
        verified: the largest output difference from a reference model (``load_partial(verify=...)``),
            or ``None`` when not verified.
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
    method: str = "names"
    aligned: dict[str, str] = field(default_factory=dict)
    unwritten: list[str] = field(default_factory=list)
    verified: float | None = None

    @property
    def total_coverage(self) -> float:
        """Fraction of the model's parameter elements that were loaded (1.0 for a model with none)."""
        return self.loaded_params / self.total_params if self.total_params else 1.0

    @property
    def ok(self) -> bool:
        """True when nothing is missing (beyond ``num_batches_tracked``), unexpected or mismatched."""
        return not (self.mismatched or self.unexpected or significant_missing(self.missing))

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
            "method": self.method,
            "aligned": dict(self.aligned),
            "unwritten": list(self.unwritten),
            "verified": self.verified,
        }

    def summary(self) -> str:
        """One line: counts and overall parameter coverage."""
        n_ckpt = len(self.loaded) + len(self.mismatched) + len(self.unexpected) + len(self.unwritten)
        verb = "would load" if self.dry_run else "loaded"
        how = " aligned by structure" if self.method == "structure" else ""
        return (
            f"{verb} {len(self.loaded)}/{n_ckpt} checkpoint tensors{how} "
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
            lines.extend(_by_pair(self.mismatched, lambda a, b: f"{list(a)} -> {list(b)}"))
        for title, keys in (
            ("missing", self.missing),
            ("offered but not written by the model's own loading code", self.unwritten),
            ("unexpected", self.unexpected),
            ("dropped by a rule", self.dropped),
        ):
            if keys:
                lines.append(f"{title} ({len(keys)})")
                lines.extend("  " + k for k in compact_keys(keys))
        if self.cast:
            lines.append(f"cast ({len(self.cast)})")
            lines.extend(_by_pair(self.cast, lambda a, b: f"{a} -> {b}"))
        if self.aligned:
            n = len(self.aligned)
            lines.append(f"aligned by structure ({n} pair{'' if n == 1 else 's'}): checkpoint -> model")
            lines.extend("  " + line for line in compact_pairs(self.aligned))
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


def _by_pair(table: Mapping[str, tuple[Any, Any]], describe: Callable[[Any, Any], str]) -> list[str]:
    """Table lines ``  key  <a -> b>``: keys sharing a (checkpoint, model) pair are grouped and compacted."""
    groups: dict[tuple[Any, Any], list[str]] = defaultdict(list)
    for key, pair in table.items():
        groups[pair].append(key)
    return [f"  {k}  {describe(a, b)}" for (a, b), keys in groups.items() for k in compact_keys(keys)]


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


def _pct(fraction: float) -> str:
    """A percentage that never rounds a partial load up to 100% (or a tiny one down to 0%)."""
    if fraction in (0.0, 1.0):
        return f"{fraction:.0%}"
    text = f"{fraction:.1%}"
    if text == "100.0%":
        return ">99.9%"
    return "<0.1%" if text == "0.0%" else text


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


_NUMBER_SEGMENT = re.compile(r"^\d+$")


def _template(key: str) -> tuple[str, list[str]]:
    """``("blocks.#.#.bn1.weight", ["0", "1"])``: the key with its numeric segments taken out."""
    parts = key.split(".")
    nums = [p for p in parts if _NUMBER_SEGMENT.match(p)]
    return ".".join("#" if _NUMBER_SEGMENT.match(p) else p for p in parts), nums


def _fill(template: str, first: list[str], last: list[str]) -> str:
    """The template with each run of adjacent numbers written once, or as ``{first..last}`` where it varies."""
    out: list[str] = []
    used = 0
    for segment in re.split(r"((?:#\.)*#)(?=\.|$)", template):
        if not segment.startswith("#"):
            out.append(segment)
            continue
        n = segment.count("#")
        a, b = ".".join(first[used : used + n]), ".".join(last[used : used + n])
        used += n
        out.append(a if a == b else f"{{{a}..{b}}}")
    return "".join(out)


def compact_pairs(pairs: Mapping[str, str]) -> list[str]:
    """One line per run of pairs that differ only in their numbers, first..last on each side.

    Example:
        >>> compact_pairs({f"_blocks.{i}.w": f"blocks.{i // 2}.{i % 2}.w" for i in range(4)})
        ['_blocks.{0..3}.w -> blocks.{0.0..1.1}.w  (4)']
    """
    groups: dict[tuple[str, str], list[tuple[list[str], list[str]]]] = {}
    for old, new in pairs.items():
        (ot, on), (nt, nn_) = _template(old), _template(new)
        groups.setdefault((ot, nt), []).append((on, nn_))
    # one module's tensors (a BatchNorm's five) on one line: same module templates, same numbers, same leaf
    merged: dict[tuple[str, str, str], list[str]] = {}
    for (ot, nt), members in groups.items():
        o_mod, _, o_leaf = ot.rpartition(".")
        n_mod, _, n_leaf = nt.rpartition(".")
        numbers = repr((members[0], members[-1], len(members)))
        same_leaf = o_leaf == n_leaf
        key = (o_mod, n_mod, numbers) if same_leaf else (ot, nt, numbers)
        merged.setdefault(key, []).append(o_leaf if same_leaf else "")
    lines = []
    for (o_mod, n_mod, _), leaves in merged.items():
        members = groups[(f"{o_mod}.{leaves[0]}", f"{n_mod}.{leaves[0]}") if leaves[0] else (o_mod, n_mod)]
        (of, nf), (ol, nl) = members[0], members[-1]
        suffix = f"  ({len(members) * len(leaves)})" if len(members) * len(leaves) > 1 else ""
        leaf = (
            "" if not leaves[0] else "." + (leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}")
        )
        right = leaf if len(leaves) == 1 else ".*"  # the same leaves: listed once, on the left
        lines.append(f"{_fill(o_mod, of, ol)}{leaf} -> {_fill(n_mod, nf, nl)}{right}{suffix}")
    return lines


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


# --------------------------------------------------------------------------------------- building a report


def significant_missing(missing: Iterable[str]) -> list[str]:
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
    # tied weights (one tensor under several names, e.g. an embedding and an output layer): a checkpoint
    # that stores only one name (safetensors dedupes them) loads the others too; they are not missing
    through_alias = _loaded_through_alias(model_state, set(loaded))
    missing = [k for k in model_state if k not in taken and k not in through_alias]
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


def _loaded_through_alias(model_state: Mapping[str, Any], loaded: set[str]) -> set[str]:
    """Keys not loaded themselves whose tensor is the very tensor of a loaded key (tied weights)."""
    loaded_ids = {id(model_state[k]) for k in loaded if isinstance(model_state.get(k), torch.Tensor)}
    return {
        k
        for k, v in model_state.items()
        if k not in loaded and isinstance(v, torch.Tensor) and id(v) in loaded_ids
    }


def _coverage(model_state: Mapping[str, Any], loaded: set[str]) -> tuple[dict[str, float], int, int]:
    """Fraction of parameter elements loaded per top-level module (one level down while there is only one).

    A tensor tied under several names counts once (under its first name), and counts as loaded when any
    of its names loaded.
    """
    loaded_ids = {id(model_state[k]) for k in loaded if k in model_state}
    params, seen = [], set()
    for key, value in model_state.items():
        if isinstance(value, nn.Parameter) and id(value) not in seen:
            seen.add(id(value))
            params.append((key, value.numel(), id(value) in loaded_ids))
    depth = 1
    # A wrapper such as an Adapter holds everything under one name ("backbone"); show its parts instead.
    while len({_group(k, depth) for k, _, _ in params}) == 1 and all(
        k.count(".") >= depth for k, _, _ in params
    ):
        depth += 1
    total: dict[str, int] = {}
    done: dict[str, int] = {}
    for key, n, is_loaded in params:
        group = _group(key, depth)
        total[group] = total.get(group, 0) + n
        done[group] = done.get(group, 0) + (n if is_loaded else 0)
    coverage = {group: (done[group] / n if n else 1.0) for group, n in total.items()}
    return coverage, sum(done.values()), sum(total.values())


def _group(key: str, depth: int) -> str:
    return ".".join(key.split(".")[:depth])
