"""The argparse definitions of ``transferkit finetune``, ``transferkit inspect`` and ``transferkit convert``.

Every ``finetune`` flag uses ``argparse.SUPPRESS`` as its default, so the parsed namespace holds only the
flags given on the command line: :func:`transferkit.run.options.layered_options` layers them over
:data:`DEFAULTS`, a resumed run's ``args.yaml`` and ``--config``. Parse errors raise
:class:`~transferkit.errors.ConfigError` (one line, exit 2) instead of argparse's own exit.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from typing import Any

from transferkit.commands.flags import flag_for, render_text
from transferkit.errors import ConfigError
from transferkit.run.spec import GROUPS, FinetuneSpec

__all__ = ["DEFAULTS", "build_parser", "finetune_actions"]

# Defaults of `finetune`: the fields of FinetuneSpec. Layering: DEFAULTS < a resumed run's args.yaml <
# --config < the command line.
DEFAULTS: dict[str, Any] = FinetuneSpec.defaults()


ALIGN_CHOICES = ("auto", "names", "structure")  # transferkit.align.ALIGN_MODES, without importing torch
ALIGN_HELP = (
    "how checkpoint tensors pair with the model's: names, structure (order, shapes and module grouping, "
    "for weights from another implementation), or auto (names; structure when no name matches)"
)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become ConfigError: one line, exit 2, through the same path as every error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse (before Python 3.13) takes "-1e-3" for an option, so `--lr -1e-3` failed to parse while
        # `--lr=-1e-3` worked: accept every negative number as a value, as Python 3.13's argparse does
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def _help(text: str, dest: str) -> str:
    default = DEFAULTS.get(dest)
    if default in (None, [], False):
        return text
    return f"{text} (default: {default})"


def _add_finetune(sub: Any) -> None:
    """One flag a :class:`FinetuneSpec` field: ``--name-with-dashes``, its help and argparse keywords."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune a backbone on the embedded digits or an image folder",
        description="Fine-tune a pretrained backbone; writes a run folder (args.yaml, metrics.csv, plots, "
        "last.pt, best.pt, model.safetensors, labels.json).",
        argument_default=argparse.SUPPRESS,
    )
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for option in fields(FinetuneSpec):
        meta = option.metadata
        help_text = _help(render_text(meta["help"]), option.name)
        groups[meta["group"]].add_argument(flag_for(option.name), help=help_text, **meta["cli"])


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="describe a checkpoint, or dry-run loading it into a model",
        description="Describe a checkpoint file; with --model/--classes or --against, also show how it would "
        "load (a dry run: nothing is modified).",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="the checkpoint file")
    p.add_argument("--model", help="backbone name to dry-run the load into (with --classes)")
    p.add_argument("--classes", type=int, help="number of classes of --model")
    p.add_argument("--against", metavar="OTHER", help="another checkpoint whose layout to compare with")
    p.add_argument("--rule", action="append", default=[], metavar="OLD=>NEW", help="rename rule (repeatable)")
    p.add_argument("--key", help="where the weights sit inside the checkpoint (e.g. state_dict)")
    p.add_argument(
        "--salvage", action="store_true", help="read files weights_only refuses without running code"
    )
    p.add_argument("--align", choices=ALIGN_CHOICES, default="auto", help=ALIGN_HELP + " (default: auto)")


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="rewrite a checkpoint from another implementation in a model's own layout (.safetensors)",
        description="Load CKPT into --model (by name, by structure, or through a registered converter) and "
        "write the tensors that loaded, under the model's own names, to --out (.safetensors, with the "
        "source's name, SHA-256 and the pairing method in its metadata). Later loads match by name.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="the checkpoint file")
    p.add_argument("--model", required=True, help="backbone whose layout to write (resnet50, timm:NAME)")
    p.add_argument("--classes", type=int, help="classes of --model (default: the checkpoint's head)")
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="the file to write")
    p.add_argument("--align", choices=ALIGN_CHOICES, default="auto", help=ALIGN_HELP + " (default: auto)")
    p.add_argument(
        "--converter",
        metavar="SOURCE->TARGET",
        help="a registered converter (default: the one whose source layout CKPT is in, if any)",
    )
    p.add_argument("--rule", action="append", default=[], metavar="OLD=>NEW", help="rename rule (repeatable)")
    p.add_argument("--key", help="where the weights sit inside the checkpoint (e.g. state_dict)")
    p.add_argument(
        "--verify",
        metavar="REFERENCE",
        help="backbone name of the source implementation: load CKPT into it by name and compare outputs",
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest output difference --verify accepts")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _add_scan(sub: Any) -> None:
    p = sub.add_parser(
        "scan",
        help="check checkpoints for CI: one line per file, exit 1 if any is refused or dangerous",
        description="Scan checkpoint files statically (nothing is executed): exit 0 when every file loads "
        "with the safe default reader, 1 when any would be refused or names dangerous globals.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint files or folders")


def build_parser() -> argparse.ArgumentParser:
    """The ``transferkit`` argument parser (subcommands ``finetune``, ``inspect`` and ``convert``)."""
    from transferkit import __version__

    parser = _Parser(prog="transferkit", description="Transfer learning on PyTorch.")
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_finetune(sub)
    _add_inspect(sub)
    _add_convert(sub)
    _add_scan(sub)
    # using a finished run (issue 14): each command module defines its own arguments
    from transferkit.commands.evaluate_cmd import add_evaluate_parser
    from transferkit.commands.export_cmd import add_export_parser
    from transferkit.commands.predict_cmd import add_predict_parser

    add_predict_parser(sub)
    add_evaluate_parser(sub)
    add_export_parser(sub)
    return parser


def finetune_actions() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["finetune"]._actions if a.dest not in ("help",)}
