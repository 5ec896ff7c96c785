"""What to tell the user when checkpoint names and model names do not meet.

:func:`suggest_prefix_rule` finds the prefix swap that maps the most checkpoint keys onto model keys;
:func:`add_rule_hint` notes it in a report, and :func:`zero_message` / :func:`nothing_written_message`
explain a load that would write (or wrote) no tensor at all, with the rule to pass when one exists.

Example:
    >>> suggest_prefix_rule(["enc.0.weight", "enc.0.bias"], ["backbone.0.weight", "backbone.0.bias"])
    (Prefix('enc.', 'backbone.'), 2)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from transferkit.load_report import LoadReport, Shape, significant_missing
from transferkit.partial.matching import Match
from transferkit.rename import Prefix

__all__ = ["suggest_prefix_rule", "add_rule_hint", "zero_message", "nothing_written_message"]


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


def add_rule_hint(
    report: LoadReport,
    state: Mapping[str, Any],
    passed: Mapping[str, str | None],
    final: Mapping[str, str | None],
    model_state: Mapping[str, Any],
) -> None:
    """Note a prefix swap that would load most of the unexpected keys into missing ones."""
    if not (report.unexpected and report.missing):
        return
    # a rule acts on keys before the model's own renames (an adapter's "backbone."): suggest in that space
    before_mixins = {name: passed[raw] for raw, name in final.items() if name is not None}
    unexpected = [before_mixins.get(k, k) for k in report.unexpected]
    shapes = _shapes(state, passed, model_state)
    hint = suggest_prefix_rule(unexpected, significant_missing(report.missing), **shapes)
    if hint is not None and hint[1] * 2 >= len(report.unexpected):
        report.notes.append(f"the rule {hint[0]!r} would load {hint[1]} more key(s): `rules`='{hint[0]}'")


def _shapes(
    state: Mapping[str, Any], names: Mapping[str, str | None], model_state: Mapping[str, Any]
) -> dict[str, dict[str, Shape]]:
    """Shapes by renamed checkpoint key (``names``: raw -> new) and by model key, for suggestions that only
    count keys whose shapes fit."""
    return {
        "checkpoint_shapes": {
            name: tuple(state[raw].shape)
            for raw, name in names.items()
            if name is not None and isinstance(state[raw], torch.Tensor)
        },
        "model_shapes": {k: tuple(v.shape) for k, v in model_state.items() if isinstance(v, torch.Tensor)},
    }


def zero_message(
    report: LoadReport,
    model_state: Mapping[str, Any],
    state: Mapping[str, Any],
    passed: Mapping[str, str | None],
    final: Mapping[str, str | None],
) -> str:
    if not state:
        return "the checkpoint holds no tensors; nothing was written. Check `key=` points at the weights"
    # quoted as the file has them (a model's own renames, e.g. an adapter's "backbone.", are not in the file)
    own_keys = [raw for raw, name in final.items() if name is not None]
    # what a rename rule sees: after wrapper cleaning and the given rules, before the model's own renames
    rule_keys = [passed[raw] for raw in own_keys]
    model_keys = list(model_state)
    if not own_keys:
        return f"no tensor loaded: the rules dropped all {len(final)} checkpoint keys; nothing was written"
    if report.mismatched:
        first = next(iter(report.mismatched))
        a, b = report.mismatched[first]
        raw = next((r for r, name in final.items() if name == first), first)
        which = repr(raw) if raw == first else f"{raw!r} (model {first!r})"
        message = (
            f"no tensor loaded: {len(report.mismatched)} of {len(own_keys)} checkpoint keys match model "
            f"keys by name but all differ in shape (e.g. {which}: checkpoint {list(a)} vs model {list(b)}) "
            "and "
            f"{len(report.unexpected)} have no counterpart; nothing was written. Is this checkpoint for a "
            "different architecture or size?"
        )
    else:
        message = (
            f"no tensor loaded: none of the {len(own_keys)} checkpoint keys matches one of the model's "
            f"{len(model_keys)} keys (after wrapper cleaning and rules); nothing was written. Checkpoint keys "
            f"start with {_first_segments(own_keys)}, e.g. {own_keys[0]!r}; model keys with "
            f"{_first_segments(model_keys)}, e.g. {model_keys[0] if model_keys else '-'!r}."
        )
    suggestion = suggest_prefix_rule(rule_keys, model_keys, **_shapes(state, passed, model_state))
    if suggestion is not None and suggestion[1] * 2 < len(own_keys):
        suggestion = None  # a swap that fits a few keys by coincidence of shape is not a fix
    if suggestion is not None:
        rule, hits = suggestion
        message += f" The rule {rule!r} would load {hits} of {len(own_keys)} keys: pass `rules`='{rule}'."
    elif not report.mismatched:
        message += (
            " No prefix swap aligns them; write Regex rules (`rules`='re:PATTERN=>REPL') or a callable."
        )
    return message


def nothing_written_message(
    report: LoadReport,
    predicted: LoadReport,
    model_state: Mapping[str, Any],
    state: Mapping[str, Any],
    match: Match,
) -> str:
    """The zero-load message once the model's own loading code has had every key and written nothing."""
    if predicted.loaded:
        return (
            f"no tensor loaded: {len(predicted.loaded)} checkpoint tensors match model keys by name, but the "
            "model's own loading code (a _load_from_state_dict override or a hook) wrote none of them; "
            "nothing was written"
        )
    message = (
        f"{zero_message(report, model_state, state, match.passed, match.final)} The model's own loading "
        "code was offered every key and wrote nothing."
    )
    return message + (f" Pairing by structure was tried too: {match.refused}" if match.refused else "")
