"""Every reason to refuse a load, decided before a single tensor is written.

:func:`check_before_writing` runs them in order: a RenameOnLoadMixin's ``on_shape_mismatch="error"``,
zero tensors loaded, ``strict``, ``min_coverage`` (per module, counting parameter elements, a tied
tensor once), and meta-device tensors on either side. :func:`load_failure` is the ``LoadError`` they
raise, carrying the report.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from transferkit.load_report import build_report
    >>> model = nn.Linear(2, 1)
    >>> report = build_report(model.state_dict(keep_vars=True), {"weight": torch.ones(1, 2)})
    >>> check_before_writing(report, model, model.state_dict(keep_vars=True), {"weight": torch.ones(1, 2)},
    ...                      {"weight": "weight"}, {"weight": "weight"}, strict=True, min_coverage=None,
    ...                      assign=False, dry_run=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    transferkit.errors.LoadError: strict load failed: the checkpoint and the model differ ...
    ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError, LoadError
from transferkit.load_report import LoadReport
from transferkit.partial.hints import zero_message
from transferkit.rename import RenameOnLoadMixin

__all__ = ["load_failure", "check_before_writing", "own_code_may_consume"]


def load_failure(message: str, report: LoadReport, cause: BaseException | None = None) -> LoadError:
    exc = LoadError(message)
    exc.report = report  # type: ignore[attr-defined]  # callers (inspect, the CLI) show it
    if cause is not None and hasattr(cause, "divergence"):
        exc.divergence = cause.divergence  # type: ignore[attr-defined]
    return exc


def check_before_writing(
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
        raise load_failure(zero_message(report, model_state, state, passed, final), report)
    if strict and not report.ok:
        raise load_failure(
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
            raise load_failure(
                f"{type(module).__name__} at {name or '<root>'!r} has on_shape_mismatch='error' and the "
                f"checkpoint differs in shape: {listing}; nothing was written",
                report,
            )


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
            raise load_failure(
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


def own_code_may_consume(target: nn.Module, keys: Iterable[str]) -> bool:
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
