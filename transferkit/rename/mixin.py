"""``RenameOnLoadMixin``: rename rules on a module itself, applied by any ``load_state_dict`` that reaches it.

Any model containing such a module accepts checkpoints in the old key layout with a plain
``model.load_state_dict(ckpt)`` (the pattern of overriding ``_load_from_state_dict``), at any nesting
depth. :func:`module_rule_renames` predicts what those modules will do, so ``load_partial`` can match a
checkpoint against the layout the model accepts before anything is written.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Old(RenameOnLoadMixin, nn.Module):
    ...     load_rules = ("w=>weight",)
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.weight = nn.Parameter(torch.zeros(1))
    >>> module_rule_renames(nn.Sequential(Old()), ["0.w"])
    {'0.w': '0.weight'}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from transferkit.errors import ConfigError, LoadError
from transferkit.load_report import build_report
from transferkit.rename.rules import Rule, check_no_collisions, normalize_rules, rename_keys

if TYPE_CHECKING:  # pragma: no cover
    from transferkit.load_report import LoadReport

__all__ = ["RenameOnLoadMixin", "module_rule_renames"]

logger = logging.getLogger("transferkit.rename")


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
        >>> from transferkit.rename import Prefix
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
