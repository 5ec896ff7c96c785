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

    # ------------------------------------------------------------------------------ reading a finished run

    @property
    def weights(self) -> Path:
        """``model.safetensors``: the exported (best) weights."""
        return self.path / self.WEIGHTS

    def missing_for_use(self) -> list[str]:
        """What a finished run's export lacks to be used (loaded, evaluated, exported): ``[]`` when complete.

        The weights and ``labels.json`` must be there, and ``labels.json`` must name the backbone and the
        classes (one entry per class).
        """
        if not self.path.is_dir():
            return ["the folder itself"]
        missing = [name for name in (self.WEIGHTS, self.LABELS) if not (self.path / name).is_file()]
        if self.LABELS in missing:
            return missing
        try:
            labels = self.read_labels()
        except (OSError, UnicodeDecodeError, ValueError):
            return [*missing, f"a readable {self.LABELS} (it is not valid JSON)"]
        names = labels.get("class_names") if isinstance(labels, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            missing.append(f"class_names in {self.LABELS}")
        if not isinstance(labels, dict) or not isinstance(labels.get("backbone"), str):
            missing.append(f"backbone in {self.LABELS}")
        return missing

    def started_in(self) -> Path | None:
        """The folder the run was started from, worked out from ``args.yaml``'s ``output`` (a relative
        ``--output`` is under it; without one the run is ``runs/<name>`` under it); ``None`` if unknown."""
        args = self.read_args()
        output = args.get("output")
        here = self.path.resolve()
        if not output:
            return here.parent.parent if here.parent.name == "runs" else None
        output = Path(str(output))
        if output.is_absolute():
            return None  # an absolute --output says nothing of where the command ran
        parts = len(output.parts)
        return here.parents[parts - 1] if parts <= len(here.parents) else None

    def data_folder(self) -> Path | None:
        """The image folder the run trained on (``args.yaml``'s ``data``, found as the run saw it), or
        ``None`` for the embedded digits or when it is no longer there."""
        data = self.read_args().get("data")
        if not data:
            return None
        data = Path(str(data)).expanduser()
        candidates = [data] if data.is_absolute() else [Path.cwd() / data]
        started = self.started_in()
        if not data.is_absolute() and started is not None:
            candidates.insert(0, started / data)
        return next((c for c in candidates if c.is_dir()), None)
