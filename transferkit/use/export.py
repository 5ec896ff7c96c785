"""Export a loaded run to ONNX or TorchScript, checked against the eager model before anything is written.

ONNX goes through ``torch.onnx.export``'s ``torch.export``-based exporter (``dynamo=True``, the one PyTorch
maintains; it needs ``onnxscript``) and is checked with ``onnxruntime``; TorchScript through
``torch.jit.trace``. The parity check runs the eager model and the exported one on the run's own
validation images (when its data is still there) and on a random batch; the largest absolute logit
difference above ``tolerance`` times the logits' size (``max(1, largest |eager logit|)``), or a top-1 class
that differs on a validation image, is an error and
nothing is written. The file carries the class names and the preprocessing (ONNX ``metadata_props``;
TorchScript extra file ``transferkit.json``), so it is usable alone. Install with ``pip install
transferkit[export]``.

Example:
    >>> from transferkit.use import load_run
    >>> report = export_run(load_run("runs/exp1"), "runs/exp1/model.onnx")  # doctest: +SKIP
    >>> report.max_abs_diff <= report.tolerance  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from transferkit.errors import ConfigError, TransferkitError
from transferkit.use.loaded import LoadedRun

__all__ = ["ExportReport", "export_run", "read_export_metadata", "EXPORT_FORMATS", "DEFAULT_TOLERANCE"]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "torchscript")
# float32 kernels of two runtimes differ by about 1e-6 to 1e-5 of the logits' size (a trained ResNet-50's logits:
# 5e-5), so the accepted difference is tolerance x max(1, the largest |eager logit|)
DEFAULT_TOLERANCE = 1e-4
METADATA_KEY = "transferkit.json"  # the TorchScript extra file; ONNX metadata keys are transferkit.*
RANDOM_BATCH = 4


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_run` wrote and how closely the export follows the eager model.

    Attributes:
        path, format: the file written.
        val_images: validation images compared (0 when the run's data is not there).
        val_top1_agree: of those, how many got the same top-1 class.
        val_max_abs_diff, random_max_abs_diff: largest absolute logit differences.
        tolerance: the accepted difference per unit of logit size.
        logit_scale: ``max(1, largest |eager logit|)`` over the compared inputs.
        seconds: export and check time.
    """

    path: Path
    format: str
    val_images: int
    val_top1_agree: int
    val_max_abs_diff: float
    random_max_abs_diff: float
    tolerance: float
    logit_scale: float
    seconds: float

    @property
    def max_abs_diff(self) -> float:
        return max(self.val_max_abs_diff, self.random_max_abs_diff)

    @property
    def limit(self) -> float:
        """The largest absolute logit difference accepted: ``tolerance * logit_scale``."""
        return self.tolerance * self.logit_scale


def export_run(
    run: LoadedRun, out: str | os.PathLike, *, format: str = "onnx", opset: int | None = None,  # noqa: A002
    dynamic_batch: bool = False, tolerance: float = DEFAULT_TOLERANCE, overwrite: bool = False,
    max_val_images: int | None = None,
) -> ExportReport:  # fmt: skip
    """Export ``run``'s model to ``out`` after a parity check against the eager model.

    Args:
        run: the loaded run.
        out: the file to write.
        format: ``"onnx"`` or ``"torchscript"``.
        opset: the ONNX opset (default: the exporter's).
        dynamic_batch: any batch size (default: batches of one).
        tolerance: the largest absolute logit difference accepted, per unit of the logits' size
            (``max(1, largest |eager logit|)``): float32 rounding grows with the values.
        overwrite: replace an existing ``out``.
        max_val_images: compare on at most this many validation images (default: all).

    Raises:
        ConfigError: a bad argument, an existing ``out`` without ``overwrite``, ``out`` one of the run's own
            files, ``onnx``/``onnxruntime`` missing.
        TransferkitError: the parity check failed (``param="tolerance"``); nothing was written.
    """
    started = time.perf_counter()
    path = _check_arguments(out, format, opset, tolerance, overwrite)
    run.folder.refuse_own_file(path, param="out")
    _check_suffix(path, format)
    model = _export_copy(run.model)
    c = run.preprocess.channels
    example = torch.zeros(2 if dynamic_batch else 1, c, run.preprocess.size, run.preprocess.size)
    if format == "onnx":
        data, runner = _to_onnx(model, example, opset, dynamic_batch, _metadata(run))
    else:
        data, runner = _to_torchscript(model, example, _metadata(run))
    batch = None if dynamic_batch else 1
    val = _validation_parity(run, model, runner, batch, max_val_images)
    random = torch.randn(
        RANDOM_BATCH, c, run.preprocess.size, run.preprocess.size, generator=torch.Generator().manual_seed(0)
    )
    rand_diff, _, rand_scale = _max_diff(model, runner, random, batch)
    scale = max(1.0, val[3], rand_scale)
    report = ExportReport(path, format, val[0], val[1], val[2], rand_diff, tolerance, scale, 0.0)
    if report.max_abs_diff > report.limit or report.val_top1_agree != report.val_images:
        raise TransferkitError(
            f"the {format} export differs from the eager model: largest absolute logit difference "
            f"{report.max_abs_diff:.3g} (validation {val[2]:.3g}, random batch {rand_diff:.3g}), top-1 agrees on "
            f"{val[1]}/{val[0]} validation images; `tolerance` is {tolerance:g} (x {scale:.3g}, the largest "
            "logit). Nothing was written",
            param="tolerance",
        )
    from transferkit.checkpoint import atomic_write  # the writer of every run file

    with atomic_write(path) as f:
        f.write(data)
    return ExportReport(
        path, format, val[0], val[1], val[2], rand_diff, tolerance, scale, time.perf_counter() - started
    )


def _check_suffix(path: Path, format: str) -> None:  # noqa: A002
    """``read_export_metadata`` tells the formats apart by the suffix: an ONNX file ends in ``.onnx``, no other does."""
    if (path.suffix == ".onnx") != (format == "onnx"):  # read_export_metadata goes by the suffix
        raise ConfigError(
            f"`out` {path}: "
            + (
                "an onnx file must end in .onnx"
                if format == "onnx"
                else "a torchscript file must not end in .onnx (e.g. model.torchscript.pt)"
            ),
            param="out",
        )


def _check_arguments(out: Any, format: str, opset: int | None, tolerance: float, overwrite: bool) -> Path:  # noqa: A002
    path = Path(out)
    if format not in EXPORT_FORMATS:
        raise ConfigError(
            f"`format` {format!r} is not an export format; expected onnx or torchscript", param="format"
        )
    if opset is not None and (format != "onnx" or not 7 <= opset <= 30):
        raise ConfigError(
            f"`opset` applies to onnx only and must be between 7 and 30, got {opset}", param="opset"
        )
    if not tolerance >= 0:
        raise ConfigError(f"`tolerance` must be >= 0, got {tolerance}", param="tolerance")
    if path.is_dir():
        raise ConfigError(f"`out` {path} is a folder; give a file name", param="out")
    if path.exists() and not overwrite:
        raise ConfigError(f"`out` {path} exists; pass `overwrite`=True to replace it, or choose another file",
                          param="out")  # fmt: skip
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise ConfigError(
            f"`out` {path}: the folder {path.parent} does not exist or is not writable", param="out"
        )
    if format == "onnx":
        _require("onnx", "onnxruntime", "onnxscript")
    return path


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: pip install 'transferkit[export]'",
                          param="format")  # fmt: skip


def _export_copy(model: nn.Module) -> nn.Module:
    """A float32, contiguous, CPU copy in eval mode (channels-last or CUDA runs export the same)."""
    net = copy.deepcopy(model).float().cpu().eval()
    return net.to(memory_format=torch.contiguous_format)


def _metadata(run: LoadedRun) -> dict[str, str]:
    info = run.info
    meta = {
        "class_names": json.dumps(list(run.class_names), ensure_ascii=False),
        "preprocess": json.dumps(run.preprocess.spec, ensure_ascii=False),
        "backbone": str(info.get("backbone", "")),
        "img_size": str(run.preprocess.size),
        "input": "float32 NCHW after the preprocess steps; output: logits (softmax for probabilities)",
        "val_acc": str(info.get("val_acc", "")),
        "epoch": str(info.get("epoch", "")),
        "run": str(run.folder.path),
    }
    return {f"transferkit.{k}": v for k, v in meta.items()}


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The class names, preprocessing and facts stored in an exported file (ONNX or TorchScript).

    Example:
        >>> read_export_metadata("model.onnx")["class_names"]  # doctest: +SKIP
        ['cat', 'dog']
    """
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        raw = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    else:
        extra = {METADATA_KEY: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        raw = json.loads(extra[METADATA_KEY])
    out: dict[str, Any] = {
        k.removeprefix("transferkit."): v for k, v in raw.items() if k.startswith("transferkit.")
    }
    for key in ("class_names", "preprocess"):
        if key in out:
            out[key] = json.loads(out[key])
    return out


def _to_onnx(
    model: nn.Module, example: Tensor, opset: int | None, dynamic: bool, meta: dict[str, str]
) -> tuple[bytes, Callable[[Tensor], Tensor]]:
    import onnxruntime as ort

    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    # the exporter prints progress lines on stdout; the library never prints
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), None, dynamo=True, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=shapes, opset_version=opset,
                                    external_data=False, verbose=False)  # fmt: skip
    for key, value in meta.items():
        program.model.metadata_props[key] = value
    data = program.model_proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])

    return data, run


def _to_torchscript(
    model: nn.Module, example: Tensor, meta: dict[str, str]
) -> tuple[bytes, Callable[[Tensor], Tensor]]:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # torch.jit is deprecated in favour of torch.export; still the format asked for
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, buf, _extra_files={METADATA_KEY: json.dumps(meta, ensure_ascii=False)})
        data = buf.getvalue()
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return loaded(x)

    return data, run


def _max_diff(
    model: nn.Module, runner: Callable[[Tensor], Tensor], x: Tensor, batch: int | None
) -> tuple[float, int, float]:
    """Largest |eager - exported| over ``x`` (in chunks of ``batch`` for a fixed-batch export), how many
    rows agree on the top-1 class, and the largest |eager logit|."""
    chunks = x.split(batch) if batch else [x]
    diff, agree, scale = 0.0, 0, 0.0
    with torch.inference_mode():
        for chunk in chunks:
            ref, got = model(chunk).float(), runner(chunk.contiguous()).float()
            diff = max(diff, (ref - got).abs().max().item())
            scale = max(scale, ref.abs().max().item())
            agree += int((ref.argmax(1) == got.argmax(1)).sum())
    return diff, agree, scale


def _validation_parity(
    run: LoadedRun, model: nn.Module, runner: Callable[[Tensor], Tensor], batch: int | None, limit: int | None
) -> tuple[int, int, float, float]:
    """``(images, top-1 agreements, largest difference, largest |eager logit|)`` on the run's validation
    images."""
    from torch.utils.data import DataLoader, Subset

    from transferkit.use.validation import run_validation_set

    dataset = run_validation_set(run)
    if dataset is None or len(dataset) == 0:
        logger.warning("the parity check uses a random batch only: the run's validation images are not there")
        return 0, 0, 0.0, 0.0
    if limit is not None and len(dataset) > limit:
        dataset = Subset(dataset, range(limit))
    n, agree, diff, scale = 0, 0, 0.0, 0.0
    for x, _ in DataLoader(dataset, batch_size=64):
        d, a, m = _max_diff(model, runner, x, batch)
        n, agree, diff, scale = n + len(x), agree + a, max(diff, d), max(scale, m)
    return n, agree, diff, scale
