"""Run-folder outputs people read at a glance: args.yaml, metrics.csv, plots, exported weights.

A run folder holds::

    args.yaml            the resolved configuration (incl. whether pretrained weights were really used)
    metrics.csv          one row per epoch: train/val loss and accuracy (and the model EMA's, with
                         --model-ema), the LR of every group, seconds
    loss.png, accuracy.png, confusion_matrix.png
    last.pt, best.pt     full training state (written by transferkit.train)
    model.safetensors    the best weights, with labels.json (class names and preprocessing)

Epochs are counted from 1 in everything people read (metrics.csv, plots, printed lines, labels.json);
the ``epoch`` field inside ``last.pt``/``best.pt`` is the 0-based index the training loop uses.

Every file is written atomically (temp file, fsync, ``os.replace``), so a run killed at any moment leaves
either the previous version or the new one, never half a file. Plots use matplotlib's Agg backend.

Example:
    >>> import tempfile, csv
    >>> d = Path(tempfile.mkdtemp())
    >>> rows = [{"epoch": 0, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 0.9, "val_acc": 0.6,
    ...          "lr": {"head": 0.001}, "seconds": 1.5}]
    >>> _ = write_metrics_csv(d / "metrics.csv", rows)
    >>> row = next(csv.DictReader(open(d / "metrics.csv")))
    >>> row["epoch"], row["lr"]
    ('1', '0.001')
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from transferkit.checkpoint import atomic_write, save_weights

__all__ = [
    "RUN_FILES",
    "write_text",
    "write_yaml",
    "write_metrics_csv",
    "read_metrics_csv",
    "plot_curves",
    "curve_figure",
    "plot_confusion_matrix",
    "class_tick_labels",
    "export_model",
    "format_epoch",
]

logger = logging.getLogger(__name__)

# every file a run writes; --overwrite removes exactly these, never anything else in the folder
RUN_FILES = (
    "args.yaml",
    "metrics.csv",
    "loss.png",
    "accuracy.png",
    "confusion_matrix.png",
    "last.pt",
    "best.pt",
    "model.safetensors",
    "labels.json",
)

_BASE_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
_EMA_COLUMNS = ("ema_val_loss", "ema_val_acc")  # only in runs that keep a model EMA


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def _yaml_plain(value: Any) -> Any:
    """Values YAML can write without Python tags (tuples -> lists, paths -> strings)."""
    if isinstance(value, str):
        return str(value)  # str subclasses (torch.__version__) would get a Python tag
    if isinstance(value, Mapping):
        return {str(k): _yaml_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_yaml_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # 0-d tensors / numpy scalars
        return value.item()
    return value


def write_yaml(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as block-style UTF-8 YAML, keys in the given order, atomically."""
    import yaml

    # allow_unicode: class names such as "café" or "猫" stay readable instead of "caf\xE9" escapes
    text = yaml.safe_dump(_yaml_plain(data), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return write_text(path, text)


def _lr_columns(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """``lr_<group>`` columns, or one ``lr`` column (``[""]``) when the same groups share one rate throughout
    (a group that joins later keeps its own column: its empty cells say when it was thawed)."""
    same_groups = len({tuple(row.get("lr", {})) for row in history}) <= 1
    if same_groups and all(len({float(v) for v in row.get("lr", {}).values()}) <= 1 for row in history):
        return [""]
    seen: dict[str, None] = {}
    for row in history:
        for group in row.get("lr", {}):
            seen.setdefault(group, None)
    return list(seen)


def write_metrics_csv(path: str | os.PathLike, history: Sequence[Mapping[str, Any]]) -> Path:
    """Rewrite ``metrics.csv`` from the full history (groups thawed later get empty cells before they exist).

    While the same parameter groups share one learning rate there is one ``lr`` column; when rates differ
    (discriminative rates) or groups join later (a thaw), there is one ``lr_<group>`` column per group.

    Args:
        path: the CSV file.
        history: rows with ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (accuracies
            as fractions), optionally ``ema_val_loss``/``ema_val_acc``, ``lr`` (``{group: lr}``) and
            ``seconds``.
    """
    groups = _lr_columns(history)
    ema = [c for c in _EMA_COLUMNS if any(c in row for row in history)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*_BASE_COLUMNS, *ema, *(f"lr_{g}" if g else "lr" for g in groups), "seconds"])
    for row in history:
        lrs = dict(row.get("lr", {}))
        lrs[""] = next(iter(lrs.values()), None)  # the shared rate of the single "lr" column
        writer.writerow(
            [row["epoch"] + 1, *(_fmt(row.get(c)) for c in (*_BASE_COLUMNS[1:], *ema))]
            + [_fmt(lrs.get(g)) for g in groups]
            + [_fmt(row.get("seconds"), 2)]
        )
    return write_text(path, buf.getvalue())


def _fmt(value: Any, digits: int = 6) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if digits != 2 else f"{value:.2f}"
    return str(value)


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """Read ``metrics.csv`` back: numbers as floats (``epoch`` as int, 1-based), empty cells as None."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed: dict[str, float | None] = {k: (float(v) if v != "" else None) for k, v in row.items()}
        parsed["epoch"] = int(row["epoch"])
        out.append(parsed)
    return out


def _savefig(fig: Any, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return Path(path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display on servers; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[Mapping[str, Any]], run_dir: str | os.PathLike) -> list[Path]:
    """``loss.png`` and ``accuracy.png``: train and validation curves per epoch, titled with the run's
    folder name, the best epoch (highest validation accuracy, the one exported) marked on both."""
    plt = _pyplot()
    out = []
    for key in ("loss", "acc"):
        fig = curve_figure(history, key, Path(run_dir).name)
        out.append(_savefig(fig, Path(run_dir) / ("loss.png" if key == "loss" else "accuracy.png")))
        plt.close(fig)
    return out


def curve_figure(history: Sequence[Mapping[str, Any]], key: str, run_name: str = "") -> Any:
    """One curve plot (``key`` ``"loss"`` or ``"acc"``) as a matplotlib figure, for :func:`plot_curves`."""
    plt = _pyplot()
    label, scale = ("loss", 1.0) if key == "loss" else ("accuracy (%)", 100.0)
    epochs = [r["epoch"] + 1 for r in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for split, style in (("train", "-o"), ("val", "-s"), ("ema_val", "--^")):
        values = [r.get(f"{split}_{key}") for r in history]
        pts = [(e, v * scale) for e, v in zip(epochs, values) if v is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=split.replace("ema_val", "val (EMA)"), markersize=3)
    scored = [(r["val_acc"], -e, e) for r, e in zip(history, epochs) if r.get("val_acc") is not None]
    title = f"{'loss' if key == 'loss' else 'accuracy'}{f' - {run_name}' if run_name else ''}"
    if scored:  # the first epoch with the highest validation accuracy: the one best.pt and the export hold
        best_acc, _, best = max(scored)
        ax.axvline(best, color="tab:green", linestyle="--", linewidth=1, label=f"best epoch ({best})")
        title += f"\nbest val accuracy {best_acc:.2%} at epoch {best}"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


# fonts with CJK glyphs, tried after matplotlib's default (DejaVu Sans has Latin, Greek and Cyrillic only)
_FALLBACK_FONTS = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Noto Sans CJK TC", "Source Han Sans",
    "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN", "Microsoft YaHei",
    "SimHei", "MS Gothic", "Hiragino Sans", "PingFang SC", "Apple SD Gothic Neo", "Malgun Gothic",
)  # fmt: skip


def _font_chain() -> tuple[list[str], set[int]]:
    """The installed font families to draw labels with (the default first), and the code points they cover."""
    import matplotlib
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    installed = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    default = matplotlib.rcParams["font.sans-serif"]
    families = [f for f in (*default, *_FALLBACK_FONTS) if f in installed]
    families = list(dict.fromkeys(families))
    covered: set[int] = set()
    for family in families:
        try:
            covered.update(FT2Font(installed[family]).get_charmap())
        except (OSError, RuntimeError):  # an unreadable font file draws nothing
            continue
    return families, covered


def class_tick_labels(class_names: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Tick labels for ``class_names``: ``(labels, font families, legend lines)``.

    Names the installed fonts can draw are used as they are (matplotlib falls back along the families,
    so a CJK font, when one is installed, draws what DejaVu Sans cannot). Otherwise the ticks are class
    indices, and the legend maps each index to its name, with characters no font has as ``\\uXXXX``
    escapes: never empty boxes, and no "Glyph missing" warnings.

    Example:
        >>> class_tick_labels(["cat", "café"])[0]
        ['cat', 'café']
    """
    families, covered = _font_chain()
    names = [str(n) for n in class_names]
    if all(ord(ch) in covered or ch.isspace() for name in names for ch in name):
        return names, families, []
    legend = [
        f"{i}: "
        + "".join(ch if ord(ch) in covered else ch.encode("ascii", "backslashreplace").decode() for ch in n)
        for i, n in enumerate(names)
    ]
    return [str(i) for i in range(len(names))], families, legend


def plot_confusion_matrix(
    matrix: Tensor | Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """A confusion-matrix heat map (rows: true class, columns: predicted), counts written in the cells."""
    import numpy as np

    plt = _pyplot()
    cm = np.asarray(matrix.tolist() if isinstance(matrix, Tensor) else matrix, dtype=np.int64)
    n = len(class_names)
    side = min(14.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(cm, cmap="Blues")
    legend: list[str] = []
    if n <= 30:  # beyond that, labels and counts are unreadable anyway
        labels, families, legend = class_tick_labels(class_names)
        ax.set_xticks(range(n), labels=labels, rotation=90 if n > 10 else 0, fontfamily=families or None)
        ax.set_yticks(range(n), labels=labels, fontfamily=families or None)
        top = cm.max() if cm.size else 0
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if cm[i, j] > top / 2 else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = cm.sum()
    acc = cm.trace() / total if total else 0.0
    ax.set_title(title or f"validation confusion matrix (accuracy {acc:.2%})")
    if legend:  # names no installed font can draw: indices on the axes, the names beside them
        fig.text(1.04, 0.5, "classes (no installed font draws some names)\n" + "\n".join(legend),
                 fontsize=8, va="center", ha="left", transform=ax.transAxes)  # fmt: skip
    out = _savefig(fig, path)
    plt.close(fig)
    return out


def export_model(
    run_dir: str | os.PathLike,
    weights: nn.Module | Mapping[str, Tensor],
    class_names: Sequence[str],
    info: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """``model.safetensors`` (weights only) and ``labels.json`` (class names and how to preprocess).

    Args:
        run_dir: the run folder.
        weights: a module or its state dict.
        class_names: index -> class name.
        info: extra JSON-able facts (backbone, img_size, mean, std, val_acc, epoch).
    """
    run_dir = Path(run_dir)
    labels = {
        "class_names": list(class_names),
        "num_classes": len(class_names),
        **_yaml_plain(dict(info or {})),
    }
    meta = {k: str(v) for k, v in labels.items() if k != "class_names"}
    # the class names travel with the weights, so create_model(weights=...) keeps the head on the same classes
    meta["class_names"] = json.dumps(list(class_names), ensure_ascii=False)
    meta["class_names"] = json.dumps(list(class_names))
    weights_path = save_weights(run_dir / "model.safetensors", weights, metadata=meta)
    labels_path = write_text(run_dir / "labels.json", json.dumps(labels, indent=2) + "\n")
    return Path(weights_path), labels_path


def format_epoch(row: Mapping[str, Any], epochs: int) -> str:
    """One human line for an epoch's metrics."""
    lrs: Iterable[float] = row.get("lr", {}).values()
    lr = max(lrs, default=0.0)
    train = (
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}"
        if row.get("train_loss") is not None
        else ""
    )
    ema = (
        f"  ema loss {row['ema_val_loss']:.4f} acc {row['ema_val_acc']:.2%}"
        if row.get("ema_val_acc") is not None
        else ""
    )
    return (
        f"epoch {row['epoch'] + 1}/{epochs}  {train}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}"
        f"{ema}  lr {lr:.2e}  {row.get('seconds', 0.0):.1f}s"
    ).replace("   ", "  ")
