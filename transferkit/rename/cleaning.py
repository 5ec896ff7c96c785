"""Wrapper cleaning: the key segments DataParallel/DDP (``module.``), torch.compile (``_orig_mod.``) and
Lightning (``model.``) add, stripped so that a checkpoint's keys meet the model's.

:func:`clean_keys` tries the candidate cleanings and keeps the one whose keys (after the rules and the
model's own renames) match the model best; ``model.`` is only stripped when that is what makes keys match.

Example:
    >>> strip_wrappers("module.layer1.0.weight")
    'layer1.0.weight'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from transferkit.errors import LoadError
from transferkit.rename.mixin import module_rule_renames
from transferkit.rename.rules import Rule, apply_rules

__all__ = ["WRAPPER_SEGMENTS", "strip_wrappers", "clean_keys"]


# Attribute names that wrappers insert into keys: DataParallel/DDP (`module`) and torch.compile (`_orig_mod`).
WRAPPER_SEGMENTS = ("module", "_orig_mod")


def strip_wrappers(key: str) -> str:
    """Remove the key segments that DataParallel/DDP (``module.``) and torch.compile (``_orig_mod.``) add.

    Leading ``module.``/``_orig_mod.`` segments go, in any order and nesting; ``_orig_mod.`` goes anywhere
    (a compiled submodule), and so does ``module.`` right after a leading ``model.`` (Lightning wrapping DDP).

    Example:
        >>> strip_wrappers("_orig_mod.module.layer1.0.conv1.weight")
        'layer1.0.conv1.weight'
    """
    parts = [p for p in key.split(".") if p != "_orig_mod"] or [key]
    while len(parts) > 1 and parts[0] in WRAPPER_SEGMENTS:
        parts = parts[1:]
    if len(parts) > 2 and parts[0] == "model":
        while len(parts) > 2 and parts[1] == "module":
            del parts[1]
    return ".".join(parts)


def _strip_lightning(key: str) -> str:
    return key[len("model.") :] if key.startswith("model.") else key


def clean_keys(
    keys: Sequence[str],
    model_keys: Iterable[str] | None = None,
    rules: Sequence[Rule] = (),
    *,
    model: nn.Module | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Choose how to clean wrapper prefixes so that the keys (after ``rules``) match the model best.

    Candidates, tried in this order: wrappers stripped (:func:`strip_wrappers`); wrappers and a leading
    Lightning ``model.`` stripped; the keys as they are. The one whose renamed keys hit the most
    ``model_keys`` wins (ties keep the earlier); ``model.`` is thus only stripped when that is what makes
    keys match. Without ``model_keys`` the first candidate is used. When ``model`` is given, the renames of
    its :class:`RenameOnLoadMixin` modules are applied before matching too.

    Returns:
        ``({original_key: cleaned_key}, notes)`` where notes describe what was stripped.

    Example:
        >>> clean_keys(["model.module.fc.weight"], ["fc.weight"])[0]
        {'model.module.fc.weight': 'fc.weight'}
    """
    stripped = [strip_wrappers(k) for k in keys]
    candidates = {
        "wrappers": stripped,
        "lightning": [strip_wrappers(_strip_lightning(k)) for k in stripped],
        "raw": list(keys),
    }
    choice = "wrappers"
    if model_keys is not None:
        targets = set(model_keys)
        best = -1
        for name, cand in candidates.items():
            hits = _score(cand, targets, rules, model)
            if hits > best:
                best, choice = hits, name
    chosen = candidates[choice]
    notes = _describe_cleaning(keys, chosen)
    return dict(zip(keys, chosen)), notes


def _score(keys: Sequence[str], targets: set[str], rules: Sequence[Rule], model: nn.Module | None) -> int:
    renamed = [apply_rules(k, rules) for k in keys]
    if model is not None:
        try:
            through = module_rule_renames(model, [k for k in renamed if k is not None])
        except LoadError:  # this candidate collides; another one will be chosen or report it
            return -1
        renamed = [None if k is None else through[k] for k in renamed]
    return sum(1 for k in renamed if k in targets)


def _describe_cleaning(keys: Sequence[str], cleaned: Sequence[str]) -> list[str]:
    counts: dict[str, int] = {}
    for old, new in zip(keys, cleaned):
        if old == new:
            continue
        removed = old[: len(old) - len(new)] if old.endswith(new) else "(wrapper segments) "
        counts[removed] = counts.get(removed, 0) + 1
    return [f"stripped wrapper prefix {p!r} from {n} key(s)" for p, n in counts.items()]
