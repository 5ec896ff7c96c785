"""Real images and small finished runs for the tests of ``transferkit.use`` and its commands.

* :func:`fashion_folder` -- a Fashion-MNIST image folder (``train``/``val``), its validation images in
  several real-world formats (grey PNG, RGBA PNG, RGB JPEG, 16-bit PNG);
* :func:`sample_jpegs` -- scikit-learn's two sample photographs, resized, as JPEG files;
* :func:`train` -- a finished run of ``transferkit finetune`` (in this process);
* :func:`own_validation_top1` -- the run's own validation pass, image by image, rebuilt with the
  training code (``run.data_plan`` and ``data``), to compare ``predict`` and ``evaluate`` with.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
TINY = "tests.tiny_models:tinynet"
FORMATS = ("grey.png", "rgba.png", "rgb.jpg", "wide16.png")


def need_fashion() -> None:
    if not FASHION.is_dir():
        pytest.skip(f"Fashion-MNIST is not installed at {FASHION} (apt-get install -y dataset-fashion-mnist)")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * data[3]).reshape(dims)


def _save(img: np.ndarray, path: Path, kind: str) -> None:
    grey = Image.fromarray(img, mode="L")
    if kind == "rgba.png":
        rgba = grey.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(path.with_suffix(".png"))
    elif kind == "rgb.jpg":
        grey.convert("RGB").save(path.with_suffix(".jpg"), quality=95)
    elif kind == "wide16.png":
        Image.fromarray(img.astype(np.uint16) * 257).save(path.with_suffix(".png"))
    else:
        grey.save(path.with_suffix(".png"))


def fashion_folder(root: Path, train_per_class: int = 24, val_per_class: int = 8) -> Path:
    """``root/train/<class>/*.png`` (grey) + ``root/val/<class>/*`` in :data:`FORMATS`, from the real
    Fashion-MNIST training and test splits (the first images of each class)."""
    need_fashion()
    for split, n, prefix in (("train", train_per_class, "train"), ("val", val_per_class, "t10k")):
        images = _idx(FASHION / f"{prefix}-images-idx3-ubyte.gz")
        labels = _idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j, i in enumerate(np.flatnonzero(labels == c)[:n]):
                kind = FORMATS[j % len(FORMATS)] if split == "val" else "grey.png"
                _save(images[i], folder / f"{i:05d}-{kind.split('.')[0]}", kind)
    return root


def sample_jpegs(folder: Path) -> list[Path]:
    """scikit-learn's sample photographs (china.jpg, flower.jpg), resized to 96x64, as JPEG files."""
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, img in zip(("china.jpg", "flower.jpg"), load_sample_images().images):
        Image.fromarray(img).resize((96, 64)).save(folder / name, quality=90)
        out.append(folder / name)
    return out


def train(cwd: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Path:
    """A finished ``transferkit finetune`` run in ``cwd/run`` (quiet, no workers)."""
    from transferkit.cli import main

    monkeypatch.chdir(cwd)
    code = main(["finetune", *args, "--workers", "0", "--quiet", "--output", "run"])
    assert code == 0
    return cwd / "run"


def own_validation_top1(run: Path) -> tuple[list[str], list[int], list[int]]:
    """``(paths, labels, top-1)`` of the run's validation images as its own validation pass computed them:
    the data bundle built by ``run.data_plan.load_bundle`` with the network from ``model.safetensors``.
    Call with the run's working folder as the current folder."""
    from torch.utils.data import DataLoader

    from transferkit.backbones import create_model
    from transferkit.run import RunFolder
    from transferkit.run.data_plan import load_bundle, scan_data

    folder = RunFolder(run)
    cfg, labels = folder.read_args(), folder.read_labels()
    model = create_model(labels["backbone"], labels["num_classes"], weights=run / "model.safetensors",
                         class_names=labels["class_names"]).eval()  # fmt: skip
    split, _ = scan_data(cfg)
    bundle = load_bundle(cfg, split, model, "none")
    top1, truth = [], []
    with torch.no_grad():
        for x, y in DataLoader(bundle.val, batch_size=cfg["batch_size"]):
            top1 += model(x).argmax(1).tolist()
            truth += y.tolist()
    paths = [p for p, _ in bundle.val.samples] if hasattr(bundle.val, "samples") else []
    return paths, truth, top1


def labels_json(run: Path) -> dict:
    return json.loads((run / "labels.json").read_text())


def listing(folder: Path) -> list[tuple[str, int]]:
    """Every file under ``folder`` with its modification time: what a refused command must leave as is."""
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    )


_RUNS: dict[str, Path] = {}

FASHION_ARGS = ("--backbone", TINY, "--data", "data", "--img-size", "28", "--epochs", "3", "--batch-size", "16",
                "--lr", "0.01", "--weights", "none")  # fmt: skip


def fashion_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run on the Fashion-MNIST folder (``data`` relative to its working folder), made
    once for the whole session and shared by the test modules (they only read it)."""
    if "fashion" not in _RUNS:
        need_fashion()
        cwd = tmp_path_factory.mktemp("fashion_run")
        fashion_folder(cwd / "data")
        with pytest.MonkeyPatch.context() as mp:
            _RUNS["fashion"] = train(cwd, mp, *FASHION_ARGS)
    return _RUNS["fashion"]


def three_class_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run with three classes (fewer than ``topk``'s default 5) on random RGB images
    (``data/{train,val}/{cat,dog,fox}``), made once for the session; the tests only read it."""
    if "three" not in _RUNS:
        cwd = tmp_path_factory.mktemp("three_class_run")
        rng = np.random.default_rng(0)
        for split in ("train", "val"):
            for name in ("cat", "dog", "fox"):
                folder = cwd / "data" / split / name
                folder.mkdir(parents=True)
                for i in range(4):
                    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                        folder / f"{i}.png"
                    )
        args = (
            "--backbone",
            TINY,
            "--data",
            "data",
            "--img-size",
            "16",
            "--epochs",
            "1",
            "--weights",
            "none",
        )
        with pytest.MonkeyPatch.context() as mp:
            _RUNS["three"] = train(cwd, mp, *args)
    return _RUNS["three"]
