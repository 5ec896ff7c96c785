"""``load_partial``: load what fits from a checkpoint and say exactly what happened.

The pipeline: extract the state dict -> clean wrapper prefixes -> apply rename rules -> match every key
against the model -> check (strict, zero tensors, coverage) -> load through the model's own
``load_state_dict`` -> return a :class:`~transferkit.load_report.LoadReport`. Every check runs before the
first tensor is written, so when ``load_partial`` raises, the model is exactly as it was. The one
exception is an error raised by the model's *own* loading code (a ``_load_from_state_dict`` override or a
hook) once writing has begun: undoing it would need a second copy of the weights, so it is re-raised as a
``LoadError`` that says the model may be partly written.

The modules, one a stage: ``pipeline`` (:func:`load_partial`, the stages in order), ``inputs`` (the
source as a flat state dict, the model's state, both checked), ``matching`` (the rename chain, pairing by
name or structure, the predicted report), ``hints`` (:func:`suggest_prefix_rule` and the zero-load
messages), ``checks`` (every refusal, before writing), ``tied`` (tied weights through a load) and
``writing`` (the write, and the report of what it really wrote). The report itself and its table live in
:mod:`transferkit.load_report`.

Example:
    >>> from torch import nn
    >>> src = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    >>> dst = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 5))
    >>> report = load_partial(dst, src)
    >>> report.loaded, list(report.mismatched)
    (['0.weight', '0.bias'], ['1.weight', '1.bias'])
"""

from __future__ import annotations

from transferkit.partial.hints import suggest_prefix_rule
from transferkit.partial.pipeline import load_partial

__all__ = ["load_partial", "suggest_prefix_rule"]
