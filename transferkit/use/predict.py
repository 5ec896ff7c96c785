"""Classify image files with a loaded run, in batches through a DataLoader, and write the results.

:func:`predict_files` reads each file as the run read its images (in DataLoader workers when asked), runs
the network as the run's validation pass did, and returns the top-k classes of every readable file. An
unreadable file is reported and skipped -- the others are still classified -- or, with ``strict=True``,
is an error. :func:`write_predictions` writes a CSV or JSON file atomically.

Example:
    >>> from transferkit.use import load_run
    >>> run = load_run("runs/exp1")  # doctest: +SKIP
    >>> result = predict_files(run, expand_inputs(["photos/"]), topk=3)  # doctest: +SKIP
    >>> write_predictions("out.csv", result.predictions)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from transferkit.errors import ConfigError, TransferkitError
from transferkit.use.loaded import LoadedRun, Prediction, check_loader, check_topk, check_tta
from transferkit.use.preprocess import Preprocess

__all__ = ["PredictResult", "predict_files", "write_predictions", "OUTPUT_FORMATS", "check_output"]

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = (".csv", ".json")


@dataclass
class PredictResult:
    """The predictions of the readable files, in input order, and the files skipped with their reasons."""

    predictions: list[Prediction]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    class_names: tuple[str, ...] = ()


class _Files(Dataset):
    """``(input tensor or None, index, error)`` for each path: a bad file never kills a worker."""

    def __init__(self, paths: Sequence[str], preprocess: Preprocess) -> None:
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, str]:
        try:
            return self.preprocess(self.preprocess.read(self.paths[index])), index, ""
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt files
            return None, index, f"{type(exc).__name__}: {exc}"


def _collate(
    items: list[tuple[Tensor | None, int, str]],
) -> tuple[Tensor | None, list[int], list[tuple[int, str]]]:
    good = [(x, i) for x, i, _ in items if x is not None]
    bad = [(i, err) for x, i, err in items if x is None]
    batch = torch.stack([x for x, _ in good]) if good else None
    return batch, [i for _, i in good], bad


def predict_files(
    run: LoadedRun,
    paths: Sequence[str],
    *,
    topk: int | None = None,
    tta: str | None = None,
    batch_size: int = 32,
    workers: int = 0,
    strict: bool = False,
    with_logits: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PredictResult:
    """Top-k classes of every readable image file in ``paths``.

    Args:
        run: the loaded run.
        paths: image files (see :func:`transferkit.use.expand_inputs`).
        topk: classes kept per image (at most the run's class count; ``None``: 5, or all of fewer).
        tta: ``"flip"`` averages the logits with the mirrored image's.
        batch_size, workers: the DataLoader's.
        strict: an unreadable file is an error instead of a skip.
        with_logits: keep every class's logit.
        progress: called with the number of files done after each batch.

    Raises:
        ConfigError: bad ``topk``, ``tta``, ``batch_size`` or ``workers``.
        TransferkitError: an unreadable file with ``strict`` (``param="strict"``), or no readable file.
    """
    k = check_topk(topk, run.num_classes)
    check_tta(tta)
    check_loader(batch_size, workers)
    loader = DataLoader(_Files(paths, run.preprocess), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, pin_memory=run.device.type == "cuda")  # fmt: skip
    result = PredictResult([], [], run.class_names)
    done = 0
    for batch, indices, bad in loader:
        for i, err in bad:
            if strict:
                raise TransferkitError(f"cannot read image {paths[i]} ({err})", param="strict",
                                       hint="remove or fix the file, or drop `strict` to skip it")  # fmt: skip
            logger.warning("skipping unreadable image %s (%s)", paths[i], err)
            result.unreadable.append((paths[i], err))
        if batch is not None:
            result.predictions += run.top(run.logits(batch, tta), k, [paths[i] for i in indices], with_logits)
        done += len(indices) + len(bad)
        if progress is not None:
            progress(done)
    if not result.predictions:
        raise TransferkitError(f"none of the {len(paths)} input image(s) could be read "
                               f"(e.g. {result.unreadable[0][0]}: {result.unreadable[0][1]})", param="inputs")  # fmt: skip
    return result


def check_output(path: str | os.PathLike, overwrite: bool = False, *, param: str = "out") -> Path:
    """Refuse, before any work, an output file that would be replaced without ``overwrite``, has another
    extension than ``.csv``/``.json``, or cannot be written where it is."""
    out = Path(path)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise ConfigError(f"`{param}` {out} must end in .csv or .json", param=param)
    if out.is_dir():
        raise ConfigError(f"`{param}` {out} is a folder; give a file name", param=param)
    if out.exists() and not overwrite:
        raise ConfigError(f"`{param}` {out} exists; pass `overwrite`=True to replace it, or choose another file",
                          param=param)  # fmt: skip
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise ConfigError(f"`{param}` {out}: the folder {out.parent} does not exist or is not writable",
                          param=param)  # fmt: skip
    return out


def write_predictions(path: str | os.PathLike, result: PredictResult) -> Path:
    """``result`` as CSV (``path``, ``class_1``, ``prob_1``, ..., then ``logit_<class>`` columns when the
    logits were kept) or JSON (a list of ``{"path", "top": [{"class", "prob"}], "logits"}``), atomically."""
    from transferkit.report import write_text

    out = Path(path)
    text = _json(result) if out.suffix.lower() == ".json" else _csv(result)
    return write_text(out, text)


def _csv(result: PredictResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    k = len(result.predictions[0].classes) if result.predictions else 0
    logits = bool(result.predictions) and result.predictions[0].logits is not None
    header = ["path", *(f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "prob"))]
    writer.writerow(header + ([f"logit_{n}" for n in result.class_names] if logits else []))
    for p in result.predictions:
        row: list[Any] = [p.source]
        for name, prob in zip(p.classes, p.probs):
            row += [name, f"{prob:.6f}"]
        writer.writerow(row + ([f"{v:.6g}" for v in p.logits] if p.logits is not None else []))
    return buf.getvalue()


def _json(result: PredictResult) -> str:
    rows = []
    for p in result.predictions:
        row: dict[str, Any] = {
            "path": p.source,
            "top": [{"class": c, "prob": v} for c, v in zip(p.classes, p.probs)],
        }
        if p.logits is not None:
            row["logits"] = dict(zip(result.class_names, p.logits))
        rows.append(row)
    return json.dumps(rows, indent=1, ensure_ascii=False) + "\n"
