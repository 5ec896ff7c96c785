"""``RunFolder``: the files of a run folder, named, written and read back in one place.

Every file goes through :func:`~transferkit.checkpoint.atomic_write` (the writers of
:mod:`transferkit.report`, and :func:`~transferkit.checkpoint.save_checkpoint`): a run killed at any moment
leaves each file whole, old or new. The checkpoints are written here too: :meth:`RunFolder.save_epoch` is a
:class:`~transferkit.train.Trainer`'s ``on_epoch_end``, and turns each epoch into ``last.pt`` (and
``best.pt`` when the epoch improved); the Trainer itself writes nothing.

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
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from torch import Tensor

    from transferkit.train import EpochEnd, Trainer

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

    # --------------------------------------------------------------------------------------- checkpoints

    def save_epoch(self, trainer: Trainer, event: EpochEnd) -> None:
        """A Trainer's ``on_epoch_end``: the training state into ``last.pt``, and ``best.pt`` when the epoch
        improved. Only rank 0 writes.

        ``best.pt`` is made from the new ``last.pt`` (a hard link, or an fsynced copy), so the best weights
        are on disk once; a kill between the two writes leaves ``best.pt`` behind the ``last.pt`` that holds
        the best epoch, which :meth:`keep_best` repairs when the run resumes.
        """
        from transferkit.checkpoint import save_checkpoint
        from transferkit.checkpoint.atomic import atomic_copy

        if not trainer.dist.is_main:
            return
        save_checkpoint(self.last, **trainer.checkpoint_state(event.epoch, event.row))
        if event.improved:
            atomic_copy(self.last, self.best)

    def keep_best(self, source: str | os.PathLike) -> None:
        """Make ``best.pt`` the checkpoint ``source`` (a resumed run's best epoch), unless it already is.

        A resumed ``last.pt`` that holds the best epoch may be newer than ``best.pt`` (killed between the
        two writes), and a run resumed into another folder has no ``best.pt`` there yet.
        """
        from transferkit.checkpoint.atomic import atomic_copy

        if not (self.best.exists() and os.path.samefile(self.best, source)):  # a hard link of it already
            atomic_copy(Path(source), self.best)

    def read_checkpoint(self, name: str = LAST) -> dict[str, Any]:
        """A checkpoint of the folder (``last.pt`` by default), read safely (``weights_only``).

        Raises:
            CheckpointError: missing, truncated or not a checkpoint.
        """
        from transferkit.checkpoint import load_checkpoint

        return dict(load_checkpoint(self.path / name))

    def read_best_weights(self, which: str = "model") -> dict[str, Tensor]:
        """The state dict ``best.pt`` holds: the trained model's (``"model"``) or its EMA's (``"ema"``)."""
        return dict(self.read_checkpoint(self.BEST)["models"][which])

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

    def is_run(self) -> bool:
        """Whether the folder holds a run's ``args.yaml`` (its ``args`` and ``resolved`` sections)."""
        try:
            data = yaml.safe_load((self.path / self.ARGS).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return False
        return isinstance(data, dict) and isinstance(data.get("args"), dict) and "resolved" in data

    def exported(self) -> bool:
        """Whether the export (``model.safetensors`` + ``labels.json``) is there."""
        return all((self.path / name).is_file() for name in (self.WEIGHTS, self.LABELS))

    def refuse_own_file(self, path: str | os.PathLike, *, param: str) -> None:
        """Refuse ``path`` as the output of a later command (predict, export) when it is one of the files
        the run wrote (``transferkit.report.RUN_FILES``): ``overwrite`` replaces the user's outputs, never
        the run itself.

        Raises:
            ConfigError: ``path`` is the run's own ``labels.json``, ``best.pt``, ... (``param=param``).
        """
        from transferkit.errors import ConfigError
        from transferkit.report import RUN_FILES

        out = Path(path)
        if out.name in RUN_FILES and out.parent.resolve() == self.path.resolve():
            raise ConfigError(f"`{param}` {out} is the run's own {out.name}, which would break the run; choose "
                              "another file", param=param)  # fmt: skip

    def aside(self, pid: int) -> Path:
        """The hidden sibling where process ``pid``'s ``overwrite`` keeps the replaced run's files until its
        first checkpoint (:class:`~transferkit.run.start.RunStart`)."""
        return self.path.with_name(f".{self.path.name}.replaced-{pid}")

    def aside_hint(self) -> str:
        """Words for an error about this folder when an ``overwrite`` was killed (``kill -9``) before its first
        checkpoint: the run it replaced is still in a hidden sibling, which the user should hear of. Empty
        when there is none."""
        found = sorted(self.path.parent.glob(f".{self.path.name}.replaced-*"))
        if not found:
            return ""
        return (f" (the run that an interrupted `overwrite` replaced is kept in {found[0]}: move its files back "
                "into the folder to restore it)")  # fmt: skip

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
        recorded = self.read_resolved().get("data_path")
        if recorded and Path(str(recorded)).is_dir():
            return Path(str(recorded))
        data = Path(str(data)).expanduser()
        candidates = [data] if data.is_absolute() else [Path.cwd() / data]
        started = self.started_in()
        if not data.is_absolute() and started is not None:
            candidates.insert(0, started / data)
        return next((c for c in candidates if c.is_dir()), None)
