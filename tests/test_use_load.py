"""``transferkit.load_run``: a finished run folder -> model, class names, the run's exact preprocessing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import transferkit
from tests.use_runs import fashion_run, own_validation_top1, sample_jpegs, three_class_run
from transferkit.errors import ConfigError, LoadError
from transferkit.use import Preprocess, load_run, predict_files
from transferkit.use.validation import run_validation_set


@pytest.fixture
def run(tmp_path_factory, monkeypatch) -> Path:
    path = fashion_run(tmp_path_factory)
    monkeypatch.chdir(path.parent)  # the run's data folder is relative to where it ran
    return path


def test_load_run_is_exported_at_the_top_level():
    assert transferkit.load_run is load_run and "LoadedRun" in transferkit.__all__


def test_loaded_run_has_the_model_classes_and_preprocessing(run):
    loaded = load_run(run)
    labels = json.loads((run / "labels.json").read_text())
    assert not loaded.model.training and loaded.device == torch.device("cpu")
    assert list(loaded.class_names) == labels["class_names"] and loaded.num_classes == 10
    assert (
        loaded.preprocess.size == 28 and loaded.preprocess.channels == 3 and loaded.preprocess.mode == "RGB"
    )
    assert "resize [32] bilinear -> center crop [28, 28]" in loaded.preprocess.describe()
    # the weights file itself, with labels.json beside it, loads the same model
    again = load_run(run / "model.safetensors")
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(loaded.model(x), again.model(x))


def test_preprocessing_is_the_runs_own_pipeline_bit_for_bit(run):
    """Every format of the validation folder (grey, RGBA, JPEG, 16-bit PNG) and the sample photographs go
    through the replayed steps exactly as through the pipeline the run built (transferkit.data)."""
    from transferkit.data import ImageFileDataset, build_transforms

    loaded = load_run(run)
    config = {**loaded.model.data_config}
    theirs = build_transforms(config, False, 28)
    files = sorted((run.parent / "data" / "val").rglob("*.*"))[:8] + sample_jpegs(run.parent / "photos")
    assert {f.suffix for f in files} == {".png", ".jpg"}
    for f in files:
        ours = loaded.preprocess(loaded.preprocess.read(f))
        reference = ImageFileDataset([(str(f), 0)], theirs, "RGB")[0][0]
        assert torch.equal(ours, reference), f


def test_validation_set_and_predict_match_the_runs_own_validation_pass(run):
    loaded = load_run(run)
    paths, truth, top1 = own_validation_top1(run)
    val = run_validation_set(loaded)
    assert [Path(p).resolve() for p, _ in val.samples] == [Path(p).resolve() for p in paths]
    assert len(paths) == 80
    predicted = predict_files(loaded, paths, topk=1, batch_size=7)
    names = list(loaded.class_names)
    assert [names.index(p.label) for p in predicted.predictions] == top1
    acc = sum(t == p for t, p in zip(truth, top1)) / len(truth)
    assert acc == json.loads((run / "labels.json").read_text())["val_acc"]


def test_predict_takes_pil_images_tensors_and_paths(run):
    loaded = load_run(run)
    path = next((run.parent / "data" / "val" / "bag").glob("*-grey.png"))
    image = Image.open(path)
    tensor = torch.from_numpy(__import__("numpy").array(image)).unsqueeze(0)  # (1, H, W) uint8
    by_path, by_pil, by_tensor = loaded.predict([path, image, tensor], topk=3)
    assert by_path.probs == by_pil.probs and by_path.source == str(path) and by_pil.source == 1
    assert by_tensor.classes[0] == by_path.classes[0]
    assert by_path.probs[0] >= by_path.probs[1] >= by_path.probs[2] and len(by_path.classes) == 3
    with pytest.raises(ConfigError, match="larger than the run's 10 classes") as err:
        loaded.predict([image], topk=11)
    assert err.value.param == "topk"


def test_digits_preprocessing_replays_the_scans_steps():
    """A digits run saw 8x8 scans (0..16) resized as tensors; a file of such a scan (0..255) goes through the
    same steps, equal up to the file's 8-bit rounding."""
    import numpy as np
    from sklearn.datasets import load_digits

    from transferkit.data import DigitsDataset, eval_transform_spec

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    spec = eval_transform_spec({"mean": mean, "std": std}, 16, source="digits")
    scans = torch.from_numpy(load_digits().images[:3]).float().div(16.0).unsqueeze(1)
    resized = torch.nn.functional.interpolate(scans, size=(16, 16), mode="bilinear", align_corners=False)
    reference = DigitsDataset(resized.squeeze(1).clamp(0, 1), torch.zeros(3, dtype=torch.long), mean, std)
    pre = Preprocess(spec)
    assert pre.digits and pre.mode == "L" and pre.size == 16
    for i in range(3):
        file = Image.fromarray(np.rint(scans[i, 0].numpy() * 255).astype("uint8"), mode="L")
        torch.testing.assert_close(pre(file), reference[i][0], atol=0.5 / 255 / 0.2 + 1e-6, rtol=0)


@pytest.mark.parametrize(
    "damage", ["no labels.json", "no weights", "foreign folder", "missing", "other file"]
)
def test_incomplete_or_foreign_runs_are_refused(run, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    target = copy
    if damage == "no labels.json":
        (copy / "labels.json").unlink()
    elif damage == "no weights":
        (copy / "model.safetensors").unlink()
    elif damage == "foreign folder":
        target = tmp_path / "photos"
        sample_jpegs(target)
    elif damage == "missing":
        target = tmp_path / "nowhere"
    else:
        target = copy / "args.yaml"
    with pytest.raises(ConfigError) as err:
        load_run(target)
    assert err.value.param == "path" and str(target) in str(err.value)


def test_weights_that_do_not_fit_the_backbone_are_refused(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    labels = json.loads((copy / "labels.json").read_text())
    labels["backbone"] = "resnet18"
    (copy / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(LoadError, match="does not fit the run's backbone resnet18"):
        load_run(copy)


def test_a_device_that_is_not_there_is_refused(run):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA") as err:
        load_run(run, device="cuda")
    assert err.value.param == "device"


def test_a_run_without_eval_transform_is_rebuilt_from_what_it_recorded(run, tmp_path, caplog):
    """Older runs recorded img_size, mean and std only: the backbone's defaults fill in the rest."""
    copy = tmp_path / "old"
    shutil.copytree(run, copy)
    labels = json.loads((copy / "labels.json").read_text())
    del labels["eval_transform"]
    (copy / "labels.json").write_text(json.dumps(labels))
    old, new = load_run(copy), load_run(run)
    assert "no eval_transform" in caplog.text
    image = Image.open(next((run.parent / "data" / "val" / "coat").glob("*-rgb.jpg")))
    assert torch.equal(old.preprocess(image), new.preprocess(image))


def test_an_unreadable_path_given_to_predict_is_one_error(run, tmp_path):
    from transferkit.errors import TransferkitError

    (tmp_path / "broken.jpg").write_bytes(b"no jpeg")
    with pytest.raises(TransferkitError, match="cannot read image .*broken.jpg") as err:
        load_run(run).predict([tmp_path / "broken.jpg"])
    assert err.value.param == "images"


def test_the_run_finds_its_data_again_from_any_working_folder(run, tmp_path, monkeypatch):
    from transferkit.run import RunFolder

    folder = RunFolder(run)
    recorded = Path(folder.read_resolved()["data_path"])
    assert recorded.is_absolute() and recorded == (run.parent / "data").resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # args.yaml's `data` is relative to where the run started, not to here
    assert folder.data_folder() == recorded


def test_predict_without_topk_keeps_every_class_of_a_run_with_fewer_than_five(tmp_path_factory, monkeypatch):
    small = three_class_run(tmp_path_factory)
    monkeypatch.chdir(small.parent)
    loaded = load_run(small)
    [p] = loaded.predict([Image.new("RGB", (20, 20))])
    assert sorted(p.classes) == ["cat", "dog", "fox"]
    [p] = predict_files(loaded, ["data/val/cat/0.png"]).predictions
    assert len(p.classes) == 3
    with pytest.raises(ConfigError, match="`topk` 4 is larger") as exc:
        loaded.predict([Image.new("RGB", (20, 20))], topk=4)
    assert exc.value.param == "topk"
