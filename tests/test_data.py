"""Tests for transferkit.data: digits, image folders, loaders, the feature cache."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from transferkit.data import (
    ShardSampler,
    cache_features,
    extract_features,
    limit_dataset,
    load_digits_data,
    load_image_folder,
    make_loaders,
    set_loader_epoch,
    split_image_folder,
)
from transferkit.errors import ConfigError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONFIG = {"mean": MEAN, "std": STD, "input_size": (3, 16, 16), "resize_size": 18, "crop_pct": 16 / 18}


def write_digit_folder(root: Path, per_class: int = 6, classes: int = 3, layout: str = "tree") -> Path:
    """PNG files of real digits: root/<class>/*.png, or root/{train,val}/<class>/*.png."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in range(classes):
        images = digits.images[digits.target == c][:per_class]
        for i, img in enumerate(images):
            split = "" if layout == "tree" else ("val" if i % 3 == 0 else "train")
            folder = root / split / f"digit{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 15).astype(np.uint8)).resize((16, 16)).save(folder / f"{i}.png")
    return root


def test_digits_split_is_fixed_stratified_and_normalised():
    a = load_digits_data(img_size=16, mean=MEAN, std=STD, augment=False)
    b = load_digits_data(img_size=16, mean=MEAN, std=STD, augment=False)
    assert (len(a.train), len(a.val), a.num_classes) == (1437, 360, 10)
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    counts = Counter(a.val.labels.tolist())
    assert min(counts.values()) >= 35 and max(counts.values()) <= 37  # stratified: ~36 of each digit
    x, y = a.val[0]
    assert x.shape == (3, 16, 16) and isinstance(y, int)
    # the scans' background is 0, so a corner pixel is exactly (0 - mean) / std in each channel
    expected = torch.tensor([(0 - m) / s for m, s in zip(MEAN, STD)])
    assert torch.allclose(x[:, 0, 0], expected)


def test_digits_augmentation_shifts_training_images_only():
    bundle = load_digits_data(img_size=16, mean=MEAN, std=STD, augment=True)
    torch.manual_seed(1)
    draws = {tuple(bundle.train[5][0].flatten()[:64].tolist()) for _ in range(8)}
    assert len(draws) > 1
    assert torch.equal(bundle.val[5][0], bundle.val[5][0])


def test_digits_reject_tiny_images():
    with pytest.raises(ConfigError, match="`img_size`"):
        load_digits_data(img_size=4)


def test_image_folder_tree_is_split_stratified_and_seeded(tmp_path):
    root = write_digit_folder(tmp_path / "data", per_class=10)
    a = split_image_folder(root, val_split=0.3, seed=1)
    b = split_image_folder(root, val_split=0.3, seed=1)
    c = split_image_folder(root, val_split=0.3, seed=2)
    assert a.class_names == ["digit0", "digit1", "digit2"]
    assert a.val == b.val and a.val != c.val
    assert Counter(label for _, label in a.val) == {0: 3, 1: 3, 2: 3}
    bundle = load_image_folder(a, CONFIG, img_size=12)
    x, y = bundle.train[0]
    assert x.shape == (3, 12, 12) and bundle.img_size == 12 and bundle.source == str(root)


def test_image_folder_train_val_layout(tmp_path):
    root = write_digit_folder(tmp_path / "data", per_class=6, layout="split")
    bundle = load_image_folder(root, CONFIG)
    assert bundle.class_names == ["digit0", "digit1", "digit2"]
    assert (len(bundle.train), len(bundle.val)) == (12, 6)
    assert bundle.val[0][0].shape == (3, 16, 16)


def test_unreadable_images_are_skipped_and_counted_or_strict(tmp_path, caplog):
    root = write_digit_folder(tmp_path / "data", per_class=6)
    (root / "digit1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    good = (root / "digit2" / "0.png").read_bytes()
    (root / "digit2" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "digit0" / "notes.txt").write_text("not an image, ignored")
    with caplog.at_level(logging.WARNING, logger="transferkit.data"):
        split = split_image_folder(root)
    assert sorted(Path(p).name for p in split.skipped) == ["broken.png", "truncated.png"]
    assert "skipping 2 unreadable" in caplog.text
    assert len(split.train) + len(split.val) == 18
    with pytest.raises(ConfigError, match="2 unreadable"):
        split_image_folder(root, strict=True)
    # issue 16 item 16: the strict error names every unreadable file, not only the first
    (root / "digit0" / "third.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ConfigError, match="3 unreadable") as err:
        split_image_folder(root, strict=True)
    assert all(name in str(err.value) for name in ("broken.png", "truncated.png", "third.jpg"))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "no class sub-folders"),
        (lambda p: write_digit_folder(p / "d", classes=1), "only one class"),
        (
            lambda p: (p / "d" / "a").mkdir(parents=True) or (p / "d" / "b").mkdir() or p / "d",
            "no readable images",
        ),
        (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "is a file, not a folder"),
    ],
    ids=["missing", "empty", "one-class", "no-images", "a-file"],
)
def test_bad_folders_raise_config_errors(tmp_path, make, match):
    with pytest.raises(ConfigError, match=match):
        split_image_folder(make(tmp_path))


def test_val_class_missing_from_train_is_an_error(tmp_path):
    root = write_digit_folder(tmp_path / "data", layout="split")
    (root / "val" / "extra").mkdir()
    with pytest.raises(ConfigError, match="training split lacks"):
        split_image_folder(root)


@pytest.mark.parametrize("other", ["test", None], ids=["train+test", "train-only"])
def test_a_split_layout_without_val_is_not_read_as_classes(tmp_path, other):
    """DIR/train + DIR/test used to train a 2-class "train vs test" model without a word."""
    import shutil

    write_digit_folder(tmp_path / "d", layout="split")
    if other:
        shutil.move(tmp_path / "d" / "val", tmp_path / "d" / other)
    else:
        shutil.rmtree(tmp_path / "d" / "val")
    with pytest.raises(ConfigError, match="a train/val layout needs exactly .*/train and .*/val"):
        split_image_folder(tmp_path / "d")


def test_train_class_missing_from_val_is_a_warning(tmp_path, caplog):
    root = write_digit_folder(tmp_path / "data", layout="split")
    for f in (root / "val" / "digit2").iterdir():
        f.unlink()
    with caplog.at_level(logging.WARNING, logger="transferkit.data"):
        split = split_image_folder(root)
    assert "classes ['digit2'] have training images but no validation images" in caplog.text
    assert 2 not in {label for _, label in split.val}


def test_val_split_gives_every_class_a_validation_and_a_training_image(tmp_path):
    """60 images beside 2: a plain stratified 20% split rounds the rare class's share to no val image."""
    from PIL import Image

    for name, n in (("common", 60), ("rare", 2)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / name / f"{i}.png")
    for seed in range(3):
        split = split_image_folder(tmp_path, val_split=0.2, seed=seed)
        val, train = Counter(lab for _, lab in split.val), Counter(lab for _, lab in split.train)
        assert val[1] == 1 and train[1] == 1 and val[0] + train[0] == 60
        assert split_image_folder(tmp_path, val_split=0.2, seed=seed).val == split.val  # still seeded
    # a split that already had every class on both sides is exactly what it was
    balanced = write_digit_folder(tmp_path / "b", per_class=10)
    from sklearn.model_selection import train_test_split

    split = split_image_folder(balanced, val_split=0.3, seed=1)
    samples = sorted(split.train + split.val)
    _, ref_val = train_test_split(samples, test_size=9, stratify=[lab for _, lab in samples], random_state=1)
    assert split.val == sorted(ref_val)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path, mode):
    """PIL's convert() clips 16-bit values at 255 (a 16-bit PNG turns almost white); the reader scales them."""
    from PIL import Image

    from transferkit.data import ImageFileDataset

    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    img = Image.fromarray(ramp) if mode == "I;16" else Image.fromarray(ramp.astype(np.int32), mode="I")
    path = tmp_path / ("wide.png" if mode == "I;16" else "wide.tif")  # PNG cannot hold mode I
    img.save(path)
    ds = ImageFileDataset([(str(path), 0)], lambda im: torch.from_numpy(np.asarray(im).copy()))
    x, _ = ds[0]
    assert x.shape == (8, 8, 3) and x.min() == 0 and x.max() == 255
    assert abs(float(x.float().mean()) - 127.5) < 2  # the ramp's middle, not a clipped white


def test_loader_order_depends_only_on_seed_and_epoch():
    ds = TensorDataset(torch.arange(40).float().unsqueeze(1), torch.zeros(40, dtype=torch.long))

    def order(epoch: int, seed: int = 0) -> list[int]:
        train, _ = make_loaders((ds, ds), 8, seed=seed)
        set_loader_epoch(train, epoch, seed)
        return [int(v) for x, _ in train for v in x.flatten()]

    assert order(3) == order(3) and order(3) != order(4) and order(3, seed=1) != order(3)
    assert len(order(0)) == 40  # 40 // 8 batches exactly: nothing dropped


def test_distributed_shards_cover_the_data():
    ds = TensorDataset(torch.arange(11).float(), torch.zeros(11, dtype=torch.long))
    seen = []
    for rank in range(2):
        train, val = make_loaders((ds, ds), 2, rank=rank, world_size=2, drop_last=False)
        set_loader_epoch(train, 0)
        seen.append([int(v) for x, _ in val for v in x])
        assert len(train.sampler) == 6  # DistributedSampler pads training shards to equal length
    assert sorted(seen[0] + seen[1]) == list(range(11))  # validation: every image exactly once
    assert list(ShardSampler(5, 1, 2)) == [1, 3]


def test_limit_dataset_is_seeded():
    ds = TensorDataset(torch.arange(50))
    a, b = limit_dataset(ds, 7, seed=3), limit_dataset(ds, 7, seed=3)
    assert a.indices == b.indices and len(a) == 7
    assert limit_dataset(ds, 100) is ds


def test_feature_cache_matches_forward_features():
    from transferkit.backbones import create_model

    model = create_model("tests.tiny_models:tinynet", 10, weights=None)
    bundle = load_digits_data(img_size=16, mean=MEAN, std=STD, augment=False)
    bundle.train, bundle.val = limit_dataset(bundle.train, 40), limit_dataset(bundle.val, 20)
    model.train()
    cached = cache_features(model, bundle, batch_size=16)
    assert model.training  # extraction runs in eval mode and restores the mode afterwards
    assert cached.train.tensors[0].shape == (40, 16) and len(cached.val) == 20
    model.eval()
    x = torch.stack([bundle.train[i][0] for i in range(5)])
    assert torch.allclose(cached.train.tensors[0][:5], model.forward_features(x), atol=1e-6)
    loader = torch.utils.data.DataLoader(bundle.val, batch_size=7)
    assert torch.equal(extract_features(model, loader).tensors[1], cached.val.tensors[1])
    bundle.augment = True
    with pytest.raises(ConfigError, match="augmentation off"):
        cache_features(model, bundle)


@pytest.mark.parametrize("workers", [0, 2], ids=["main-process", "workers"])
def test_file_broken_after_the_check_is_skipped_in_the_loader(tmp_path, workers):
    """A file that breaks after the up-front check: the next sample stands in (never a worker crash);
    with ``strict=True`` a TransferkitError naming the file."""
    from transferkit.data import ImageFileDataset
    from transferkit.errors import TransferkitError

    root = write_digit_folder(tmp_path / "data", per_class=4, classes=2)
    split = split_image_folder(root, val_split=0.5)
    victim = split.train[0][0]
    Path(victim).write_bytes(b"replaced by garbage mid-run")
    bundle = load_image_folder(split, CONFIG, augment=False)
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=2, num_workers=workers)
    labels = torch.cat([y for _, y in loader]).tolist()
    assert len(labels) == len(split.train)
    assert labels[0] == split.train[1][1]  # the next sample stood in for the broken one
    strict = ImageFileDataset(split.train, bundle.train.transform, strict=True)
    with pytest.raises(TransferkitError, match=f"cannot read image {victim}.*`strict_data`"):
        strict[0]


def test_check_class_names_is_an_error_with_structure(tmp_path):
    """Issue 16 item 1: the class-name check that --eval-only (and a later `evaluate`) relies on."""
    from transferkit.data import check_class_names, scan_eval_folder
    from transferkit.errors import ClassNamesError

    with pytest.raises(ClassNamesError) as err:
        check_class_names(["cat", "dog", "fox"], ["cat", "dgo", "fox"], source="photos")
    assert err.value.unknown == ["dgo"] and err.value.missing == ["dog"]
    assert "'dgo'" in str(err.value) and "'dog'" in str(err.value)
    check_class_names(["cat", "dog", "fox"], ["fox", "cat"])  # a subset: labels by name
    with pytest.raises(ClassNamesError, match="lacks"):
        check_class_names(["cat", "dog"], ["cat"], allow_missing=False)

    root = write_digit_folder(tmp_path / "data", per_class=4)
    split = scan_eval_folder(root, ["digit2", "digit1", "digit0"])  # the model's order, not the folders'
    assert split.train == [] and len(split.val) == 12
    assert {Path(p).parent.name: label for p, label in split.val} == {"digit2": 0, "digit1": 1, "digit0": 2}


def test_links_never_multiply_or_mislabel_images(tmp_path, caplog):
    """Issue 16 item 2: with `café/loop -> ..`, 30 files became 1,590 samples, in both train and val."""
    import os

    root = write_digit_folder(tmp_path / "data", per_class=10)
    os.symlink("..", root / "digit0" / "loop")  # back to the data folder: every class again, as digit0
    os.symlink("../digit2", root / "digit1" / "other")  # another class's folder
    os.symlink(root / "digit2" / "0.png", root / "digit2" / "again.png")  # the same file twice
    with caplog.at_level(logging.WARNING, logger="transferkit.data"):
        split = split_image_folder(root)
    samples = split.train + split.val
    assert len(samples) == 30
    assert len({os.path.realpath(p) for p, _ in samples}) == 30
    assert not {os.path.realpath(p) for p, _ in split.train} & {os.path.realpath(p) for p, _ in split.val}
    assert all(Path(p).parent.name == split.class_names[label] for p, label in samples)
    assert "not following" in caplog.text and "skipped 1 duplicate image file" in caplog.text


def test_a_file_in_both_train_and_val_is_refused(tmp_path):
    import os

    root = write_digit_folder(tmp_path / "data", per_class=4, layout="split")
    os.symlink(root / "train" / "digit0" / "1.png", root / "val" / "digit0" / "leak.png")
    with pytest.raises(ConfigError, match="also training files"):
        split_image_folder(root)
