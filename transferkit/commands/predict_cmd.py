"""``transferkit predict RUN INPUT...``: classify images with a finished run.

Inputs are image files, folders (searched recursively), glob patterns or list files (``.txt``, one path a
line). Each image gets a row: its path, the top-k classes with their probabilities, and with ``--logits``
every class's logit; written to ``--out FILE.csv|.json`` atomically (an existing file only with
``--overwrite``), or printed. A progress bar on a terminal, plain progress lines otherwise. An unreadable
image is reported and skipped (``--strict``: an error); everything is checked before the first image.

Usage::

    transferkit predict runs/exp1 photos/ extra.jpg --topk 3 --out predictions.csv
    transferkit predict runs/exp1 'shots/**/*.png' --tta flip --out predictions.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from transferkit.commands.console import Console, warnings_only

__all__ = ["add_predict_parser", "run_predict"]


def add_predict_parser(sub: Any) -> None:
    """The ``predict`` subcommand's arguments."""
    p = sub.add_parser(
        "predict",
        help="classify images with a finished run (top-k classes and probabilities)",
        description="Classify images with a run's model and its exact validation preprocessing. INPUT: image "
        "files, folders (recursive), glob patterns or .txt files listing paths.",
    )
    p.add_argument("run", metavar="RUN", help="the run folder (or its model.safetensors)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, glob patterns or list files")
    p.add_argument(
        "--topk", type=int, help="classes per image (default: 5, or every class of a run with fewer)"
    )
    p.add_argument("--out", metavar="FILE", help="write .csv or .json here (default: print the results)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--logits", action="store_true", help="also write every class's logit")
    p.add_argument("--tta", choices=["flip"], help="test-time augmentation: average with the mirrored image")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    p.add_argument(
        "--workers", type=int, help="DataLoader worker processes (default: up to 4, one core spare)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error, not a skip")
    p.add_argument("--quiet", action="store_true", help="no progress and no summary line")


def run_predict(ns: argparse.Namespace) -> int:
    """Check everything, classify, write or print the rows, say what was skipped."""
    from transferkit.use import expand_inputs, load_run, predict_files, write_predictions
    from transferkit.use.loaded import check_loader, check_topk
    from transferkit.use.predict import check_output

    out = check_output(ns.out, ns.overwrite) if ns.out else None
    check_loader(ns.batch_size, ns.workers)  # before the run loads: nothing is worth loading for these
    with warnings_only(bars=not ns.quiet and sys.stderr.isatty()) as console:
        run = load_run(ns.run, device=ns.device)
        if out is not None:
            run.folder.refuse_own_file(out, param="out")
        check_topk(ns.topk, run.num_classes)
        paths = expand_inputs(ns.inputs)
        console.validated()
        workers = ns.workers if ns.workers is not None else default_workers(len(paths), ns.batch_size)
        started = time.perf_counter()
        with _Progress(console, len(paths), ns.quiet or len(paths) <= ns.batch_size) as progress:
            result = predict_files(run, paths, topk=ns.topk, tta=ns.tta, batch_size=ns.batch_size,
                                   workers=workers, strict=ns.strict, with_logits=ns.logits,
                                   progress=progress)  # fmt: skip
        seconds = time.perf_counter() - started
    if out is not None:
        write_predictions(out, result)
    else:
        for p in result.predictions:
            print(f"{p.source}\t" + "\t".join(f"{c} {v:.4f}" for c, v in zip(p.classes, p.probs)), flush=True)
    if not ns.quiet:
        skipped = f"; skipped {len(result.unreadable)} unreadable" if result.unreadable else ""
        where = f"; wrote {out}" if out is not None else ""
        line = (f"predicted {len(result.predictions)} image(s) in {seconds:.1f} s "
                f"({len(result.predictions) / max(seconds, 1e-9):.1f} images/s){skipped}{where}")  # fmt: skip
        print(line, file=sys.stdout if out is not None else sys.stderr, flush=True)
    return 0


def default_workers(images: int, batch_size: int) -> int:
    """DataLoader workers for ``images`` files: none for one batch (starting processes costs more), else
    up to 4, leaving a core to the main process."""
    if images <= batch_size:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


class _Progress:
    """A tqdm bar on a terminal; otherwise a plain line at each tenth of the images (none with ``quiet``:
    --quiet, or a single batch)."""

    def __init__(self, console: Console, total: int, quiet: bool) -> None:
        self.console, self.total, self.quiet = console, total, quiet
        self.bar: Any = None
        self.next_line = max(1, total // 10)

    def __enter__(self) -> _Progress:
        if self.console.bars and not self.quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="predict", unit="img", leave=False, file=sys.stderr)
        return self

    def __call__(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif not self.quiet and (done >= self.next_line or done == self.total) and self.total > 1:
            print(f"predict: {done}/{self.total} images", file=sys.stderr, flush=True)
            self.next_line = done + max(1, self.total // 10)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()
