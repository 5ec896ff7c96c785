"""The one write: through the model's own ``load_state_dict``, then a report of what was really written.

:func:`write_state` hands the checked tensors to ``model.load_state_dict(..., strict=False)`` so the
model's own ``_load_from_state_dict`` overrides and hooks run; since that code may consume keys no
parameter is named after, or ignore keys it was given, each tensor's stamp (object, storage, version
counter) before and after decides what loaded. :func:`with_versions` attaches the per-module ``version``
metadata some modules need on the filtered dict.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1)
    >>> sorted(with_versions({"weight": torch.ones(1, 2)}, model, None)._metadata[""])
    ['version']
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from transferkit.errors import LoadError, TransferkitError
from transferkit.load_report import LoadReport, build_report, compact_keys
from transferkit.partial.checks import load_failure
from transferkit.partial.tied import get_tensor

__all__ = ["with_versions", "write_state"]


def with_versions(
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


def _stamps(target: nn.Module, model_state: Mapping[str, Any]) -> dict[str, tuple[int, int, int] | None]:
    """What identifies each model tensor's contents now: its object, storage address and version counter.

    ``copy_`` bumps the version counter and ``assign=True`` replaces the object, so a stamp that changes
    means the tensor was written; ``None`` where a tensor keeps no version counter (inference tensors).
    """
    out: dict[str, tuple[int, int, int] | None] = {}
    for key in model_state:
        tensor = get_tensor(target, key)
        try:
            out[key] = (id(tensor), tensor.data_ptr(), tensor._version)
        except (RuntimeError, AttributeError):
            out[key] = None
    return out


def write_state(
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
        raise load_failure(
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
