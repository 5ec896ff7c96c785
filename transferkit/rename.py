"""Rename rules for checkpoint keys, wrapper-prefix cleaning, and the rename-on-load module mixin.

A *rule* turns one checkpoint key into the key the model expects: :class:`Prefix` swaps a leading
prefix, :class:`Regex` substitutes a pattern, and any callable ``key -> new_key | None`` does the rest
(``None`` drops the key). Rules run in order, each on the output of the one before.

:class:`RenameOnLoadMixin` puts rules on a module itself, so a plain ``model.load_state_dict(ckpt)`` of
any model containing it accepts checkpoints in the old key layout (the pattern of overriding
``_load_from_state_dict``), at any nesting depth.

Example:
    >>> apply_rules("backbone.layer1.weight", [Prefix("backbone.", "img_backbone.")])
    'img_backbone.layer1.weight'
    >>> parse_rule("re:^convnet\\\\.c(\\\\d)=>features.conv\\\\1")
    Regex('^convnet\\\\.c(\\\\d)', 'features.conv\\\\1')
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import nn

from transferkit.errors import ConfigError, LoadError
from transferkit.load_report import build_report

if TYPE_CHECKING:  # pragma: no cover
    from transferkit.load_report import LoadReport

__all__ = [
    "Prefix",
    "Regex",
    "Rule",
    "parse_rule",
    "normalize_rules",
    "apply_rules",
    "rename_keys",
    "strip_wrappers",
    "clean_keys",
    "module_rule_renames",
    "check_no_collisions",
    "RenameOnLoadMixin",
    "is_under",
]

logger = logging.getLogger(__name__)


def is_under(name: str, prefix: str) -> bool:
    """Whether the dotted ``name`` is ``prefix`` or inside it (``""`` is the root: everything is under it).

    >>> is_under("layer1.0.conv1.weight", "layer1"), is_under("layer10.weight", "layer1")
    (True, False)
    """
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


# Attribute names that wrappers insert into keys: DataParallel/DDP (`module`) and torch.compile (`_orig_mod`).
WRAPPER_SEGMENTS = ("module", "_orig_mod")
RULE_FORMS = "'OLD=>NEW' (prefix swap, either side may be empty) or 're:PATTERN=>REPLACEMENT' (regex)"


@dataclass(frozen=True)
class Prefix:
    """Replace a leading ``old`` with ``new``; keys not starting with ``old`` pass unchanged.

    Args:
        old: the prefix to match (include the trailing dot to match whole module names).
        new: what replaces it (empty string strips the prefix).

    Example:
        >>> Prefix("encoder.", "backbone.")("encoder.conv1.weight")
        'backbone.conv1.weight'
    """

    old: str
    new: str

    def __call__(self, key: str) -> str:
        return self.new + key[len(self.old) :] if key.startswith(self.old) else key

    def __str__(self) -> str:
        return f"{self.old}=>{self.new}"

    def __repr__(self) -> str:
        return f"Prefix({self.old!r}, {self.new!r})"


@dataclass(frozen=True)
class Regex:
    """Substitute every match of ``pattern`` in a key with ``repl`` (Python ``re.sub`` syntax).

    Args:
        pattern: a regular expression (anchor it with ``^`` to match from the start of the key).
        repl: the replacement; ``\\1`` or ``\\g<name>`` refer to groups.

    Example:
        >>> Regex(r"^convnet\\.c(\\d)", r"features.conv\\1")("convnet.c3.weight")
        'features.conv3.weight'
    """

    pattern: str
    repl: str

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.pattern)
        except re.error as exc:
            raise ConfigError(
                f"invalid regular expression {self.pattern!r} in a Regex rule: {exc}; "
                "expected a Python `re` pattern, e.g. r'^convnet\\.c(\\d)'"
            ) from exc
        object.__setattr__(self, "_compiled", compiled)

    def __call__(self, key: str) -> str:
        try:
            return self._compiled.sub(self.repl, key)  # type: ignore[attr-defined]
        except (re.error, IndexError) as exc:
            raise ConfigError(
                f"replacement {self.repl!r} of Regex({self.pattern!r}) is invalid for key {key!r}: {exc}; "
                "refer to groups the pattern defines, e.g. \\1 or \\g<name>"
            ) from exc

    def __str__(self) -> str:
        return f"re:{self.pattern}=>{self.repl}"

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r}, {self.repl!r})"


Rule = Union[Prefix, Regex, Callable[[str], Union[str, None]]]  # noqa: UP007 - a runtime alias


def parse_rule(text: str) -> Rule:
    """Parse a rule written on the command line.

    Args:
        text: ``"OLD=>NEW"`` for a :class:`Prefix` (``"encoder.=>"`` strips, ``"=>backbone."`` adds) or
            ``"re:PATTERN=>REPLACEMENT"`` for a :class:`Regex`.

    Returns:
        The rule object.

    Raises:
        ConfigError: the text has neither form, or the regular expression does not compile.

    Example:
        >>> parse_rule("module.=>")
        Prefix('module.', '')
    """
    if not isinstance(text, str):
        raise ConfigError(
            f"a rename rule must be a string of the form {RULE_FORMS}; got {type(text).__name__}"
        )
    if text.startswith("re:"):
        body = text[3:]
        if "=>" not in body:
            raise ConfigError(f"rename rule {text!r} has no '=>'; expected {RULE_FORMS}")
        pattern, repl = body.split("=>", 1)
        if not pattern:
            raise ConfigError(f"rename rule {text!r} has an empty pattern; expected {RULE_FORMS}")
        return Regex(pattern, repl)
    if text.count("=>") != 1:
        found = "no '=>'" if "=>" not in text else "more than one '=>'"
        raise ConfigError(f"rename rule {text!r} has {found}; expected {RULE_FORMS}")
    old, new = text.split("=>")
    if old == new:
        raise ConfigError(
            f"rename rule {text!r} changes nothing (both sides are {old!r}); expected {RULE_FORMS}"
        )
    return Prefix(old, new)


def normalize_rules(rules: Rule | str | Iterable[Rule | str] | None) -> tuple[Rule, ...]:
    """Turn ``None``, one rule, a CLI string, or a sequence of those into a tuple of callables.

    Example:
        >>> normalize_rules(["a.=>b.", Prefix("c.", "d.")])
        (Prefix('a.', 'b.'), Prefix('c.', 'd.'))
    """
    if rules is None:
        return ()
    if isinstance(rules, str) or callable(rules):
        rules = [rules]
    if isinstance(rules, Mapping) or not isinstance(rules, Iterable):
        raise ConfigError(
            "rules must be one rule or a list of rules (Prefix, Regex, a callable key -> key | None, or a "
            f"string {RULE_FORMS}); got {type(rules).__name__}: {rules!r:.200}"
        )
    out: list[Rule] = []
    for rule in rules:
        if isinstance(rule, str):
            out.append(parse_rule(rule))
        elif callable(rule):
            out.append(rule)
        else:
            raise ConfigError(
                "a rename rule must be Prefix, Regex, a callable key -> key | None, "
                f"or a string {RULE_FORMS}; "
                f"got {type(rule).__name__}: {rule!r}"
            )
    return tuple(out)


def apply_rules(key: str, rules: Sequence[Rule]) -> str | None:
    """Run ``rules`` in order on one key; ``None`` when a callable rule drops it.

    Example:
        >>> apply_rules("fc.weight", [lambda k: None if k.startswith("fc.") else k]) is None
        True
    """
    for rule in rules:
        try:
            out = rule(key)
        except ConfigError:
            raise
        except Exception as exc:
            # a user callable failing on one key: name the rule and the key instead of a bare traceback
            raise ConfigError(
                f"rename rule {rule!r} raised {type(exc).__name__} on key {key!r}: {exc}; a rule must "
                "return the new key (str) or None to drop it, for every key of the checkpoint"
            ) from exc
        if out is None:
            return None
        if not isinstance(out, str):
            raise ConfigError(
                f"rename rule {rule!r} returned {type(out).__name__} for {key!r}; expected str or None"
            )
        key = out
    return key


def rename_keys(keys: Iterable[str], rules: Sequence[Rule]) -> dict[str, str | None]:
    """Map every key through ``rules``, refusing two keys that land on one target.

    Returns:
        ``{old_key: new_key_or_None}`` in input order.

    Raises:
        LoadError: two source keys map to the same target key (both are named).

    Example:
        >>> rename_keys(["a.x", "b.x"], [Prefix("a.", "c.")])
        {'a.x': 'c.x', 'b.x': 'b.x'}
    """
    mapping: dict[str, str | None] = {}
    owner: dict[str, str] = {}
    for key in keys:
        new = apply_rules(key, rules)
        mapping[key] = new
        if new is None:
            continue
        if new in owner:
            raise LoadError(
                f"rename conflict: checkpoint keys {owner[new]!r} and {key!r} both map to {new!r}; "
                "make the rules more specific (anchor a Regex with ^, or drop one key with a callable rule)"
            )
        owner[new] = key
    return mapping


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


def module_rule_renames(
    root: nn.Module, keys: Iterable[str], *, include_root: bool = True
) -> dict[str, str | None]:
    """Predict what the :class:`RenameOnLoadMixin` modules inside ``root`` will do to ``keys``.

    Modules are visited parent first, as ``load_state_dict`` visits them, each renaming the keys under
    its own prefix. Used by ``load_partial`` to match a checkpoint against the layout the model's
    modules accept, before anything is written.

    Returns:
        ``{key: final_key_or_None}`` for every key.
    """
    current: dict[str, str | None] = {k: k for k in keys}
    for name, module in root.named_modules():
        if not isinstance(module, RenameOnLoadMixin) or (module is root and not include_root):
            continue
        rules = normalize_rules(module.load_rules)
        if not rules:
            continue
        prefix = f"{name}." if name else ""
        live = {cur: orig for orig, cur in current.items() if cur is not None and cur.startswith(prefix)}
        renamed = rename_keys([c[len(prefix) :] for c in live], rules)
        for orig, new_rel in zip(live.values(), renamed.values()):
            current[orig] = None if new_rel is None else prefix + new_rel
        check_no_collisions(current)
    return current


def check_no_collisions(mapping: Mapping[str, str | None]) -> None:
    """Raise when two source keys of ``{source_key: target_key_or_None}`` share one target.

    Raises:
        LoadError: naming both source keys and the target.
    """
    owner: dict[str, str] = {}
    for source, target in mapping.items():
        if target is None:
            continue
        if target in owner:
            raise LoadError(
                f"rename conflict: checkpoint keys {owner[target]!r} and {source!r} both map to {target!r}; "
                "make the rules more specific (anchor a Regex with ^) or drop one key with a callable rule"
            )
        owner[target] = source


class RenameOnLoadMixin:
    """Mixin for ``nn.Module`` classes that accept checkpoints in an older key layout.

    Set ``load_rules`` (rules or CLI strings) and ``on_shape_mismatch`` (``"skip"`` drops and records
    tensors whose shape differs from this module's; ``"error"`` raises :class:`LoadError`) as class or
    instance attributes. Any ``load_state_dict`` that reaches this module renames the keys under its
    prefix, filters shapes, and records a :class:`~transferkit.load_report.LoadReport` in ``self.load_report``.
    The caller's dict is never changed: ``nn.Module.load_state_dict`` hands modules its own copy, and the
    renamed keys are written into that copy so the children read them.

    Put the mixin before ``nn.Module`` in the bases; the other order is repaired when the class is
    created (the renaming is wrapped around the inherited ``_load_from_state_dict``).

    Example:
        >>> class Detector(RenameOnLoadMixin, nn.Module):
        ...     load_rules = (Prefix("backbone.", "img_backbone."),)
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.img_backbone = nn.Linear(2, 2)
        >>> det = Detector()
        >>> _ = det.load_state_dict({"backbone.weight": torch.ones(2, 2), "backbone.bias": torch.zeros(2)})
        >>> det.load_report.renamed["backbone.weight"]
        'img_backbone.weight'
    """

    load_rules: Sequence[Rule | str] = ()
    on_shape_mismatch: str = "skip"
    load_report: LoadReport | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if nn.Module in mro and mro.index(nn.Module) < mro.index(RenameOnLoadMixin):
            # `class X(nn.Module, RenameOnLoadMixin)` would resolve to Module's method and never rename.
            inherited = cls._load_from_state_dict
            if getattr(inherited, "_transferkit_renames", False):
                return

            def _load_from_state_dict(self, state_dict, prefix, *args):  # type: ignore[no-untyped-def]
                self._rename_before_load(state_dict, prefix)
                return inherited(self, state_dict, prefix, *args)

            _load_from_state_dict._transferkit_renames = True  # type: ignore[attr-defined]
            cls._load_from_state_dict = _load_from_state_dict  # type: ignore[method-assign]

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        self._rename_before_load(state_dict, prefix)
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    _load_from_state_dict._transferkit_renames = True  # type: ignore[attr-defined]

    def _rename_before_load(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Rename, shape-filter and report the keys under ``prefix``, editing ``state_dict`` in place."""
        if self.on_shape_mismatch not in ("skip", "error"):
            raise ConfigError(
                f"{type(self).__name__}.on_shape_mismatch must be 'skip' or 'error'; "
                f"got {self.on_shape_mismatch!r}"
            )
        expected = self.state_dict(keep_vars=True)  # type: ignore[attr-defined]
        plan = _plan_renames(self, state_dict, prefix, expected)  # type: ignore[arg-type]
        if plan.mismatched and self.on_shape_mismatch == "error":
            listing = "; ".join(
                f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, (a, b) in plan.mismatched.items()
            )
            raise LoadError(
                f"{type(self).__name__} at {prefix or '<root>'!r} refuses tensors whose shape differs: "
                f"{listing}; set on_shape_mismatch='skip' to drop them, or add rules that map them elsewhere"
            )
        # Delete every old key before inserting any new one, so that swaps (a->b, b->a) work.
        for old in plan.edits:
            del state_dict[old]
        for edit in plan.edits.values():
            if edit is not None:
                state_dict[edit[0]] = edit[1]
        self.load_report = build_report(
            expected,
            plan.checkpoint,
            renamed=plan.renamed,
            mismatched=plan.mismatched,
            prefix=prefix,
            dropped=plan.dropped,
        )
        if plan.renamed or plan.mismatched:
            logger.debug(
                "%s at %r: %d renamed, %d skipped for shape",
                type(self).__name__,
                prefix,
                len(plan.renamed),
                len(plan.mismatched),
            )


@dataclass
class _Plan:
    edits: dict[str, tuple[str, Any] | None] = field(
        default_factory=dict
    )  # old key -> (new key, value) | drop
    renamed: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    checkpoint: dict[str, Any] = field(default_factory=dict)  # final relative key -> value that will load


def _plan_renames(
    module: nn.Module, state_dict: Mapping[str, Any], prefix: str, expected: Mapping[str, Any]
) -> _Plan:
    """Decide, without editing anything, what a mixin module does to the keys under ``prefix``."""
    rules = normalize_rules(module.load_rules)  # type: ignore[attr-defined]
    rel_keys = [k[len(prefix) :] for k in state_dict if k.startswith(prefix)]
    # Every key under the prefix is in rel_keys, so rename_keys also catches a rename onto a kept key.
    own = rename_keys(rel_keys, rules)
    # The names this module's descendants finally see (nested mixins rename further).
    final = module_rule_renames(module, [n for n in own.values() if n is not None], include_root=False)
    plan = _Plan()
    for rel, new in own.items():
        value = state_dict[prefix + rel]
        target = None if new is None else final[new]
        if target is None:
            plan.dropped.append(prefix + rel)
            plan.edits[prefix + rel] = None
            continue
        if target != rel:
            plan.renamed[prefix + rel] = prefix + target
        mine = expected.get(target)
        if isinstance(value, torch.Tensor) and isinstance(mine, torch.Tensor) and value.shape != mine.shape:
            plan.mismatched[prefix + target] = (tuple(value.shape), tuple(mine.shape))
            plan.edits[prefix + rel] = None
            continue
        plan.checkpoint[target] = value
        if new != rel:
            plan.edits[prefix + rel] = (prefix + new, value)  # type: ignore[operator]
    return plan
