"""``inspect_checkpoint``: what is inside a checkpoint, and what a load into a model would do.

Without a model it describes the file: format, nested structure, which dict holds the weights, tensor
and parameter counts, dtypes, the devices the tensors were saved on (read from the file's storage
records, no GPU needed), grouped key prefixes, metadata, and whether optimizer state is present.
With a model (a backbone name built on the meta device, or an ``nn.Module``) or another checkpoint it
adds the :class:`~transferkit.load_report.LoadReport` of a dry run. Zip files are read with ``mmap``, so
large files inspect quickly; files that ``weights_only`` refuses are described, never executed.
:func:`scan_checkpoint` (``transferkit scan``) only says whether a file would load safely.

The modules: ``inspection`` (:func:`inspect_checkpoint`), ``reading`` (format, size, storage devices,
unsafe globals), ``description`` (:func:`describe_object`), ``dry_run`` and ``scan``.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "w.pt"
    >>> torch.save({"epoch": 3, "state_dict": torch.nn.Linear(2, 3).state_dict()}, path)
    >>> print(inspect_checkpoint(path).splitlines()[0])  # doctest: +ELLIPSIS
    checkpoint: w.pt (... KB, zip torch file)
"""

from __future__ import annotations

from transferkit.inspect.description import describe_object
from transferkit.inspect.dry_run import skeleton_from_state_dict
from transferkit.inspect.inspection import Inspection, inspect_checkpoint
from transferkit.inspect.scan import ScanResult, scan_checkpoint

__all__ = [
    "inspect_checkpoint",
    "Inspection",
    "describe_object",
    "skeleton_from_state_dict",
    "scan_checkpoint",
    "ScanResult",
]
