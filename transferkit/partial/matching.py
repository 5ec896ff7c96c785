"""Pairing checkpoint keys with the model's: by name (cleaning, rules, the model's renames) or by structure.

:func:`match_keys` runs the rename chain (raw key -> the key ``load_state_dict`` receives -> the model
key), classifies every key (fits, skipped for shape, unknown to the model) and, where ``align`` asks for
it, pairs tensors by structure instead (:mod:`transferkit.align`). The result is a frozen :class:`Match`;
:func:`predict_report` turns it into the report the names predict, before anything is written.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1)
    >>> state = {"weight": torch.ones(1, 2), "extra": torch.ones(1)}
    >>> match = match_keys(model, state, list(state), {k: k for k in state}, [], model.state_dict(), "names")
    >>> sorted(match.fits), predict_report(match, model.state_dict(), [], "state dict", False).missing
    (['extra', 'weight'], ['bias'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from transferkit.align import Alignment, align_by_structure, check_align_mode
from transferkit.errors import LoadError
from transferkit.load_report import LoadReport, Shape, build_report
from transferkit.rename import Rule, apply_rules, check_no_collisions, module_rule_renames

__all__ = ["Match", "match_keys", "predict_report"]


@dataclass(frozen=True)
class Match:
    """How every checkpoint key meets the model: the pipeline's state between renaming and checking.

    ``passed``: raw key -> the key ``load_state_dict`` receives; ``final``: raw key -> the model key (after
    the model's own renames); ``None`` drops a key. ``refused`` is a structural alignment's refusal.
    """

    passed: dict[str, str | None]
    final: dict[str, str | None]
    mismatched: dict[str, tuple[Shape, Shape]]
    fits: dict[str, Any]
    to_load: dict[str, Any]
    alignment: Alignment | None = None
    refused: LoadError | None = None


def match_keys(
    target: nn.Module,
    state: Mapping[str, Any],
    raw_keys: Sequence[str],
    cleaned: Mapping[str, str],
    rules: Sequence[Rule],
    model_state: Mapping[str, Any],
    align: str,
) -> Match:
    """Pair checkpoint keys with the model's: by name, then by structure where ``align`` asks for it."""
    passed, final = _rename_chain(target, raw_keys, cleaned, rules)
    by_name = Match(passed, final, *_classify(state, passed, final, model_state))
    if not _wants_structure(check_align_mode(align), by_name, model_state, bool(rules)):
        return by_name
    try:
        alignment = align_by_structure(
            {raw: state[raw] for raw in raw_keys if final[raw] is not None}, model_state
        )
    except LoadError as exc:
        return replace(by_name, refused=exc)
    passed, final = _aligned_chain(target, raw_keys, passed, final, alignment)
    return Match(passed, final, *_classify(state, passed, final, model_state), alignment=alignment)


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
        # keys the model has no parameter for go too: its own _load_from_state_dict may consume them
        to_load[passed[raw]] = value  # type: ignore[index]
    return mismatched, fits, to_load


def _wants_structure(align: str, by_name: Match, model_state: Mapping[str, Any], has_rules: bool) -> bool:
    """``structure`` always; ``auto`` only when not one checkpoint key names a model key.

    Given rules are the caller's own mapping by name: ``auto`` then keeps to names, so a rule that maps
    nothing is reported as such instead of being silently replaced by a pairing it did not ask for.
    """
    if align == "structure":
        return True
    matched = by_name.mismatched or any(k in model_state for k in by_name.fits)
    return align == "auto" and not has_rules and not matched


def _aligned_chain(
    target: nn.Module,
    raw_keys: Sequence[str],
    passed: Mapping[str, str | None],
    final: Mapping[str, str | None],
    alignment: Alignment,
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """``_rename_chain``'s two maps with the structural pairs in: paired keys travel under model names."""
    pairs = {**alignment.pairs, **alignment.head}
    # A RenameOnLoadMixin renames what load_state_dict receives; model names must pass it unchanged.
    through = module_rule_renames(target, list(pairs.values()))
    changed = {k: v for k, v in through.items() if v != k}
    if changed:
        key, new = next(iter(changed.items()))
        raise LoadError(
            f"align='structure' pairs tensors under the model's own names, but a RenameOnLoadMixin in the "
            f"model renames {key!r} to {new!r} on load; nothing was written. Make its load_rules leave the "
            "model's own names unchanged, or give rename rules instead of aligning"
        )
    new_passed = {raw: pairs.get(raw, passed[raw]) if passed[raw] is not None else None for raw in raw_keys}
    new_final = {raw: pairs.get(raw, final[raw]) if final[raw] is not None else None for raw in raw_keys}
    check_no_collisions(new_final)
    return new_passed, new_final


def predict_report(
    match: Match, model_state: Mapping[str, Any], notes: list[str], description: str, dry_run: bool
) -> LoadReport:
    """The report as the names (or the structural pairs) predict it, before anything is written."""
    aligned = match.alignment
    report = build_report(
        model_state,
        match.fits,
        renamed={} if aligned else {r: n for r, n in match.final.items() if n is not None and n != r},
        mismatched=match.mismatched,
        notes=notes + (aligned.notes() if aligned else []),
        dropped=[raw for raw, new in match.final.items() if new is None],
        source=description,
        dry_run=dry_run,
    )
    if aligned is not None:
        report.method = "structure"
        report.aligned = {**aligned.pairs, **aligned.head}
    return report
