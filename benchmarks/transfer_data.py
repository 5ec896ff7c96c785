"""Real data and real pretrained weights for ``bench_transfer.py``, prepared the way a user would.

* :func:`fashion_folder` writes a class-balanced Fashion-MNIST subset (Debian's ``dataset-fashion-mnist``)
  as an image folder ``ROOT/train/<class>/*.png`` + ``ROOT/val/<class>/*.png`` that ``--data`` reads;
* :func:`digits_folder` does the same for scikit-learn's digits (the CLI's embedded default);
* :func:`cifar_resnet20` is the CIFAR ResNet-20 of the fixtures README, a factory a user passes as
  ``--backbone benchmarks.transfer_data:cifar_resnet20``.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]  # fmt: skip


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _write(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str], picks: np.ndarray) -> None:
    for i in picks:
        folder = root / names[int(labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{int(i):05d}.png")


def _balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    )


def fashion_folder(root: Path, per_class: int = 50, val_per_class: int = 100, subset_seed: int = 0) -> Path:
    """Fashion-MNIST: ``per_class`` training images a class from its train split, ``val_per_class`` from test."""
    if not FASHION.is_dir():
        raise SystemExit(f"{FASHION} is missing: apt-get install -y dataset-fashion-mnist")
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(subset_seed)
    tr_x, tr_y = _idx(FASHION / "train-images-idx3-ubyte.gz"), _idx(FASHION / "train-labels-idx1-ubyte.gz")
    te_x, te_y = _idx(FASHION / "t10k-images-idx3-ubyte.gz"), _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    _write(root / "train", tr_x, tr_y, FASHION_CLASSES, _balanced(tr_y, per_class, rng))
    _write(root / "val", te_x, te_y, FASHION_CLASSES, _balanced(te_y, val_per_class, rng))
    return root


def digits_folder(root: Path) -> Path:
    """scikit-learn's digits as an image folder (8x8 scans scaled to 0..255), split exactly as the CLI's
    embedded digits are (``transferkit.data``'s seed and fraction), so peers train on the same images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from transferkit.data import DIGITS_SPLIT_SEED, DIGITS_VAL_FRACTION

    if root.exists():
        shutil.rmtree(root)
    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    train, val = train_test_split(
        list(range(len(images))),
        test_size=DIGITS_VAL_FRACTION,
        stratify=d.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    names = [str(i) for i in range(10)]
    _write(root / "train", images, d.target, names, np.array(sorted(train)))
    _write(root / "val", images, d.target, names, np.array(sorted(val)))
    return root


def items(folder: Path) -> list[tuple[str, int]]:
    """``(path, label)`` pairs of an image folder, labels by sorted class name (as the CLI numbers them)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    return [(str(f), i) for i, c in enumerate(classes) for f in sorted((folder / c).glob("*.png"))]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin if stride != 1 or cin != cout else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.pad:  # "option A": subsample by 2 and zero-pad the channels; no weights
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (Idelbayev's layout: conv1, bn1, layer1..3, linear)."""

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [_BasicBlock(cin, cout, stride)] + [_BasicBlock(cout, cout, 1) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        # the weights were trained on ImageNet-normalised CIFAR images (fixtures README)
        self.pretrained_cfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def cifar_resnet20(num_classes: int = 10) -> CifarResNet:
    """The CIFAR ResNet-20 of ``cifar10_resnet20_dataparallel.th`` (random weights; ``--weights`` loads)."""
    return CifarResNet(20, num_classes)


LITE0 = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "fixtures"
    / "efficientnet_lite0_lukemelas_imagenet.pth"
)


def lite0_timm_file(out: Path) -> Path:
    """The ImageNet EfficientNet-Lite0 fixture (lukemelas' layout) in timm's layout, as a safetensors file.

    The two implementations list the same tensors in the same order with the same shapes, so pairing them in
    order is the conversion (what ``transferkit``'s structural alignment does for a user).
    """
    import timm
    from safetensors.torch import save_file

    src = torch.load(LITE0, map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", num_classes=1000).state_dict()
    names = list(target)
    if len(names) != len(src):
        raise SystemExit(f"Lite0: {len(src)} tensors in the file, {len(names)} in timm's model")
    out_state = {}
    for (skey, tensor), tkey in zip(src.items(), names, strict=True):
        if tuple(tensor.shape) != tuple(target[tkey].shape):
            raise SystemExit(f"Lite0: {skey} {tuple(tensor.shape)} does not pair with {tkey}")
        out_state[tkey] = tensor.contiguous()
    save_file(out_state, str(out))
    return out
