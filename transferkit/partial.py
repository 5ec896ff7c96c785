"""``load_partial``: load what fits from a checkpoint and say exactly what happened.

The pipeline: extract the state dict -> clean wrapper prefixes -> apply rename rules -> match every key
against the model -> check (strict, zero tensors, coverage) -> load through the model's own
``load_state_dict`` -> return a :class:`LoadReport`. Every check runs before the first tensor is written,
so when ``load_partial`` raises, the model is exactly as it was. The one exception is an error raised by
the model's *own* loading code (a ``_load_from_state_dict`` override or a hook) once writing has begun:
undoing it would need a second copy of the weights, so it is re-raised as a ``LoadError`` that says the
model may be partly written.

This module holds the pipeline, its checks and :func:`suggest_prefix_rule` (the rule hint in zero-load
errors). The report itself, :class:`~transferkit.load_report.LoadReport`, and its table formatting live
in :mod:`transferkit.load_report`; ``LoadReport``, ``build_report`` and ``compact_keys`` are re-exported
here.

Example:
    >>> from torch import nn
    >>> src = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    >>> dst = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 5))
    >>> report = load_partial(dst, src)
    >>> report.loaded, list(report.mismatched)
    (['0.weight', '0.bias'], ['1.weight', '1.bias'])
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from transferkit.align import Alignment, align_by_structure, check_align_mode
from transferkit.checkpoint import extract_state_dict, load_checkpoint
from transferkit.checkpoint.state_dicts import unwrap_model
from transferkit.errors import ConfigError, LoadError, TransferkitError
from transferkit.load_report import LoadReport, Shape, build_report, compact_keys, significant_missing
from transferkit.rename import (
    Prefix,
    RenameOnLoadMixin,
    Rule,
    apply_rules,
    check_no_collisions,
    clean_keys,
    module_rule_renames,
    normalize_rules,
)

__all__ = ["load_partial", "suggest_prefix_rule"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- the suggestion


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


# --------------------------------------------------------------------------------------------- load_partial


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    if isinstance(source, nn.Module):
        return f"module {type(source).__name__}"
    if isinstance(source, Mapping):
        return (
            "state dict" if all(isinstance(v, torch.Tensor) for v in source.values()) else "checkpoint dict"
        )
    return type(source).__name__


def _is_state_value(key: Any, value: Any) -> bool:
    # `get_extra_state()` values (any picklable object) sit in real state dicts next to the tensors
    return isinstance(value, torch.Tensor) or (isinstance(key, str) and key.endswith("_extra_state"))


def _check_no_lazy(model_state: Mapping[str, Any]) -> None:
    """Refuse lazy (uninitialised) parameters up front: their shapes, which every check needs, are unknown."""
    lazy = [k for k, v in model_state.items() if isinstance(v, torch.Tensor) and is_lazy(v)]
    if lazy:
        raise ConfigError(
            f"the model has {len(lazy)} uninitialised lazy parameter(s) or buffer(s) "
            f"({', '.join(compact_keys(lazy)[:4])}); load_partial needs their shapes to match the checkpoint. "
            "Run one forward pass on a dummy input first, or use the non-lazy module (e.g. nn.Linear)"
        )


def _check_keys(state: Mapping[Any, Any], description: str) -> None:
    """Refuse non-string keys up front (every rule, match and message works on dotted names)."""
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        shown = ", ".join(f"{k!r} ({type(k).__name__})" for k in bad[:4])
        raise ConfigError(
            f"the {description} has {len(bad)} key(s) that are not strings: {shown}; state dict keys are "
            "dotted parameter names such as 'layer1.0.conv1.weight'. Convert them first, e.g. "
            "{str(k): v for k, v in state.items()}, or drop them"
        )


def _dense(state: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Sparse checkpoint tensors made dense: copying one into a dense parameter fails mid-load otherwise."""
    sparse = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.layout != torch.strided]
    if not sparse:
        return state
    out = dict(state)
    for k in sparse:
        out[k] = state[k].to_dense()
    notes.append(f"made {len(sparse)} sparse checkpoint tensor(s) dense: {', '.join(compact_keys(sparse))}")
    return out


def _resolve_source(
    source: Any, *, key: str | None, map_location: Any, salvage: bool, trusted: bool
) -> dict[str, Any]:
    """Turn a path, module, state dict or checkpoint dict into a flat ``{key: tensor}`` dict."""
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, (str, os.PathLike)):
        obj = load_checkpoint(source, map_location=map_location, trusted=trusted, salvage=salvage)
        return dict(extract_state_dict(obj, key))
    if isinstance(source, Mapping):
        if key is None and all(_is_state_value(k, v) for k, v in source.items()):
            return dict(source)
        return dict(extract_state_dict(source, key))
    raise ConfigError(
        "load_partial source must be a path, a state dict, a checkpoint dict or an nn.Module; "
        f"got {type(source).__name__}"
    )


def load_partial(
    model: nn.Module,
    source: Any,
    *,
    rules: Sequence[Rule | str] | Rule | str = (),
    strict: bool = False,
    key: str | None = None,
    map_location: Any = "cpu",
    min_coverage: float | Mapping[str, float] | None = None,
    salvage: bool = False,
    trusted: bool = False,
    assign: bool = False,
    dry_run: bool = False,
    align: str = "auto",
    verify: nn.Module | None = None,
    tolerance: float = 1e-4,
) -> LoadReport:
    """Load every tensor of ``source`` that fits ``model``; report the rest. All checks precede writing.

    Wrapper prefixes (``module.``, ``_orig_mod.``, Lightning's ``model.`` when it helps) are stripped,
    then ``rules`` run in order, then the renames of any :class:`~transferkit.rename.RenameOnLoadMixin`
    inside the model are predicted, and every key is classified. Tensors whose shape differs are skipped;
    dtypes are cast to the model's. Loading goes through ``model.load_state_dict(..., strict=False)`` so
    the model's own ``_load_from_state_dict`` overrides and hooks run. Coverage counts parameter elements
    only; buffers (running stats, ``num_batches_tracked``) are reported but never count against it.

    Args:
        model: the target; DataParallel/DDP/torch.compile wrappers are looked through.
        source: a checkpoint path (any format ``transferkit.checkpoint`` reads), a state dict, a loaded
            checkpoint dict (the weights are found inside), or another ``nn.Module``.
        rules: :class:`~transferkit.rename.Prefix`, :class:`~transferkit.rename.Regex`, callables, or
            CLI strings (``"old.=>new."``, ``"re:PAT=>REPL"``), applied after wrapper cleaning.
        strict: raise when anything is missing, unexpected or skipped for shape (a missing
            ``num_batches_tracked`` is tolerated, as torch tolerates it).
        key: dotted path of the weights inside a checkpoint (``"state_dict"``, ``"models.G"``).
        map_location: where tensors read from a file go (``"cpu"`` reads zip files with mmap).
        min_coverage: a fraction of the whole model's parameters that must load, or
            ``{module_name: fraction}`` for chosen modules (any qualified module name).
        salvage: read files that ``weights_only`` refuses with the restricted unpickler.
        trusted: allow a full (code-executing) unpickle; only for files you trust.
        assign: pass ``assign=True`` to ``load_state_dict``: parameters become the checkpoint's tensors
            (build the model on the meta device, then this materialises it without a second copy).
        dry_run: compute the report and run the checks, write nothing (works on a meta-device model).
        align: how checkpoint tensors pair with the model's: ``"names"`` (keys after cleaning and rules),
            ``"structure"`` (order, shapes and module grouping, for another implementation of the same
            architecture; see :mod:`transferkit.align`), or ``"auto"`` (names; structure only when no
            ``rules`` were given and no checkpoint key matches a model key by name). The report's
            ``method`` says which was used.
        verify: a reference model (the source implementation, holding the same weights): after loading,
            both run on one probe batch and ``report.verified`` is the largest output difference.
        tolerance: the largest output difference ``verify`` accepts.

    Returns:
        The :class:`LoadReport` (also kept on the error as ``exc.report`` when a check fails).

    Raises:
        LoadError: zero tensors would load (with a suggested rule), a structural alignment was refused
            (``exc.divergence`` says where the sequences diverge), ``strict`` or ``min_coverage`` failed,
            a rename conflict, or a RenameOnLoadMixin with ``on_shape_mismatch="error"`` saw a mismatch
            (all raised before anything is written); or the model's own loading code raised while
            loading (the model may then be partly written, and the message says so).
        CheckpointError: the file cannot be read.
        ConfigError: bad arguments (e.g. a meta-device model without ``assign``/``dry_run``, a model with
            uninitialised lazy parameters, checkpoint keys that are not strings, checkpoint tensors on the
            meta device, a rule that raises).

    Example:
        >>> from torch import nn
        >>> ckpt = {"module.weight": torch.ones(2, 3), "module.bias": torch.zeros(2)}
        >>> report = load_partial(nn.Linear(3, 2), ckpt)
        >>> report.loaded
        ['weight', 'bias']
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"load_partial's first argument is the model to load into (an nn.Module); got "
            f"{type(model).__name__}. The call is load_partial(model, source)"
        )
    notes: list[str] = []
    target = unwrap_model(model, notes)
    rules_t = normalize_rules(rules)
    model_state = target.state_dict(keep_vars=True)
    _check_no_lazy(model_state)
    state = _resolve_source(source, key=key, map_location=map_location, salvage=salvage, trusted=trusted)
    description = _describe(source)
    _check_keys(state, description)
    if not dry_run:
        state = _dense(state, notes)

    raw_keys = list(state)
    cleaned, clean_notes = clean_keys(raw_keys, model_state, rules_t, model=target)
    notes.extend(clean_notes)
    match = _match(target, state, raw_keys, cleaned, rules_t, model_state, align)
    passed, final, fits, refused = match.passed, match.final, match.fits, match.refused
    if refused is not None and align == "structure":
        raise _fail(str(refused), _predict(match, model_state, [], description, dry_run), refused)
    report = _predict(match, model_state, notes, description, dry_run)
    _add_hint(report, state, passed, final, model_state)
    # keys no parameter is named after are offered to the model's own loading code (issue: a legacy
    # `fc.w` renamed by an override); when nothing else loads, only writing tells whether it used them
    defer_zero = not dry_run and _own_code_may_consume(
        target, [passed[r] or "" for r in raw_keys if final[r] and final[r] not in model_state]
    )
    if refused is not None and not defer_zero:
        zero = _zero_message(report, model_state, state, passed, final)
        raise _fail(f"{zero} Pairing by structure was tried too: {refused}", report, refused)
    _check(
        report,
        target,
        model_state,
        state,
        passed,
        final,
        strict=strict,
        min_coverage=min_coverage,
        assign=assign,
        dry_run=dry_run,
        defer_zero=defer_zero,
    )
    _note_tied_conflicts(report, fits, model_state)
    if dry_run:
        return report
    renamed_any = any(passed[r] != r for r in raw_keys)
    predicted = report
    report = _write(
        target,
        _with_versions(match.to_load, target, None if renamed_any else getattr(state, "_metadata", None)),
        model_state,
        {passed[r]: final[r] for r in raw_keys if final[r] is not None},
        assign,
        report,
        fits,
    )
    if not report.loaded:  # nothing was written (that is what the report says), so the model is as it was
        raise _fail(_nothing_written(report, predicted, model_state, state, match), report, refused)
    if assign:
        _retie(target, model_state)
    if verify is not None:
        _verify(model, verify, tolerance, report)
    if isinstance(target, RenameOnLoadMixin):
        # its own _load_from_state_dict saw only the filtered dict; the full picture is this report
        target.load_report = report
    logger.info("load_partial(%s): %s", description, report.summary())
    return report


def _tied_groups(model_state: Mapping[str, Any]) -> list[list[str]]:
    """Model keys that name one tensor object (tied weights), each group in state-dict order."""
    by_id: dict[int, list[str]] = defaultdict(list)
    for k, v in model_state.items():
        if isinstance(v, torch.Tensor):
            by_id[id(v)].append(k)
    return [keys for keys in by_id.values() if len(keys) > 1]


def _note_tied_conflicts(report: LoadReport, fits: Mapping[str, Any], model_state: Mapping[str, Any]) -> None:
    """Say so when a checkpoint gives a tied tensor two different values: only one of them can stay."""
    for keys in _tied_groups(model_state):
        given = [k for k in keys if isinstance(fits.get(k), torch.Tensor)]
        if len(given) < 2:
            continue
        first = fits[given[0]]
        differ = (
            [
                k
                for k in given[1:]
                if fits[k].shape != first.shape or not torch.equal(fits[k].to(first.dtype), first)
            ]
            if not first.is_meta
            else []
        )
        if differ:
            report.notes.append(
                f"tied weights {', '.join(given)} are one tensor in the model but differ in the checkpoint; "
                f"the value of {given[-1]!r} (loaded last) is the one kept"
            )


def _retie(target: nn.Module, model_state: Mapping[str, Any]) -> None:
    """Restore weight tying that ``assign=True`` broke (it sets each name to its own checkpoint tensor).

    All names of a tied group are pointed at the tensor now held by the first of them that changed, so
    the model keeps one tensor per group, as it was built.
    """
    for keys in _tied_groups(model_state):
        old = model_state[keys[0]]
        now = {k: _get_tensor(target, k) for k in keys}
        if all(v is now[keys[0]] for v in now.values()):
            continue
        winner = next((now[k] for k in reversed(keys) if now[k] is not old), now[keys[0]])
        for k in keys:
            module_name, _, attr = k.rpartition(".")
            module = target.get_submodule(module_name) if module_name else target
            if attr in module._parameters:
                module._parameters[attr] = winner  # type: ignore[assignment]
            elif attr in module._buffers:
                module._buffers[attr] = winner


def _get_tensor(target: nn.Module, key: str) -> Any:
    module_name, _, attr = key.rpartition(".")
    module = target.get_submodule(module_name) if module_name else target
    return module._parameters.get(attr, module._buffers.get(attr))


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


def _add_hint(
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


def _fail(message: str, report: LoadReport, cause: BaseException | None = None) -> LoadError:
    exc = LoadError(message)
    exc.report = report  # type: ignore[attr-defined]  # callers (inspect, the CLI) show it
    if cause is not None and hasattr(cause, "divergence"):
        exc.divergence = cause.divergence  # type: ignore[attr-defined]
    return exc


# ------------------------------------------------------------------------------------ pairing by structure


def _nothing_written(
    report: LoadReport,
    predicted: LoadReport,
    model_state: Mapping[str, Any],
    state: Mapping[str, Any],
    match: _Match,
) -> str:
    """The zero-load message once the model's own loading code has had every key and written nothing."""
    if predicted.loaded:
        return (
            f"no tensor loaded: {len(predicted.loaded)} checkpoint tensors match model keys by name, but the "
            "model's own loading code (a _load_from_state_dict override or a hook) wrote none of them; "
            "nothing was written"
        )
    message = (
        f"{_zero_message(report, model_state, state, match.passed, match.final)} The model's own loading "
        "code was offered every key and wrote nothing."
    )
    return message + (f" Pairing by structure was tried too: {match.refused}" if match.refused else "")


def _own_code_may_consume(target: nn.Module, keys: Iterable[str]) -> bool:
    """True when one of ``keys`` falls under a module whose own loading code may consume it.

    That is a module outside torch that overrides ``_load_from_state_dict`` or has a load pre-hook: it may
    read keys no parameter is named after (a legacy ``fc.w``), so what it writes is known only afterwards.
    """
    keys = list(keys)
    for name, module in target.named_modules():
        method = type(module)._load_from_state_dict
        own = bool(module._load_state_dict_pre_hooks) or not (
            getattr(method, "_transferkit_renames", False)
            or getattr(method, "__module__", "").startswith("torch.")
        )
        prefix = f"{name}." if name else ""
        if own and any(k.startswith(prefix) for k in keys):
            return True
    return False


def _wants_structure(align: str, by_name: _Match, model_state: Mapping[str, Any], has_rules: bool) -> bool:
    """``structure`` always; ``auto`` only when not one checkpoint key names a model key.

    Given rules are the caller's own mapping by name: ``auto`` then keeps to names, so a rule that maps
    nothing is reported as such instead of being silently replaced by a pairing it did not ask for.
    """
    if align == "structure":
        return True
    matched = by_name.mismatched or any(k in model_state for k in by_name.fits)
    return align == "auto" and not has_rules and not matched


@dataclass(frozen=True)
class _Match:
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


def _match(
    target: nn.Module,
    state: Mapping[str, Any],
    raw_keys: Sequence[str],
    cleaned: Mapping[str, str],
    rules: Sequence[Rule],
    model_state: Mapping[str, Any],
    align: str,
) -> _Match:
    """Pair checkpoint keys with the model's: by name, then by structure where ``align`` asks for it."""
    passed, final = _rename_chain(target, raw_keys, cleaned, rules)
    by_name = _Match(passed, final, *_classify(state, passed, final, model_state))
    if not _wants_structure(check_align_mode(align), by_name, model_state, bool(rules)):
        return by_name
    try:
        alignment = align_by_structure(
            {raw: state[raw] for raw in raw_keys if final[raw] is not None}, model_state
        )
    except LoadError as exc:
        return replace(by_name, refused=exc)
    passed, final = _aligned_chain(target, raw_keys, passed, final, alignment)
    return _Match(passed, final, *_classify(state, passed, final, model_state), alignment=alignment)


def _predict(
    match: _Match, model_state: Mapping[str, Any], notes: list[str], description: str, dry_run: bool
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


def _has_own_loading_code(target: nn.Module) -> bool:
    """True when a module outside torch overrides ``_load_from_state_dict`` or has a load pre-hook.

    Such code may consume keys no parameter is named after (a legacy ``fc.w``), so those keys are offered
    to it, and what it writes is only known afterwards.
    """
    for module in target.modules():
        if module._load_state_dict_pre_hooks:
            return True
        method = type(module)._load_from_state_dict
        if getattr(method, "_transferkit_renames", False):
            continue
        if not getattr(method, "__module__", "").startswith("torch."):
            return True
    return False


def _check(
    report: LoadReport,
    target: nn.Module,
    model_state: Mapping[str, Any],
    state: Mapping[str, Any],
    passed: Mapping[str, str | None],
    final: Mapping[str, str | None],
    *,
    strict: bool,
    min_coverage: float | Mapping[str, float] | None,
    assign: bool,
    dry_run: bool,
    defer_zero: bool = False,
) -> None:
    """Every reason to refuse, decided before a single tensor is written."""
    _check_mixin_policies(report, target)
    if not report.loaded and not defer_zero:
        raise _fail(_zero_message(report, model_state, state, passed, final), report)
    if strict and not report.ok:
        raise _fail(
            "strict load failed: the checkpoint and the model differ (nothing was written)\n"
            f"{report}\nhint: pass strict=False to load what fits, or add rename rules",
            report,
        )
    if min_coverage is not None:
        _check_coverage(report, model_state, min_coverage)
    if not dry_run:
        raw_of = {name: raw for raw, name in final.items() if name is not None}
        meta_src = [
            k
            for k in report.loaded
            if k in raw_of and isinstance(state[raw_of[k]], torch.Tensor) and state[raw_of[k]].is_meta
        ]
        if meta_src:
            raise ConfigError(
                f"{len(meta_src)} checkpoint tensors are on the meta device (e.g. {meta_src[0]!r}): they hold "
                "no values to load (was it read with map_location='meta'?). Read it with "
                "map_location='cpu', or pass dry_run=True to only check; nothing was written"
            )
    if not dry_run and not assign:
        meta = [
            k
            for k in report.loaded
            if isinstance(model_state.get(k), torch.Tensor) and model_state[k].is_meta
        ]
        if meta:
            raise ConfigError(
                f"{len(meta)} target tensors are on the meta device (e.g. {meta[0]!r}); copying into them "
                "does nothing. Pass assign=True to materialise them from the checkpoint, or dry_run=True "
                "to only check"
            )


def _check_mixin_policies(report: LoadReport, target: nn.Module) -> None:
    for name, module in target.named_modules():
        if not isinstance(module, RenameOnLoadMixin) or module.on_shape_mismatch != "error":
            continue
        prefix = f"{name}." if name else ""
        bad = {k: v for k, v in report.mismatched.items() if k.startswith(prefix)}
        if bad:
            listing = "; ".join(f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, (a, b) in bad.items())
            raise _fail(
                f"{type(module).__name__} at {name or '<root>'!r} has on_shape_mismatch='error' and the "
                f"checkpoint differs in shape: {listing}; nothing was written",
                report,
            )


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


def _zero_message(
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


def _check_coverage(
    report: LoadReport, model_state: Mapping[str, Any], min_coverage: float | Mapping[str, float]
) -> None:
    if isinstance(min_coverage, (int, float)) and not isinstance(min_coverage, bool):
        wanted: dict[Any, Any] = {"": min_coverage}
    elif isinstance(min_coverage, Mapping):
        wanted = dict(min_coverage)
    else:
        raise ConfigError(
            f"min_coverage must be a fraction in [0, 1] or a {{module_name: fraction}} dict; got "
            f"{type(min_coverage).__name__}: {min_coverage!r:.100}"
        )
    loaded = set(report.loaded)
    for module, fraction in wanted.items():
        if not isinstance(module, str):
            raise ConfigError(f"min_coverage keys are module names (str), got {module!r}")
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
            raise ConfigError(
                f"min_coverage for {module or 'the model'!r} must be a number in [0, 1]; got {fraction!r}"
            )
        if not 0.0 <= float(fraction) <= 1.0:
            raise ConfigError(
                f"min_coverage for {module or 'the model'!r} must be within [0, 1]; got {fraction!r}"
            )
        got = _module_coverage(model_state, loaded, module)
        if got is None and not module:
            raise ConfigError(
                "min_coverage is a fraction of the model's parameters, and this model has none (only "
                "buffers); drop min_coverage, or use strict=True to require every tensor"
            )
        if got is None:
            tops = ", ".join(report.coverage) or "-"
            raise ConfigError(
                f"min_coverage names {module!r}, which has no parameters in the model; "
                f"top-level modules: {tops}"
            )
        if got < fraction:
            raise _fail(
                f"coverage of {module or 'the model'!r} is {got:.1%} of its parameters, below min_coverage "
                f"{fraction:.1%}; nothing was written\n{report}",
                report,
            )


def _module_coverage(model_state: Mapping[str, Any], loaded: set[str], module: str) -> float | None:
    head = module.rstrip(".")
    total = done = 0
    # a tied tensor counts once, and as loaded when any of its names loaded
    loaded_ids = {id(model_state[k]) for k in loaded if k in model_state}
    seen: set[int] = set()
    for key, value in model_state.items():
        if not isinstance(value, nn.Parameter) or id(value) in seen:
            continue
        if key == head or key.startswith(head + ".") or not head:
            seen.add(id(value))
            total += value.numel()
            done += value.numel() if id(value) in loaded_ids else 0
    return done / total if total else None


def _with_versions(
    to_load: dict[str, Any], target: nn.Module, source_versions: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Attach per-module ``version`` metadata, as ``torch.load`` gives ``model.state_dict()`` output.

    ``load_state_dict`` hands each module ``state_dict._metadata[prefix]``; modules whose loading depends
    on it (torchvision's MNASNet refuses ``version=None``) need it on the filtered dict too. The file's own
    versions win where its prefixes are the model's (no renames); elsewhere the model's current ones apply.
    """
    versions: dict[str, Any] = {
        prefix: {"version": module._version} for prefix, module in target.named_modules()
    }
    for prefix, meta in (source_versions or {}).items():
        if prefix in versions and isinstance(meta, Mapping):
            versions[prefix] = dict(meta)
    out = OrderedDict(to_load)
    out._metadata = versions  # type: ignore[attr-defined]
    return out


def _verify(model: nn.Module, reference: nn.Module, tolerance: float, report: LoadReport) -> None:
    """Compare outputs with the reference on a probe batch the size the model expects."""
    from transferkit.converters import verify_outputs

    config = getattr(model, "data_config", None)
    size = tuple(config["input_size"]) if isinstance(config, Mapping) else (3, 224, 224)
    try:
        report.verified = verify_outputs(model, reference, input_size=size, tolerance=tolerance)
    except LoadError as exc:
        raise _fail(f"{exc}; the weights were written (load them again from a good source)", report) from None
    report.notes.append(
        f"verified against {type(reference).__name__}: largest output difference {report.verified:.3g} "
        f"(tolerance {tolerance:g})"
    )


def _stamps(target: nn.Module, model_state: Mapping[str, Any]) -> dict[str, tuple[int, int, int] | None]:
    """What identifies each model tensor's contents now: its object, storage address and version counter.

    ``copy_`` bumps the version counter and ``assign=True`` replaces the object, so a stamp that changes
    means the tensor was written; ``None`` where a tensor keeps no version counter (inference tensors).
    """
    out: dict[str, tuple[int, int, int] | None] = {}
    for key in model_state:
        tensor = _get_tensor(target, key)
        try:
            out[key] = (id(tensor), tensor.data_ptr(), tensor._version)
        except (RuntimeError, AttributeError):
            out[key] = None
    return out


def _write(
    target: nn.Module,
    to_load: dict[str, Any],
    model_state: Mapping[str, Any],
    passed_to_final: Mapping[str, str | None],
    assign: bool,
    report: LoadReport,
    fits: Mapping[str, Any],
) -> LoadReport:
    """Load through the model's own ``load_state_dict``; return the report of what was *written*.

    The report before writing is a prediction from names. The model's own loading code may consume keys
    no parameter is named after, or ignore keys it was given, so the tensors' stamps decide what loaded.
    """
    if assign:
        # assign=True adopts the checkpoint tensor as is, so dtype and (real) device must already be right.
        for passed_key, value in to_load.items():
            mine = model_state.get(passed_to_final[passed_key])  # type: ignore[arg-type]
            if isinstance(value, torch.Tensor) and isinstance(mine, torch.Tensor):
                device = value.device if mine.is_meta else mine.device
                if value.dtype != mine.dtype or value.device != device:
                    to_load[passed_key] = value.to(device=device, dtype=mine.dtype)
    before = _stamps(target, model_state)
    try:
        result = target.load_state_dict(to_load, strict=False, assign=assign)
    except Exception as exc:
        # Every check of transferkit's passed; this came from the model's own loading code (an override of
        # _load_from_state_dict, a hook). Undoing its partial writes would need a second copy of the
        # weights, which the memory budget of a load does not allow: say so instead of pretending.
        if isinstance(exc, TransferkitError) and not isinstance(exc, LoadError):
            raise
        raise _fail(
            f"the model's own loading code raised {type(exc).__name__}: {exc}. transferkit's checks had all "
            "passed, so tensors of modules that load_state_dict visited before the failing one may already "
            "be written; reload the model (or its weights) before using it",
            report,
        ) from exc
    report = _as_written(target, report, model_state, before, fits, passed_to_final, result.unexpected_keys)
    if assign and report.missing:
        still_meta = [
            k
            for k in report.missing
            if isinstance(model_state.get(k), torch.Tensor) and model_state[k].is_meta
        ]
        if still_meta:
            report.notes.append(
                f"{len(still_meta)} tensor(s) not in the checkpoint are still on the meta device: "
                f"{', '.join(compact_keys(still_meta))}; initialise them before use"
            )
    return report


def _as_written(
    target: nn.Module,
    report: LoadReport,
    model_state: Mapping[str, Any],
    before: Mapping[str, tuple[int, int, int] | None],
    fits: Mapping[str, Any],
    passed_to_final: Mapping[str, str | None],
    left_unused: Sequence[str],
) -> LoadReport:
    """Rebuild ``report`` from what the load wrote (stamps) and what it left unused (torch's list)."""
    after = _stamps(target, model_state)
    # a key whose stamp cannot be read counts as written when it was offered (the prediction stands)
    written = {
        k
        for k in model_state
        if (before[k] is None and k in fits) or (before[k] is not None and before[k] != after[k])
    }
    unused = set(left_unused)
    final_to_passed = {f: p for p, f in passed_to_final.items() if f is not None}
    consumed = [
        k
        for k in report.unexpected
        if k in fits and final_to_passed.get(k, k) not in unused and k not in unused
    ]
    offered = set(report.loaded)
    ignored = [
        k for k in report.loaded if k not in written and not _written_through_alias(k, written, model_state)
    ]
    extra = [k for k in model_state if k in written and k not in offered]
    if not (consumed or ignored or extra):
        return report
    checkpoint = {
        k: v for k, v in fits.items() if k in written or (k not in model_state and k not in consumed)
    }
    checkpoint.update({k: model_state[k] for k in extra})
    notes = list(report.notes)
    if ignored:
        notes.append(
            f"the model's own loading code left {len(ignored)} offered tensor(s) unwritten: "
            f"{', '.join(compact_keys(ignored))}; they keep their values"
        )
    if extra or consumed:
        notes.append(
            f"the model's own loading code consumed {len(consumed)} key(s) no parameter is named after "
            f"({', '.join(compact_keys(consumed)) or '-'}) and wrote {len(extra)} tensor(s) not offered by name "
            f"({', '.join(compact_keys(extra)) or '-'})"
        )
    new = build_report(
        model_state,
        checkpoint,
        renamed=report.renamed,
        mismatched=report.mismatched,
        notes=notes,
        dropped=report.dropped,
        source=report.source,
        dry_run=report.dry_run,
    )
    new.method, new.aligned, new.unwritten = report.method, report.aligned, ignored
    return new


def _written_through_alias(key: str, written: set[str], model_state: Mapping[str, Any]) -> bool:
    """A tied tensor written under another of its names (its stamp changed there, or assign re-tied it)."""
    mine = model_state.get(key)
    return any(model_state[k] is mine for k in written)
