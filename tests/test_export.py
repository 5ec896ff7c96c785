"""``transferkit export RUN --format onnx|torchscript``: parity with the eager model on the run's validation
images and a random batch, checked before writing; class names and preprocessing inside the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.use_runs import fashion_run, listing, train
from transferkit.cli import main
from transferkit.use import Preprocess, load_run
from transferkit.use.export import read_export_metadata

ort = pytest.importorskip(
    "onnxruntime", reason="the export extra (onnx, onnxruntime, onnxscript) is not installed"
)

DIFF = re.compile(r"logit difference (\S+) on (\d+) validation images \(top-1 agrees on (\d+)/(\d+)\)")


@pytest.fixture
def run(tmp_path_factory, monkeypatch) -> Path:
    path = fashion_run(tmp_path_factory)
    monkeypatch.chdir(path.parent)
    return path


def _exported(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[float, int, int]:
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    print(line)  # the largest logit difference, in the test log
    diff, n, agree, total = DIFF.search(line).groups()
    assert agree == total == n
    return float(diff), int(n), int(agree)


def test_onnx_agrees_with_eager_on_every_validation_image_and_is_usable_alone(run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    diff, n, _ = _exported(capsys, ["export", str(run), "--format", "onnx", "--out", str(out)])
    assert n == 80 and diff <= 1e-4
    meta = read_export_metadata(out)
    labels = json.loads((run / "labels.json").read_text())
    assert meta["class_names"] == labels["class_names"] and meta["preprocess"] == labels["eval_transform"]
    # the file alone: onnxruntime + the preprocessing stored in it give the run's own top-1
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pre = Preprocess(meta["preprocess"])
    images = sorted(Path("data/val").rglob("*.*"))[:12]
    loaded = load_run(run)
    for image in images:
        x = pre(pre.read(image)).unsqueeze(0).numpy()  # a fixed batch of one (no --dynamic-batch)
        logits = session.run(None, {"input": x})[0][0]
        assert meta["class_names"][int(np.argmax(logits))] == loaded.predict([image], topk=1)[0].label


def test_torchscript_and_a_dynamic_onnx_batch(run, tmp_path, capsys):
    script = tmp_path / "model.pt"
    diff, n, _ = _exported(capsys, ["export", str(run), "--format", "torchscript", "--out", str(script)])
    assert n == 80 and diff <= 1e-4
    with pytest.warns(FutureWarning):
        model = torch.jit.load(str(script))
    assert model(torch.zeros(5, 3, 28, 28)).shape == (5, 10)
    assert read_export_metadata(script)["class_names"][0] == "bag"
    dynamic = tmp_path / "dynamic.onnx"
    _exported(capsys, ["export", str(run), "--out", str(dynamic), "--dynamic-batch", "--opset", "18"])
    session = ort.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((7, 3, 28, 28), np.float32)})[0].shape == (7, 10)


def test_a_failed_parity_check_writes_nothing(run, tmp_path, capsys, monkeypatch):
    import transferkit.use.export as export

    monkeypatch.setattr(export, "_max_diff", lambda model, runner, x, batch: (0.5, len(x), 2.0))
    before = listing(tmp_path)
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "largest absolute logit difference 0.5" in err[0]
        and "--tolerance is 0.0001" in err[0]
    )
    assert listing(tmp_path) == before


@pytest.mark.parametrize("scale, code", [(10.0, 0), (1.0, 2), (0.1, 2)])
def test_the_accepted_difference_grows_with_the_logits(run, tmp_path, capsys, monkeypatch, scale, code):
    """5e-4 on logits of size 10 is float32 rounding (accepted: 1e-4 x 10); on logits of size 1 it is not."""
    import transferkit.use.export as export

    monkeypatch.setattr(export, "_max_diff", lambda model, runner, x, batch: (5e-4, len(x), scale))
    out = tmp_path / "m.torchscript.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == code
    captured = capsys.readouterr()
    assert out.is_file() == (code == 0)
    if code == 0:
        assert "accepted up to 0.001 (--tolerance 0.0001 x 10, the largest logit)" in captured.out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "{run}/args.yaml"], "--out {run}/args.yaml exists; pass --overwrite"),
        (
            ["--format", "torchscript", "--opset", "17"],
            "--opset applies to onnx only and must be between 7 and 30, got 17",
        ),
        (["--opset", "3"], "--opset applies to onnx only and must be between 7 and 30, got 3"),
        (
            ["--out", "{run}/labels.json", "--overwrite"],
            "--out {run}/labels.json is the run's own labels.json",
        ),
        (["--out", "{run}/best.pt", "--overwrite", "--format", "torchscript"], "is the run's own best.pt"),
        (["--tolerance", "-1"], "--tolerance must be >= 0"),
        (["--format", "torchscript", "--out", "{tmp}/m.onnx"], "a torchscript file must not end in .onnx"),
        (["--out", "{tmp}/m.pt"], "an onnx file must end in .onnx"),
        (["--out", "{tmp}/no/such/m.onnx"], "does not exist or is not writable"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(run, tmp_path, capsys, argv, message):
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    before = listing(run)
    assert main(["export", str(run), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(run=run, tmp=tmp_path) in err[0], err
    assert listing(run) == before


def _digits_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Path:
    return train(tmp_path, monkeypatch, "--weights", "none", "--img-size", "32", "--epochs", "1", "--batch-size",
                 "16", "--limit-train", "48", "--limit-val", "40", *args)  # fmt: skip


@pytest.mark.parametrize(
    "backbone, extra",
    [
        pytest.param(
            "tests.tiny_models:tinynet",
            ["--freeze", "backbone", "--channels-last"],
            id="factory-frozen-bn-channels-last",
        ),
        pytest.param("resnet18", ["--freeze", "backbone"], id="torchvision-resnet18-frozen-bn"),
        pytest.param(
            "timm:mobilenetv3_small_050", ["--channels-last"], id="timm-channels-last", marks=pytest.mark.slow
        ),
        pytest.param("timm:resnet10t", [], id="timm-resnet10t-torchscript"),
    ],
)
def test_export_works_for_every_kind_of_backbone(tmp_path, monkeypatch, capsys, backbone, extra):
    run = _digits_run(tmp_path, monkeypatch, "--backbone", backbone, *extra)
    fmt = "torchscript" if backbone == "timm:resnet10t" else "onnx"
    diff, n, _ = _exported(capsys, ["export", str(run), "--format", fmt, "--dynamic-batch"])
    assert n == 40 and diff <= 1e-4  # the embedded digits' validation split, found again
    assert (run / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")).is_file()
