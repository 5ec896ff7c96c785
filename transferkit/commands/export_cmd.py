"""``transferkit export RUN --format onnx|torchscript``: a self-contained model file, checked before written.

The eager model and the export are compared on the run's validation images (when its data is still
there) and on a random batch; the largest absolute logit difference is printed, and above ``--tolerance``
(or with any top-1 disagreement) nothing is written and the exit code is 2. The file carries the class
names and the preprocessing (ONNX metadata; a ``transferkit.json`` extra file in TorchScript).

Usage::

    transferkit export runs/exp1 --format onnx --dynamic-batch          # runs/exp1/model.onnx
    transferkit export runs/exp1 --format torchscript --out deploy/model.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from transferkit.commands.console import warnings_only

__all__ = ["add_export_parser", "run_export"]

_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def add_export_parser(sub: Any) -> None:
    """The ``export`` subcommand's arguments."""
    from transferkit.use.export import DEFAULT_TOLERANCE

    p = sub.add_parser(
        "export",
        help="export a finished run to ONNX or TorchScript, checked against the eager model",
        description="Export a run's model with its class names and preprocessing inside the file, after "
        "comparing the export's outputs with the eager model's on the run's validation images and a random "
        "batch.",
    )
    p.add_argument("run", metavar="RUN", help="the run folder (or its model.safetensors)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="(default: onnx)")
    p.add_argument("--out", metavar="FILE", help="the file to write (default: RUN/model.onnx or "
                   "RUN/model.torchscript.pt)")  # fmt: skip
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--dynamic-batch", action="store_true", help="accept any batch size (default: 1)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest absolute logit difference accepted, per unit of the largest logit "
                   f"(default: {DEFAULT_TOLERANCE:g})")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--quiet", action="store_true", help="only the result line")


def run_export(ns: argparse.Namespace) -> int:
    """Load the run, export, check parity, write; print the differences."""
    from transferkit.use import load_run
    from transferkit.use.export import export_run

    with warnings_only() as console:
        run = load_run(ns.run, device="cpu")
        out = Path(ns.out) if ns.out else run.folder.path / f"model{_SUFFIX[ns.format]}"
        report = export_run(run, out, format=ns.format, opset=ns.opset, dynamic_batch=ns.dynamic_batch,
                            tolerance=ns.tolerance, overwrite=ns.overwrite)  # fmt: skip
        console.validated()
    val = (
        f"{report.val_max_abs_diff:.3g} on {report.val_images} validation images (top-1 agrees on "
        f"{report.val_top1_agree}/{report.val_images}), "
        if report.val_images
        else "no validation images (the run's data is not there), "
    )
    console.out(
        f"exported {ns.format} to {report.path}: largest |eager - {ns.format}| logit difference {val}"
        f"{report.random_max_abs_diff:.3g} on a random batch; accepted up to {report.limit:.3g} (--tolerance "
        f"{report.tolerance:g} x {report.logit_scale:.3g}, the largest logit) "
        f"({report.seconds:.1f} s)"
    )
    return 0
