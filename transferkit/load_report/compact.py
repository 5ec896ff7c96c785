"""Key compaction for display: many keys as a few lines.

:func:`compact_keys` groups keys that differ in one number (``layer1.{0..2}.conv1.weight``) or in the last
name (``bn.{weight,bias}``); :func:`compact_pairs` writes pairs made by structure as first..last runs;
:func:`compact_renames` summarises renames as prefix swaps (``module.* -> *``).

Example:
    >>> compact_renames({"module.a.w": "a.w", "module.b.w": "b.w"})
    ['module.* -> *  (2 keys)']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["compact_keys", "compact_pairs", "compact_renames"]


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


def compact_renames(renamed: Mapping[str, str]) -> list[str]:
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
