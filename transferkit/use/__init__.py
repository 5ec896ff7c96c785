"""Using a finished run: :func:`load_run`, then predict, evaluate or export.

* :mod:`~transferkit.use.loaded` -- :func:`load_run` -> :class:`LoadedRun` (model, class names,
  preprocessing, ``predict``);
* :mod:`~transferkit.use.preprocess` -- the run's evaluation preprocessing, replayed from ``labels.json``;
* :mod:`~transferkit.use.inputs` -- files, folders, glob patterns and list files -> image paths;
* :mod:`~transferkit.use.predict` -- batched prediction over files, CSV/JSON output;
* :mod:`~transferkit.use.evaluate` -- scikit-learn's metrics, calibration and confusion matrix on a folder;
* :mod:`~transferkit.use.export` -- ONNX / TorchScript with a parity check;
* :mod:`~transferkit.use.validation` -- the run's own validation images, found again.

Example:
    >>> from transferkit.use import load_run
    >>> run = load_run("runs/exp1")  # doctest: +SKIP
    >>> run.predict(["cat.jpg"], topk=1)[0].label  # doctest: +SKIP
    'cat'
"""

from __future__ import annotations

from transferkit.use.inputs import expand_inputs
from transferkit.use.loaded import LoadedRun, Prediction, load_run
from transferkit.use.predict import PredictResult, predict_files, write_predictions
from transferkit.use.preprocess import Preprocess

__all__ = [
    "LoadedRun",
    "Prediction",
    "PredictResult",
    "Preprocess",
    "expand_inputs",
    "load_run",
    "predict_files",
    "write_predictions",
]
