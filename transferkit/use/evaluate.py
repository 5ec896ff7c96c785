"""Score a loaded run on a labelled image folder: scikit-learn's metrics, calibration, confusion matrix.

:func:`evaluate_folder` reads ``DIR/<class>/*`` (``DIR/val/<class>`` in a ``train``/``val`` layout) with the
run's class names, runs the network through :func:`transferkit.evaluation.evaluate` -- the computation
the run's validation pass used each epoch, so the accuracy on the run's own validation folder is its
validation accuracy -- and computes with scikit-learn: accuracy, balanced accuracy, per-class precision,
recall, F1 and support, macro and weighted averages, top-5 accuracy (more than 5 classes), the
confusion matrix; plus the expected calibration error. :func:`write_evaluation` writes ``metrics.json``,
``confusion_matrix.csv``/``.png`` and ``misclassified.csv`` into a new folder.

Example:
    >>> from transferkit.use import load_run
    >>> ev = evaluate_folder(load_run("runs/exp1"), "photos/test")  # doctest: +SKIP
    >>> ev.metrics["accuracy"], ev.metrics["macro avg"]["f1"]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from transferkit.errors import ConfigError
from transferkit.use.loaded import LoadedRun, check_loader, check_tta

__all__ = ["Evaluation", "evaluate_folder", "write_evaluation", "expected_calibration_error", "ECE_BINS"]

ECE_BINS = 15


@dataclass
class Evaluation:
    """What :func:`evaluate_folder` measured.

    Attributes:
        metrics: JSON-able: ``accuracy``, ``balanced_accuracy``, ``top5_accuracy`` (or None), ``ece``,
            ``loss``, ``images``, ``per_class`` (name -> precision, recall, f1, support), ``macro avg``,
            ``weighted avg``, ``data``, ``tta``.
        confusion: rows: true class, columns: predicted.
        paths, labels, probs: every image, its true label and the softmax probabilities.
        class_names: index -> name.
    """

    metrics: dict[str, Any]
    confusion: np.ndarray
    paths: list[str]
    labels: np.ndarray
    probs: np.ndarray
    class_names: tuple[str, ...]


class _Recorder:
    """The run as a callable for :func:`~transferkit.evaluation.evaluate`, keeping every batch's logits."""

    def __init__(self, run: LoadedRun, tta: str | None) -> None:
        self.run, self.tta, self.logits = run, tta, []  # type: ignore[var-annotated]

    def __call__(self, x: Tensor) -> Tensor:
        out = self.run.model(x)
        if self.tta == "flip":
            out = (out.float() + self.run.model(x.flip(-1)).float()) / 2
        self.logits.append(out.float().cpu())
        return out


def evaluate_folder(
    run: LoadedRun, data: str | os.PathLike, *, tta: str | None = None, batch_size: int | None = None,
    workers: int = 0, strict: bool = False,
) -> Evaluation:  # fmt: skip
    """Evaluate ``run`` on every image of ``data``, labelled by the run's class names.

    Args:
        run: the loaded run.
        data: ``DIR/<class>/*`` (or ``DIR/val/<class>/*`` beside ``DIR/train``).
        tta: ``"flip"`` averages the logits with the mirrored images'.
        batch_size: default the run's own batch size (``args.yaml``).
        workers: DataLoader worker processes.
        strict: an unreadable image is an error instead of a skip.

    Raises:
        ConfigError: a missing or empty folder; ``ClassNamesError`` when its class folders differ from the
            run's classes (unknown or missing ones are named).
    """
    from transferkit.data import ImageFileDataset
    from transferkit.evaluation import evaluate

    check_tta(tta)
    check_loader(batch_size, workers)
    samples = _samples(run, Path(data), strict)
    size = batch_size or int(run.folder.read_args().get("batch_size") or 64)
    dataset = ImageFileDataset(samples, run.preprocess, run.preprocess.mode, strict=strict)
    loader = DataLoader(dataset, batch_size=size, num_workers=workers, pin_memory=run.device.type == "cuda")
    recorder = _Recorder(run, tta)
    result = evaluate(recorder, loader, num_classes=run.num_classes, device=run.device,
                      amp_dtype=run.amp_dtype, channels_last=run.channels_last)  # fmt: skip
    probs = torch.cat(recorder.logits).softmax(1).numpy()
    labels = np.array([label for _, label in samples])
    metrics = classification_metrics(labels, probs, run.class_names)
    metrics.update(accuracy=result.acc, loss=result.loss, images=result.count, data=str(data), tta=tta)
    return Evaluation(metrics, np.asarray(result.confusion), [p for p, _ in samples], labels, probs,
                      run.class_names)  # fmt: skip


def _samples(run: LoadedRun, root: Path, strict: bool) -> list[tuple[str, int]]:
    """The folder's ``(path, label)`` samples; its class folders must be exactly the run's classes."""
    from collections import Counter

    from transferkit.data import check_class_names, scan_eval_folder

    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise ConfigError(f"`data` {root} {what}; give a folder of class sub-folders (DIR/<class>/*.png)",
                          param="data")  # fmt: skip
    folder = root / "val" if (root / "train").is_dir() and (root / "val").is_dir() else root
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise ConfigError(f"`data` {folder} has no class sub-folders; expected {folder}/<class>/<images>",
                          param="data")  # fmt: skip
    check_class_names(run.class_names, found, source=str(folder), allow_missing=False)
    split = scan_eval_folder(folder, list(run.class_names), strict=strict, strict_param="strict")
    counts = Counter(label for _, label in split.val)
    empty = [n for i, n in enumerate(run.class_names) if not counts[i]]
    if empty:
        raise ConfigError(f"`data` {folder}: the class folder(s) {empty} hold no readable images; every class "
                          "of the run needs images to be scored", param="data")  # fmt: skip
    return split.val


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]
) -> dict[str, Any]:
    """scikit-learn's accuracy, balanced accuracy, per-class and averaged precision/recall/F1/support,
    top-5 accuracy (more than 5 classes), and :func:`expected_calibration_error`.

    Example:
        >>> m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.4, 0.6]]), ("a", "b"))
        >>> m["balanced_accuracy"], m["per_class"]["b"]["recall"]
        (1.0, 1.0)
    """
    from sklearn import metrics as skm

    ids = list(range(len(class_names)))
    pred = probs.argmax(1)
    p, r, f, s = skm.precision_recall_fscore_support(labels, pred, labels=ids, zero_division=0)
    per_class = {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                 for i, n in enumerate(class_names)}  # fmt: skip
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(labels, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, pred)),
        "top5_accuracy": (
            float(skm.top_k_accuracy_score(labels, probs, k=5, labels=ids)) if len(ids) > 5 else None
        ),
        "ece": expected_calibration_error(labels, probs),
        "per_class": per_class,
    }
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(
            labels, pred, labels=ids, average=avg, zero_division=0
        )
        out[f"{avg} avg"] = {
            "precision": float(ap),
            "recall": float(ar),
            "f1": float(af),
            "support": int(len(labels)),
        }
    return out


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the top-1 confidence against accuracy in ``bins`` equal-width bins,
    weighted by the share of images in each (Guo et al. 2017).

    Example:
        >>> expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))
        0.0
    """
    conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(total)


def write_evaluation(out_dir: str | os.PathLike, ev: Evaluation) -> list[Path]:
    """``metrics.json``, ``confusion_matrix.csv`` + ``.png`` and ``misclassified.csv`` (path, true,
    predicted, confidence) in ``out_dir`` (created; every file written atomically)."""
    from transferkit.report import plot_confusion_matrix, write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(ev.class_names)
    cm = io.StringIO()
    writer = csv.writer(cm, lineterminator="\n")
    writer.writerow(["true \\ predicted", *names])
    writer.writerows([name, *map(int, row)] for name, row in zip(names, ev.confusion))
    wrong = io.StringIO()
    writer = csv.writer(wrong, lineterminator="\n")
    writer.writerow(["path", "true", "predicted", "confidence"])
    pred = ev.probs.argmax(1)
    for i in np.flatnonzero(pred != ev.labels):
        writer.writerow([ev.paths[i], names[ev.labels[i]], names[pred[i]], f"{ev.probs[i, pred[i]]:.6f}"])
    title = (
        f"confusion matrix on {Path(str(ev.metrics['data'])).name} (accuracy {ev.metrics['accuracy']:.2%})"
    )
    return [
        write_text(out / "metrics.json", json.dumps(ev.metrics, indent=2, ensure_ascii=False) + "\n"),
        write_text(out / "confusion_matrix.csv", cm.getvalue()),
        plot_confusion_matrix(ev.confusion.tolist(), names, out / "confusion_matrix.png", title=title),
        write_text(out / "misclassified.csv", wrong.getvalue()),
    ]
