"""``load_run``: a finished run folder -> the model, its class names and its exact evaluation preprocessing.

The run folder is read through :class:`~transferkit.run.RunFolder` (the one reader of run folders). The
network is rebuilt with :func:`~transferkit.backbones.create_model` from ``model.safetensors``, and every
tensor must load: a file that does not fit the backbone is an error, never a half-loaded model. The
preprocessing is replayed from ``labels.json``'s ``eval_transform`` (see :mod:`transferkit.use.preprocess`).
The run's own validation settings (``channels_last``, ``amp`` in ``args.yaml``) are kept, so scores on the
run's validation images are the run's own.

Example:
    >>> run = load_run("runs/exp1")  # doctest: +SKIP
    >>> [p.label for p in run.predict(["cat.jpg", "dog.png"])]  # doctest: +SKIP
    ['cat', 'dog']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from transferkit.errors import ConfigError, LoadError, TransferkitError
from transferkit.run.folder import RunFolder
from transferkit.use.preprocess import Preprocess

__all__ = ["LoadedRun", "Prediction", "load_run", "resolve_device", "TTA_MODES", "DEFAULT_TOPK"]

logger = logging.getLogger(__name__)

TTA_MODES = ("flip",)
DEFAULT_TOPK = 5  # classes per prediction when `topk` is left out (fewer for a run with fewer classes)


@dataclass(frozen=True)
class Prediction:
    """One image's result: the top-k class names with their probabilities (highest first).

    Attributes:
        source: the path, or the image's index among those given.
        classes: the top-k class names.
        probs: their softmax probabilities.
        logits: every class's logit (index = class), when asked for.
    """

    source: str | int
    classes: tuple[str, ...]
    probs: tuple[float, ...]
    logits: tuple[float, ...] | None = None

    @property
    def label(self) -> str:
        """The top-1 class name."""
        return self.classes[0]


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: it holds a network
class LoadedRun:
    """A trained model ready to classify: eval mode, on ``device``, with its classes and preprocessing.

    Attributes:
        model: the network (eval mode).
        class_names: index -> class name.
        preprocess: the run's evaluation preprocessing (one image -> input tensor).
        device: where the model runs.
        info: ``labels.json`` (backbone, img_size, val_acc, epoch, ...).
        folder: the run folder.
        channels_last, amp_dtype: how the run's validation pass fed the network.
    """

    model: nn.Module
    class_names: tuple[str, ...]
    preprocess: Preprocess
    device: torch.device
    info: dict[str, Any] = field(repr=False)
    folder: RunFolder
    channels_last: bool = False
    amp_dtype: torch.dtype | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def logits(self, batch: Tensor, tta: str | None = None) -> Tensor:
        """Float32 logits of a preprocessed ``(N, C, H, W)`` batch, as the run's validation computed them
        (``tta="flip"`` averages them with the horizontally flipped batch's)."""
        check_tta(tta)
        x = batch.to(self.device, non_blocking=self.device.type == "cuda")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        enabled = self.amp_dtype is not None
        with torch.inference_mode(), torch.autocast(self.device.type, self.amp_dtype, enabled=enabled):
            out = self.model(x).float()
            if tta == "flip":
                out = (out + self.model(x.flip(-1)).float()) / 2
        return out

    def predict(
        self, images: Iterable[Any], *, topk: int | None = None, tta: str | None = None, batch_size: int = 32,
        with_logits: bool = False,
    ) -> list[Prediction]:  # fmt: skip
        """Classify PIL images, ``(C, H, W)`` tensors (uint8, or floats in [0, 1]) or image paths.

        Each image goes through :attr:`preprocess`; ``topk`` larger than the class count is an error (left
        out: 5, or every class of a run with fewer). For
        folders, globs and unreadable files use :func:`transferkit.use.predict_files`.

        Example:
            >>> run.predict([Image.open("cat.jpg")], topk=2)[0].classes  # doctest: +SKIP
            ('cat', 'dog')
        """
        k = check_topk(topk, self.num_classes)
        items = list(images)
        out: list[Prediction] = []
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start : start + batch_size]
            batch = torch.stack([self.preprocess(self._image(item)) for item in chunk])
            sources = [str(i) if isinstance(i, str | os.PathLike) else start + n for n, i in enumerate(chunk)]
            out += self.top(self.logits(batch, tta), k, sources, with_logits)
        return out

    def top(
        self, logits: Tensor, k: int, sources: Sequence[str | int], with_logits: bool = False
    ) -> list[Prediction]:
        """:class:`Prediction` s from a batch of logits."""
        probs = logits.softmax(1)
        values, indices = probs.topk(k, dim=1)
        rows = zip(
            sources,
            values.tolist(),
            indices.tolist(),
            logits.tolist() if with_logits else [None] * len(sources),
        )
        return [
            Prediction(src, tuple(self.class_names[i] for i in idx), tuple(vals), tuple(lg) if lg else None)
            for src, vals, idx, lg in rows
        ]

    def _image(self, item: Any) -> Any:
        if not isinstance(item, str | os.PathLike):
            return item
        try:
            return self.preprocess.read(item)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for unreadable files
            raise TransferkitError(
                f"cannot read image {item} ({type(exc).__name__}: {exc})", param="images"
            ) from None


def load_run(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a finished run: a run folder, or its ``model.safetensors`` with ``labels.json`` beside it.

    Args:
        path: the run folder (or the weights file in it).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).

    Returns:
        The :class:`LoadedRun`: model in eval mode on ``device``, class names, preprocessing.

    Raises:
        ConfigError: no such path, or a folder that is not a complete run (``param="path"``).
        LoadError: weights that do not fit the run's backbone.

    Example:
        >>> load_run("/no/such/run")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        transferkit.errors.ConfigError: run /no/such/run does not exist; ...
    """
    folder, weights = _locate(Path(path))
    missing = folder.missing_for_use()
    if missing:
        raise ConfigError(
            f"{folder.path} is not a complete transferkit run folder: it lacks {', '.join(missing)}",
            param="path",
            hint="give the folder of a finished run (it holds model.safetensors and labels.json once "
            "training ends), or that run's model.safetensors",
        )
    info = folder.read_labels()
    dev = resolve_device(device)
    model = _build_model(info, weights)
    args = folder.read_args()
    channels_last, amp = bool(args.get("channels_last")), bool(args.get("amp"))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = _amp_dtype(dev) if amp else None
    preprocess = Preprocess(info.get("eval_transform") or _fallback_spec(model, info, args))
    logger.info("loaded run %s: %s, %d classes; %s", folder.path, info["backbone"], len(info["class_names"]),
                preprocess.describe())  # fmt: skip
    return LoadedRun(model.to(dev).eval(), tuple(info["class_names"]), preprocess, dev, info, folder,
                     channels_last, amp_dtype)  # fmt: skip


def _locate(path: Path) -> tuple[RunFolder, Path]:
    if not path.exists():
        raise ConfigError(
            f"run {path} does not exist; give a run folder (runs/<name>) or its model.safetensors",
            param="path",
        )
    if path.is_dir():
        folder = RunFolder(path)
        return folder, folder.weights
    if path.suffix != ".safetensors":
        raise ConfigError(
            f"run {path} is a file, not a run folder or a .safetensors file; give the run folder",
            param="path",
        )
    return RunFolder(path.parent), path


def _build_model(info: dict[str, Any], weights: Path) -> nn.Module:
    from safetensors import safe_open

    from transferkit.backbones import create_model, resolve_backbone

    names, backbone = list(info["class_names"]), info["backbone"]
    try:
        resolve_backbone(backbone)
    except ConfigError as exc:
        raise ConfigError(f"the run's backbone cannot be built here: {exc}", param="path",
                          hint="run from the folder the run was started in, or put its module on PYTHONPATH") from None  # fmt: skip
    unfit = f"{weights} does not fit the run's backbone {backbone} with {len(names)} classes"
    hint = "was the file replaced, or the backbone's code changed since the run?"
    try:
        model = create_model(backbone, len(names), weights=weights, class_names=names, head="keep")
    except (ConfigError, LoadError) as exc:
        raise LoadError(f"{unfit}: {exc}", param="path", hint=hint) from None
    report = model.load_report
    with safe_open(str(weights), "pt") as f:
        stored = len(list(f.keys()))
    if report is None or report.missing or report.mismatched or len(report.loaded) != stored:
        raise LoadError(f"{unfit}: {report}".rstrip(), param="path", hint=hint)
    expected = int(info.get("in_chans", model.in_chans))
    if model.in_chans != expected:
        raise LoadError(
            f"the rebuilt {info['backbone']} takes {model.in_chans} input channels, the run used {expected}",
            param="path",
        )
    return model


def _fallback_spec(model: Any, info: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """For a run without ``eval_transform`` (older versions): rebuilt from what it recorded (img_size,
    mean, std) over the backbone's data config, as the run built its pipeline."""
    from transferkit.data import eval_transform_spec

    config = dict(model.data_config)
    config.update({k: tuple(info[k]) for k in ("mean", "std") if info.get(k)})
    source = "folder" if args.get("data") else "digits"
    size = int(info.get("img_size") or config["input_size"][-1])
    logger.warning("labels.json records no eval_transform (an older run): preprocessing rebuilt from "
                   "img_size, mean and std over the backbone's defaults")  # fmt: skip
    return eval_transform_spec(config, size, in_chans=model.in_chans, source=source)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a CUDA device that is not there is an error.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"`device` {device!r} is not a device; expected auto, cpu, cuda or cuda:N",
                          param="device") from None  # fmt: skip
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"`device` {device} asked for CUDA, which is not available here; use cpu",
                          param="device")  # fmt: skip
    return dev


def _amp_dtype(device: torch.device) -> torch.dtype:
    from transferkit.train import amp_dtype_for

    return amp_dtype_for(device)


def check_topk(topk: int | None, num_classes: int) -> int:
    """``topk`` as an int, refused when below 1 or above the class count; ``None`` is
    :data:`DEFAULT_TOPK`, or every class of a run with fewer."""
    if topk is None:
        return min(DEFAULT_TOPK, num_classes)
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise ConfigError(f"`topk` must be an integer >= 1, got {topk!r}", param="topk")
    if topk > num_classes:
        raise ConfigError(f"`topk` {topk} is larger than the run's {num_classes} classes; give at most "
                          f"{num_classes}", param="topk")  # fmt: skip
    return topk


def check_loader(batch_size: int | None, workers: int | None) -> None:
    """``batch_size`` >= 1 and ``workers`` >= 0 (``None``: the caller's default), as ``ConfigError``s that name them.

    Example:
        >>> check_loader(64, 0)
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"`batch_size` must be an integer >= 1, got {batch_size!r}", param="batch_size")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"`workers` must be an integer >= 0, got {workers!r}", param="workers")


def check_tta(tta: str | None) -> None:
    """``None`` or one of :data:`TTA_MODES`."""
    if tta is not None and tta not in TTA_MODES:
        raise ConfigError(f"`tta` {tta!r} is not a test-time augmentation; expected {', '.join(TTA_MODES)}",
                          param="tta")  # fmt: skip
