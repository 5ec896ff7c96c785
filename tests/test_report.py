"""Tests for transferkit.report: metrics.csv, plots, exported weights, args.yaml."""

from __future__ import annotations

import json

import torch
import yaml
from PIL import Image

from transferkit.report import (
    export_model,
    format_epoch,
    plot_confusion_matrix,
    plot_curves,
    read_metrics_csv,
    write_metrics_csv,
    write_yaml,
)

HISTORY = [
    {"epoch": 0, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.5, "val_acc": 0.5, "lr": {"head": 1e-3},
     "seconds": 1.25},
    {"epoch": 1, "train_loss": 1.0, "train_acc": 0.6, "val_loss": 0.8, "val_acc": 0.75,
     "lr": {"head": 5e-4, "layer4": 2.5e-4}, "seconds": 1.5},
]  # fmt: skip


def test_metrics_csv_has_every_group_and_parses(tmp_path):
    path = write_metrics_csv(tmp_path / "metrics.csv", HISTORY)
    header = path.read_text().splitlines()[0].split(",")
    assert header == [
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr_head",
        "lr_layer4",
        "seconds",
    ]
    rows = read_metrics_csv(path)
    assert [r["epoch"] for r in rows] == [1, 2]  # counted from 1, as printed
    assert rows[0]["lr_layer4"] is None and rows[1]["lr_layer4"] == 2.5e-4  # thawed at epoch 1
    assert rows[1]["val_acc"] == 0.75 and rows[0]["seconds"] == 1.25
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temp files


def test_plots_are_valid_pngs(tmp_path):
    paths = plot_curves(HISTORY, tmp_path)
    cm = torch.tensor([[5, 1, 0], [0, 6, 0], [2, 0, 4]])
    paths.append(plot_confusion_matrix(cm, ["cat", "dog", "fox"], tmp_path / "confusion_matrix.png"))
    assert [p.name for p in paths] == ["loss.png", "accuracy.png", "confusion_matrix.png"]
    for p in paths:
        with Image.open(p) as img:
            img.verify()
            assert img.format == "PNG"


def test_export_model_round_trips(tmp_path):
    from safetensors.torch import load_file

    net = torch.nn.Linear(4, 3)
    w, labels = export_model(
        tmp_path, net, ["a", "b", "c"], {"backbone": "tiny", "img_size": 16, "val_acc": 0.9}
    )
    loaded = load_file(w)
    assert torch.equal(loaded["weight"], net.weight.detach()) and torch.equal(
        loaded["bias"], net.bias.detach()
    )
    info = json.loads(labels.read_text())
    assert info["class_names"] == ["a", "b", "c"] and info["num_classes"] == 3 and info["img_size"] == 16


def test_yaml_is_plain_and_ordered(tmp_path):
    path = write_yaml(tmp_path / "args.yaml", {"b": (1, 2), "a": tmp_path, "c": torch.tensor(3)})
    text = path.read_text()
    assert "!!" not in text and text.index("b:") < text.index("a:")
    assert yaml.safe_load(text) == {"b": [1, 2], "a": str(tmp_path), "c": 3}


def test_format_epoch_is_one_line():
    line = format_epoch(HISTORY[1], 5)
    assert "\n" not in line and line.startswith("epoch 2/5") and "val loss 0.8000 acc 75.00%" in line


def test_cjk_class_names_draw_without_glyph_warnings(tmp_path, recwarn):
    """Issue 16 item 17: CJK names were empty boxes with "Glyph missing" warnings escaping --quiet."""
    from transferkit.report import _font_chain, class_tick_labels

    names = ["cat", "猫", "café"]
    cm = torch.tensor([[5, 1, 0], [0, 6, 0], [2, 0, 4]])
    plot_confusion_matrix(cm, names, tmp_path / "confusion_matrix.png")
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
    labels, _, legend = class_tick_labels(names)
    if ord("猫") in _font_chain()[1]:  # a CJK font is installed: the names themselves
        assert labels == names and legend == []
    else:  # indices on the axes, the names in a legend (undrawable characters escaped)
        assert labels == ["0", "1", "2"] and legend == ["0: cat", "1: \\u732b", "2: café"]


def test_yaml_keeps_non_ascii_as_utf8(tmp_path):
    """Issue 16 item 17: args.yaml wrote "caf\\xE9"."""
    text = write_yaml(tmp_path / "a.yaml", {"class_names": ["café", "猫"]}).read_text(encoding="utf-8")
    assert "café" in text and "猫" in text and "\\x" not in text
    assert yaml.safe_load(text) == {"class_names": ["café", "猫"]}


def test_metrics_csv_has_one_lr_column_while_groups_share_a_rate(tmp_path):
    """Issue 16 item 19: one LR column per group even when every group had the same rate."""
    shared = [{**row, "lr": {"stem": 1e-3, "head": 1e-3}} for row in HISTORY]
    path = write_metrics_csv(tmp_path / "metrics.csv", shared)
    assert path.read_text().splitlines()[0].split(",")[5:] == ["lr", "seconds"]
    assert [r["lr"] for r in read_metrics_csv(path)] == [1e-3, 1e-3]


def test_curves_have_a_title_and_mark_the_best_epoch():
    """Issue 16 item 19: the plots had no title and no best-epoch marker."""
    from transferkit.report import curve_figure

    history = [{**HISTORY[0], "val_acc": 0.5}, {**HISTORY[1], "epoch": 1, "val_acc": 0.75},
               {**HISTORY[1], "epoch": 2, "val_acc": 0.75}]  # fmt: skip
    for key in ("loss", "acc"):
        ax = curve_figure(history, key, "my-run").axes[0]
        assert "my-run" in ax.get_title() and "best val accuracy 75.00% at epoch 2" in ax.get_title()
        marks = [line for line in ax.get_lines() if line.get_label() == "best epoch (2)"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [2, 2]
