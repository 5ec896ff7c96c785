"""``transferkit inspect CKPT``: describe a checkpoint, or dry-run loading it into a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from transferkit.checkpoint.formats import is_checkpoint_name
from transferkit.commands.console import setup_logging
from transferkit.commands.flags import render_text
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
    if ns.classes is not None and not ns.model:
        raise ConfigError(
            f"--classes {ns.classes} applies to --model; add --model NAME to dry-run the load, or drop --classes"
        )
    for flag, value in (("checkpoint", ns.checkpoint), ("--against", ns.against)):
        if value is not None:
            _check_file(flag, Path(value))
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
            align=ns.align,
        )
    finally:
        undo_logging()
    print(render_text(text))
    # a dry run that would fail is a failed command: scripts (`inspect ... && finetune ...`) must see it
    return 1 if getattr(text, "load_fails", False) else 0


def _check_file(flag: str, path: Path) -> None:
    """A checkpoint argument that names a file, or an error saying what it names instead."""
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.is_file() and is_checkpoint_name(p.name))
        hint = f"checkpoint files in it: {', '.join(found[:8])}" if found else "it holds no checkpoint files"
        raise ConfigError(f"{flag} {path} is a folder, not a checkpoint file; {hint}")
    if not path.exists():
        raise ConfigError(f"{flag} {path}: no such file; check the path")
    if not path.is_file():
        raise ConfigError(f"{flag} {path} is not a regular file; give a checkpoint file")
