"""Rename rules: :class:`Prefix`, :class:`Regex` or any callable ``key -> new_key | None``, and running them.

Rules run in order, each on the output of the one before; ``None`` drops the key. :func:`parse_rule`
reads the command line's forms (``"OLD=>NEW"``, ``"re:PATTERN=>REPLACEMENT"``), and
:func:`check_no_collisions` refuses two keys renamed onto one.

Example:
    >>> rename_keys(["enc.0.weight", "head.bias"], normalize_rules("enc.=>backbone."))
    {'enc.0.weight': 'backbone.0.weight', 'head.bias': 'head.bias'}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

from transferkit.errors import ConfigError, LoadError

__all__ = [
    "Prefix",
    "Regex",
    "Rule",
    "RULE_FORMS",
    "parse_rule",
    "normalize_rules",
    "apply_rules",
    "rename_keys",
    "check_no_collisions",
    "is_under",
]


def is_under(name: str, prefix: str) -> bool:
    """Whether the dotted ``name`` is ``prefix`` or inside it (``""`` is the root: everything is under it).

    >>> is_under("layer1.0.conv1.weight", "layer1"), is_under("layer10.weight", "layer1")
    (True, False)
    """
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


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
    mapping = {key: apply_rules(key, rules) for key in keys}
    check_no_collisions(mapping)
    return mapping


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
