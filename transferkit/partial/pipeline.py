"""``load_partial``'s pipeline: extract -> clean -> rename | align -> match -> check -> write -> report.

Each stage lives in its own module of :mod:`transferkit.partial` (inputs, matching, hints, checks,
tied, writing); this one runs them in order, with every check before the first write.

Example:
    >>> from torch import nn
    >>> report = load_partial(nn.Linear(3, 2), nn.Linear(3, 2), dry_run=True)
    >>> report.loaded, report.dry_run
    (['weight', 'bias'], True)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from transferkit.checkpoint.containers import unwrap_model
from transferkit.errors import ConfigError, LoadError
from transferkit.load_report import LoadReport
from transferkit.partial.checks import check_before_writing, load_failure, own_code_may_consume
from transferkit.partial.hints import add_rule_hint, nothing_written_message, zero_message
from transferkit.partial.inputs import (
    check_no_lazy,
    check_state_keys,
    describe_source,
    make_dense,
    resolve_source,
)
from transferkit.partial.matching import Match, match_keys, predict_report
from transferkit.partial.tied import note_tied_conflicts, retie
from transferkit.partial.writing import with_versions, write_state
from transferkit.rename import RenameOnLoadMixin, Rule, clean_keys, normalize_rules

__all__ = ["load_partial"]

logger = logging.getLogger("transferkit.partial")


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
        >>> import torch
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
    check_no_lazy(model_state)
    state = resolve_source(source, key=key, map_location=map_location, salvage=salvage, trusted=trusted)
    description = describe_source(source)
    check_state_keys(state, description)
    if not dry_run:
        state = make_dense(state, notes)

    raw_keys = list(state)
    cleaned, clean_notes = clean_keys(raw_keys, model_state, rules_t, model=target)
    notes.extend(clean_notes)
    match = match_keys(target, state, raw_keys, cleaned, rules_t, model_state, align)
    report = _checked_prediction(
        target, model_state, state, match, notes, description,
        align=align, strict=strict, min_coverage=min_coverage, assign=assign, dry_run=dry_run,
    )  # fmt: skip
    if dry_run:
        return report
    report = _write_checked(target, model_state, state, match, report, assign)
    if verify is not None:
        _verify(model, verify, tolerance, report)
    if isinstance(target, RenameOnLoadMixin):
        # its own _load_from_state_dict saw only the filtered dict; the full picture is this report
        target.load_report = report
    logger.info("load_partial(%s): %s", description, report.summary())
    return report


def _checked_prediction(
    target: nn.Module,
    model_state: Mapping[str, Any],
    state: Mapping[str, Any],
    match: Match,
    notes: list[str],
    description: str,
    *,
    align: str,
    strict: bool,
    min_coverage: float | Mapping[str, float] | None,
    assign: bool,
    dry_run: bool,
) -> LoadReport:
    """The report the names predict, with every check run on it: nothing here writes, so a refusal leaves
    the model as it was."""
    passed, final, refused = match.passed, match.final, match.refused
    if refused is not None and align == "structure":
        raise load_failure(
            str(refused), predict_report(match, model_state, [], description, dry_run), refused
        )
    report = predict_report(match, model_state, notes, description, dry_run)
    add_rule_hint(report, state, passed, final, model_state)
    # keys no parameter is named after are offered to the model's own loading code (issue: a legacy
    # `fc.w` renamed by an override); when nothing else loads, only writing tells whether it used them
    defer_zero = not dry_run and own_code_may_consume(
        target, [passed[r] or "" for r in state if final[r] and final[r] not in model_state]
    )
    if refused is not None and not defer_zero:
        zero = zero_message(report, model_state, state, passed, final)
        raise load_failure(f"{zero} Pairing by structure was tried too: {refused}", report, refused)
    check_before_writing(
        report, target, model_state, state, passed, final,
        strict=strict, min_coverage=min_coverage, assign=assign, dry_run=dry_run, defer_zero=defer_zero,
    )  # fmt: skip
    note_tied_conflicts(report, match.fits, model_state)
    return report


def _write_checked(
    target: nn.Module,
    model_state: Mapping[str, Any],
    state: Mapping[str, Any],
    match: Match,
    predicted: LoadReport,
    assign: bool,
) -> LoadReport:
    """Write what passed the checks; the report of what was written. A load that wrote nothing is refused
    (the model is then as it was), and ``assign=True`` gets its tied weights back."""
    passed, final = match.passed, match.final
    renamed_any = any(passed[r] != r for r in state)
    report = write_state(
        target,
        with_versions(match.to_load, target, None if renamed_any else getattr(state, "_metadata", None)),
        model_state,
        {passed[r]: final[r] for r in state if final[r] is not None},
        assign,
        predicted,
        match.fits,
    )
    if not report.loaded:  # nothing was written (that is what the report says), so the model is as it was
        raise load_failure(
            nothing_written_message(report, predicted, model_state, state, match), report, match.refused
        )
    if assign:
        retie(target, model_state)
    return report


def _verify(model: nn.Module, reference: nn.Module, tolerance: float, report: LoadReport) -> None:
    """Compare outputs with the reference on a probe batch the size the model expects."""
    from transferkit.converters import verify_outputs

    config = getattr(model, "data_config", None)
    size = tuple(config["input_size"]) if isinstance(config, Mapping) else (3, 224, 224)
    try:
        report.verified = verify_outputs(model, reference, input_size=size, tolerance=tolerance)
    except LoadError as exc:
        raise load_failure(
            f"{exc}; the weights were written (load them again from a good source)", report
        ) from None
    report.notes.append(
        f"verified against {type(reference).__name__}: largest output difference {report.verified:.3g} "
        f"(tolerance {tolerance:g})"
    )
