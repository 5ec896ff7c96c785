"""``LoadReport``: what a load did, key by key, as data (:meth:`~LoadReport.to_dict`) and as a table.

The table groups keys (:mod:`.compact`), summarises renames as prefix swaps and pairs made by structure
as first..last runs, and its percentages never round a partial load up to 100%.

Example:
    >>> print(LoadReport(loaded=["w"], missing=["b"], loaded_params=6, total_params=8).summary())
    loaded 1/1 checkpoint tensors (6/8 parameters, 75.0%); renamed 0, skipped for shape 0, missing 1, unexpected 0, cast 0
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from transferkit.load_report.compact import compact_keys, compact_pairs, compact_renames

__all__ = ["Shape", "LoadReport", "significant_missing"]


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
            lines.extend("  " + line for line in compact_renames(self.renamed))
        if self.loaded:
            lines.append(f"loaded ({len(self.loaded)})")
            lines.extend("  " + k for k in compact_keys(self.loaded))
        if self.notes:
            lines.append("notes")
            lines.extend(f"  - {n}" for n in self.notes)
        return "\n".join(lines)


def significant_missing(missing: Iterable[str]) -> list[str]:
    # Old checkpoints predate BatchNorm's num_batches_tracked; torch itself fills it in, so it never counts.
    return [k for k in missing if not k.endswith("num_batches_tracked")]


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
