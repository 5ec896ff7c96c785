"""Rename rules for checkpoint keys, wrapper-prefix cleaning, and the rename-on-load module mixin.

A *rule* turns one checkpoint key into the key the model expects: :class:`Prefix` swaps a leading
prefix, :class:`Regex` substitutes a pattern, and any callable ``key -> new_key | None`` does the rest
(``None`` drops the key). Rules run in order, each on the output of the one before.

:class:`RenameOnLoadMixin` puts rules on a module itself, so a plain ``model.load_state_dict(ckpt)`` of
any model containing it accepts checkpoints in the old key layout (the pattern of overriding
``_load_from_state_dict``), at any nesting depth.

The modules: ``rules`` (the rules, :func:`parse_rule`, :func:`apply_rules`, collisions), ``cleaning``
(:func:`strip_wrappers`, :func:`clean_keys`) and ``mixin`` (:class:`RenameOnLoadMixin`,
:func:`module_rule_renames`).

Example:
    >>> apply_rules("backbone.layer1.weight", [Prefix("backbone.", "img_backbone.")])
    'img_backbone.layer1.weight'
    >>> parse_rule("re:^convnet\\\\.c(\\\\d)=>features.conv\\\\1")
    Regex('^convnet\\\\.c(\\\\d)', 'features.conv\\\\1')
"""

from __future__ import annotations

from transferkit.rename.cleaning import WRAPPER_SEGMENTS, clean_keys, strip_wrappers
from transferkit.rename.mixin import RenameOnLoadMixin, module_rule_renames
from transferkit.rename.rules import (
    RULE_FORMS,
    Prefix,
    Regex,
    Rule,
    apply_rules,
    check_no_collisions,
    is_under,
    normalize_rules,
    parse_rule,
    rename_keys,
)

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
    "WRAPPER_SEGMENTS",
    "RULE_FORMS",
]
