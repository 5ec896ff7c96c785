"""``LoadReport``: what a load did, key by key, and the readable table it prints as.

Holds the report dataclass, :func:`build_report` (classify keys against a model's state dict and compute
per-module parameter coverage), and the display helpers behind the table: :func:`compact_keys` groups
keys that differ in one number (``layer1.{0..2}.conv1.weight``) or in the last name
(``bn.{weight,bias}``), renames are summarised as prefix swaps, pairs made by structure as first..last
runs (:func:`compact_pairs`), and percentages never round a partial load up to 100%.
:func:`~transferkit.partial.load_partial` builds and returns the report; this package knows nothing of
checkpoints or rename rules.

The modules: ``report`` (:class:`LoadReport` and its table), ``compact`` (key compaction) and ``build``
(:func:`build_report`, coverage).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(3, 2)
    >>> report = build_report(model.state_dict(keep_vars=True), {"weight": torch.ones(2, 3)})
    >>> report.missing, report.coverage
    (['bias'], {'weight': 1.0, 'bias': 0.0})
"""

from __future__ import annotations

from transferkit.load_report.build import build_report
from transferkit.load_report.compact import compact_keys, compact_pairs
from transferkit.load_report.report import LoadReport, Shape, significant_missing

__all__ = ["LoadReport", "build_report", "compact_keys", "compact_pairs", "significant_missing", "Shape"]
