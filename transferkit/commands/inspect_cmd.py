"""``transferkit inspect CKPT``: describe a checkpoint, or dry-run loading it into a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from transferkit.commands.console import setup_logging
from transferkit.errors import ConfigError

__all__ = ["run_inspect"]


def run_inspect(ns: argparse.Namespace) -> int:
    """Check the arguments, then print :func:`transferkit.inspect.inspect_checkpoint`'s description."""
    from transferkit.inspect import inspect_checkpoint

    if ns.model and ns.against:
        raise ConfigError("give --model (with --classes) or --against, not both")
    if ns.model and ns.classes is None:
        raise ConfigError("--model needs --classes N (the number of classes of the model to load into)")
    if ns.classes is not None and ns.classes < 1:
        raise ConfigError(f"--classes must be an integer >= 1, got {ns.classes}")
    if not Path(ns.checkpoint).is_file():
        raise ConfigError(f"checkpoint {ns.checkpoint} does not exist")
    handler, undo_logging = setup_logging(quiet=True, rank=0)
    handler.show_pending()
    try:
        text = inspect_checkpoint(
            ns.checkpoint,
            model=ns.model,
            num_classes=ns.classes,
            against=ns.against,
            rules=list(ns.rule),
            salvage=ns.salvage,
            key=ns.key,
        )
    finally:
        undo_logging()
    print(text)
    return 0
