"""``transferkit evaluate RUN --data DIR``: the run's validation accuracy reproduced, the report files,
refusals of folders whose classes differ from the run's."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.use_runs import fashion_run, listing, own_validation_top1
from transferkit.cli import main
from transferkit.use.evaluate import classification_metrics, expected_calibration_error


@pytest.fixture
def run(tmp_path_factory, monkeypatch) -> Path:
    path = fashion_run(tmp_path_factory)
    monkeypatch.chdir(path.parent)
    return path


def test_evaluate_reproduces_the_runs_validation_accuracy_exactly(run, tmp_path, capsys):
    out = tmp_path / "report"
    before = listing(run)
    assert main(["evaluate", str(run), "--data", "data", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    labels = json.loads((run / "labels.json").read_text())
    assert metrics["accuracy"] == labels["val_acc"] and metrics["images"] == 80
    # scikit-learn's figures from the same predictions as the run's own validation pass
    paths, truth, top1 = own_validation_top1(run)
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean(
        [np.mean([p == c for p, t in zip(top1, truth) if t == c]) for c in range(10)]))  # fmt: skip
    assert metrics["top5_accuracy"] is not None and metrics["accuracy"] <= metrics["top5_accuracy"] <= 1
    assert set(metrics["per_class"]) == set(labels["class_names"]) and 0 <= metrics["ece"] <= 1
    assert {"precision", "recall", "f1", "support"} <= set(metrics["macro avg"]) and "weighted avg" in metrics
    with open(out / "confusion_matrix.csv", newline="") as f:
        cm = [[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]]
    assert sum(map(sum, cm)) == 80 and sum(cm[i][i] for i in range(10)) == round(labels["val_acc"] * 80)
    with open(out / "misclassified.csv", newline="") as f:
        wrong = list(csv.DictReader(f))
    assert len(wrong) == sum(p != t for p, t in zip(top1, truth))
    assert set(wrong[0]) == {"path", "true", "predicted", "confidence"} and Path(wrong[0]["path"]).is_file()
    with Image.open(out / "confusion_matrix.png") as img:
        img.verify()
    assert listing(run) == before  # the run's own files are untouched
    printed = capsys.readouterr().out
    assert f"accuracy {labels['val_acc']:.2%}" in printed and "macro avg" in printed and str(out) in printed


def test_default_output_is_a_new_folder_inside_the_run(run, capsys):
    before = listing(run)
    assert main(["evaluate", str(run), "--data", "data/val", "--tta", "flip", "--quiet"]) == 0
    assert main(["evaluate", str(run), "--data", "data/val", "--tta", "flip", "--quiet"]) == 0
    made = sorted((run / "evaluations").iterdir())
    try:
        assert len(made) == 2 and all(d.name.startswith("val-") for d in made)
        assert json.loads((made[0] / "metrics.json").read_text())["tta"] == "flip"
        assert [f for f in listing(run) if not f[0].startswith("evaluations")] == before
    finally:
        shutil.rmtree(run / "evaluations")  # the shared run stays as it was


def _classes(tmp: Path, case: str) -> tuple[Path, str]:
    data = tmp / "eval"
    shutil.copytree("data/val", data)
    if case == "unknown class":
        shutil.copytree(data / "bag", data / "handbag")
        return data, "['handbag']"
    if case == "missing class":
        shutil.rmtree(data / "shirt")
        return data, "lacks the model's class(es) ['shirt']"
    if case == "renamed class":
        (data / "boot").rename(data / "ankle-boot")
        return data, "['ankle-boot']"
    if case == "empty class":
        for f in (data / "dress").iterdir():
            f.unlink()
        return data, "['dress'] hold no readable images"
    if case == "no folder":
        return tmp / "nowhere", "--data " + str(tmp / "nowhere") + " does not exist"
    return data / "bag", "has no class sub-folders"


@pytest.mark.parametrize("case", ["unknown class", "missing class", "renamed class", "empty class", "no folder",
                                  "flat folder"])  # fmt: skip
def test_folders_whose_classes_differ_are_refused_with_one_line(run, tmp_path, capsys, case):
    data, message = _classes(tmp_path, case)
    before, run_before = listing(tmp_path), listing(run)
    assert main(["evaluate", str(run), "--data", str(data), "--output", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert listing(tmp_path) == before and listing(run) == run_before and not (tmp_path / "report").exists()


def test_an_existing_output_folder_is_refused(run, tmp_path, capsys):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text("mine")
    assert main(["evaluate", str(run), "--data", "data", "--output", str(tmp_path / "report")]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "report" / "metrics.json").read_text() == "mine"


def test_metrics_are_scikit_learns_and_the_calibration_error_is_binned():
    labels = np.array([0, 0, 1, 2, 2, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3],
                      [0.05, 0.05, 0.9]])  # fmt: skip
    m = classification_metrics(labels, probs, ("a", "b", "c"))
    assert m["accuracy"] == pytest.approx(4 / 6) and m["balanced_accuracy"] == pytest.approx(
        (0.5 + 1 + 2 / 3) / 3
    )
    assert m["per_class"]["b"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert m["top5_accuracy"] is None  # 3 classes: top-5 says nothing
    # bins of width 1/15: confidences 0.9 (x2, both right), 0.6 (wrong), 0.7 (right), 0.8 (right), 0.5 (wrong)
    expected = (2 * abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8) + abs(0 - 0.5)) / 6
    assert expected_calibration_error(labels, probs) == pytest.approx(expected)
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_strict_names_evaluates_own_flag_and_skipping_is_the_default(run, tmp_path, capsys):
    data = tmp_path / "eval"
    shutil.copytree("data/val", data)
    (data / "bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    argv = ["evaluate", str(run), "--data", str(data), "--output", str(tmp_path / "strict")]
    assert main([*argv, "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png; remove them or drop --strict to skip them" in err[0], err
    assert not (tmp_path / "strict").exists()
    assert main(argv) == 0  # without --strict the file is skipped, the others scored
    assert json.loads((tmp_path / "strict" / "metrics.json").read_text())["images"] == 80
