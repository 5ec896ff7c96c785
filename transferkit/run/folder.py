"""``RunFolder``: the files of a run folder, named, written and read back in one place.

Every file goes through :func:`~transferkit.checkpoint.atomic_write` (the writers of
:mod:`transferkit.report`): a run killed at any moment leaves each file whole, old or new. The
checkpoints (``last.pt``, ``best.pt``) are still written by :class:`~transferkit.train.Trainer` into
:attr:`RunFolder.path`; moving them here is what remains of issue 13.

Example:
    >>> import tempfile
    >>> folder = RunFolder(tempfile.mkdtemp())
    >>> _ = folder.write_args({"epochs": 2}, {"device": "cpu"})
    >>> folder.read_args(), folder.read_resolved()
    ({'epochs': 2}, {'device': 'cpu'})
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunFolder"]


class RunFolder:
    """One run folder: ``args.yaml``, ``metrics.csv``, the curves, ``confusion_matrix.png``, ``last.pt``,
    ``best.pt``, ``model.safetensors`` and ``labels.json``."""

    ARGS, METRICS, CONFUSION = "args.yaml", "metrics.csv", "confusion_matrix.png"
    LAST, BEST, WEIGHTS, LABELS = "last.pt", "best.pt", "model.safetensors", "labels.json"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    # ------------------------------------------------------------------------------------------- writing

    def write_args(self, args: Mapping[str, Any], resolved: Mapping[str, Any]) -> Path:
        """``args.yaml``: the options as given (``args``) and what the run really used (``resolved``)."""
        from transferkit.report import write_yaml

        return write_yaml(self.path / self.ARGS, {"args": dict(args), "resolved": dict(resolved)})

    def write_history(self, history: Sequence[Mapping[str, Any]]) -> None:
        """``metrics.csv`` and the loss/accuracy curves of the epochs so far."""
        from transferkit.report import plot_curves, write_metrics_csv

        write_metrics_csv(self.path / self.METRICS, history)
        plot_curves(history, self.path)

    def write_confusion(self, matrix: Any, class_names: Sequence[str]) -> Path:
        from transferkit.report import plot_confusion_matrix

        return plot_confusion_matrix(matrix, class_names, self.path / self.CONFUSION)

    def export(self, weights: Mapping[str, Any], class_names: Sequence[str], info: Mapping[str, Any]) -> None:
        """``model.safetensors`` (the weights) and ``labels.json`` (class names, preprocessing, facts)."""
        from transferkit.report import export_model

        export_model(self.path, weights, class_names, info)

    # ------------------------------------------------------------------------------------------- reading

    def _args_file(self) -> dict[str, Any]:
        path = self.path / self.ARGS
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        return data if isinstance(data, dict) else {}

    def read_args(self) -> dict[str, Any]:
        """The options ``args.yaml`` recorded (empty without one)."""
        return dict(self._args_file().get("args") or {})

    def read_resolved(self) -> dict[str, Any]:
        """What ``args.yaml`` says the run used (device, weights source, ...)."""
        return dict(self._args_file().get("resolved") or {})

    def read_labels(self) -> dict[str, Any]:
        """``labels.json`` (empty before the export)."""
        path = self.path / self.LABELS
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def read_history(self) -> list[dict[str, float | None]]:
        """``metrics.csv``'s rows (empty before the first epoch)."""
        from transferkit.report import read_metrics_csv

        path = self.path / self.METRICS
        return read_metrics_csv(path) if path.is_file() else []

    def exported(self) -> bool:
        """Whether the export (``model.safetensors`` + ``labels.json``) is there."""
        return all((self.path / name).is_file() for name in (self.WEIGHTS, self.LABELS))

    def files(self) -> tuple[Path, ...]:
        """Every file in the folder, sorted."""
        return tuple(sorted(p for p in self.path.iterdir() if p.is_file())) if self.path.is_dir() else ()
