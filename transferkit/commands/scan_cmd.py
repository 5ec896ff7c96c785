"""``transferkit scan PATH...``: one line per checkpoint, exit 1 when any would be refused or is dangerous.

For CI: ``transferkit scan models/*.pt`` prints ``PATH: ok``, ``PATH: refused: why`` or
``PATH: DANGEROUS: which globals`` for each file (folders are searched for checkpoint files) and exits
0 only when every file would load with the default, safe reader. Nothing from the files is executed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transferkit.checkpoint.formats import is_checkpoint_name
from transferkit.commands.console import setup_logging

__all__ = ["run_scan"]


def run_scan(ns: argparse.Namespace) -> int:
    """Print :func:`transferkit.inspect.scan_checkpoint`'s line for each file; 1 if any fails, else 0."""
    from transferkit.inspect import scan_checkpoint

    handler, undo_logging = setup_logging(quiet=True, rank=0)
    handler.show_pending()
    failed = 0
    try:
        for path in _files(ns.paths):
            result = scan_checkpoint(path)
            failed += not result.ok
            print(result.line(), flush=True)
    finally:
        undo_logging()
    return 1 if failed else 0


def _files(paths: list[str]) -> list[Path]:
    """The paths, with each folder replaced by the checkpoint files below it (sorted)."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and is_checkpoint_name(p.name)))
        else:
            found.append(path)  # a missing file gets its own "refused: no such file" line
    return found
