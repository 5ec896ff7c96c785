"""``transferkit evaluate RUN --data DIR``: score a finished run on a labelled image folder.

``DIR/<class>/*`` (or ``DIR/val/<class>/*`` beside ``DIR/train``) must hold exactly the run's classes
(unknown and missing ones are named). Prints accuracy, balanced accuracy, macro/weighted F1, top-5
accuracy (more than 5 classes), the expected calibration error and scikit-learn's per-class report, and
writes ``metrics.json``, ``confusion_matrix.csv``/``.png`` and ``misclassified.csv`` into a new folder
(``--output``, default ``RUN/evaluations/<DIR name>-<time>``): never over the run's own files.

Usage::

    transferkit evaluate runs/exp1 --data photos/test
    transferkit evaluate runs/exp1 --data photos --tta flip --output reports/exp1-test
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

from transferkit.commands.console import warnings_only
from transferkit.errors import ConfigError

__all__ = ["add_evaluate_parser", "run_evaluate"]


def add_evaluate_parser(sub: Any) -> None:
    """The ``evaluate`` subcommand's arguments."""
    p = sub.add_parser(
        "evaluate",
        help="score a finished run on a labelled image folder (metrics, confusion matrix, mistakes)",
        description="Evaluate a run on DIR/<class>/* with the run's class names and exact validation "
        "preprocessing; writes metrics.json, confusion_matrix.csv/.png and misclassified.csv into a new folder.",
    )
    p.add_argument("run", metavar="RUN", help="the run folder (or its model.safetensors)")
    p.add_argument("--data", required=True, metavar="DIR", help="DIR/<class>/images, or DIR/val/<class>")
    p.add_argument(
        "--output", metavar="DIR", help="a new or empty folder (default: RUN/evaluations/<DIR>-<time>)"
    )
    p.add_argument("--tta", choices=["flip"], help="test-time augmentation: average with the mirrored image")
    p.add_argument("--batch-size", type=int, help="images per batch (default: the run's)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error, not a skip")
    p.add_argument("--quiet", action="store_true", help="only the summary line")


def run_evaluate(ns: argparse.Namespace) -> int:
    """Check the run, the folder and the output, evaluate, write the report, print the summary."""
    from transferkit.use import load_run
    from transferkit.use.evaluate import evaluate_folder, write_evaluation
    from transferkit.use.loaded import check_loader

    check_loader(ns.batch_size, ns.workers)  # before the run loads: nothing is worth loading for these
    with warnings_only() as console:
        run = load_run(ns.run, device=ns.device)
        out = _output_folder(ns.output, run.folder.path, Path(ns.data))
        ev = evaluate_folder(run, ns.data, tta=ns.tta, batch_size=ns.batch_size, workers=ns.workers,
                             strict=ns.strict)  # fmt: skip
        console.validated()
    write_evaluation(out, ev)
    for line in summary(ev.metrics, ev.class_names, ev.labels, ev.probs, quiet=ns.quiet):
        console.out(line)
    console.out(f"wrote metrics.json, confusion_matrix.csv/.png, misclassified.csv to {out}")
    return 0


def _output_folder(output: str | None, run_dir: Path, data: Path) -> Path:
    """``--output`` (new, or an empty folder), or a new ``RUN/evaluations/<data>-<time>``."""
    if output:
        out = Path(output)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"--output {out} exists and is not an empty folder; evaluate writes into a new "
                              "folder, never over files: give a new --output")  # fmt: skip
        return out
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = (data.resolve().name or "data") + f"-{stamp}"
    out = run_dir / "evaluations" / name
    n = 2
    while out.exists():
        out, n = run_dir / "evaluations" / f"{name}-{n}", n + 1
    return out


def summary(
    metrics: dict[str, Any], class_names: Any, labels: Any, probs: Any, quiet: bool = False
) -> list[str]:
    """The printed lines: the headline metrics, then scikit-learn's per-class report."""
    top5 = metrics.get("top5_accuracy")
    lines = [
        f"accuracy {metrics['accuracy']:.2%}, balanced accuracy {metrics['balanced_accuracy']:.2%}, macro F1 "
        f"{metrics['macro avg']['f1']:.4f}, weighted F1 {metrics['weighted avg']['f1']:.4f}"
        + (f", top-5 accuracy {top5:.2%}" if top5 is not None else "")
        + f", ECE {metrics['ece']:.4f} on {metrics['images']} images"
        + (f" (tta {metrics['tta']})" if metrics.get("tta") else "")
    ]
    if not quiet:
        from sklearn.metrics import classification_report

        report = classification_report(labels, probs.argmax(1), labels=list(range(len(class_names))),
                                       target_names=list(class_names), digits=4, zero_division=0)  # fmt: skip
        lines.append(report.rstrip())
    return lines
