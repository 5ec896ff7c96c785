"""The command line: ``transferkit finetune``, ``inspect``, ``convert``, ``scan``, ``predict``, ``evaluate`` and
``export`` (entry point ``main``).

``transferkit finetune --backbone resnet50 --classes 10`` fine-tunes on the embedded digits (or
``--data DIR``) and writes a run folder (see :mod:`transferkit.report`). Every flag can also come from
``--config FILE.yaml`` (keys are flag names, ``batch-size`` or ``batch_size``); flags on the command
line win. ``--resume`` continues a run with its saved ``args.yaml`` as the base configuration.

Everything is validated -- data folder, classes, rules, device, backbone, init checkpoint, resume
checkpoint -- before the run folder is created, and any :class:`~transferkit.errors.TransferkitError`
(or argparse error) becomes one line on stderr and exit code 2: nothing written, no traceback.

Multi-process: ``torchrun --standalone --nproc_per_node=2 scripts/finetune.py --backbone resnet18``.
Only rank 0 prints and writes.

The pieces live in :mod:`transferkit.commands`: the parser, the flags, ``finetune`` (options ->
:mod:`transferkit.run` -> the console), ``inspect``, ``convert``, ``scan`` and the console.

Example:
    >>> main(["finetune", "--backbone", "resnet18", "--classes", "0"])  # doctest: +SKIP
    error: --classes must be an integer >= 1, got 0
    2
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from transferkit.commands.console import one_line
from transferkit.commands.convert_cmd import run_convert
from transferkit.commands.evaluate_cmd import run_evaluate
from transferkit.commands.export_cmd import run_export
from transferkit.commands.finetune import Interrupted, run_finetune
from transferkit.commands.flags import render_error
from transferkit.commands.inspect_cmd import run_inspect
from transferkit.commands.parser import DEFAULTS, build_parser
from transferkit.commands.predict_cmd import run_predict
from transferkit.commands.scan_cmd import run_scan
from transferkit.errors import ConfigError, TransferkitError

__all__ = ["main", "build_parser", "DEFAULTS"]

_COMMANDS = {
    "finetune": run_finetune,
    "inspect": run_inspect,
    "convert": run_convert,
    "scan": run_scan,
    "predict": run_predict,
    "evaluate": run_evaluate,
    "export": run_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 ``inspect``'s dry-run load would fail, 2 bad input or a
    TransferkitError, 130 interrupted).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    # `--backbone mymodels:net` names a module of the current folder, as `python -m` or uvicorn would find
    # it; appended, not prepended, so a file in the folder never shadows an installed package
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    rank = int(os.environ.get("RANK", "0"))
    try:
        ns = build_parser().parse_args(args)
        ns.argv = args[1:]
        _refuse_empty_paths(ns)
        return int(_COMMANDS[ns.command](ns) or 0)
    except TransferkitError as exc:
        if rank == 0:
            print(f"error: {one_line(render_error(exc))}", file=sys.stderr, flush=True)
        return 2
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt as exc:  # Ctrl-C: one line (what was kept, how to continue), exit 128 + SIGINT
        if rank == 0:
            print(
                one_line(str(exc)) if isinstance(exc, Interrupted) else "interrupted",
                file=sys.stderr,
                flush=True,
            )
        return 130


def _refuse_empty_paths(ns: argparse.Namespace) -> None:
    """``--out ""`` is an unset shell variable, not a wish for the default place: say so, write nothing."""
    for name in ("out", "output"):
        if getattr(ns, name, None) == "":
            flag = f"--{name}"
            raise ConfigError(f"{flag} is empty (an unset variable?); give a path, or leave {flag} out")


if __name__ == "__main__":
    sys.exit(main())
