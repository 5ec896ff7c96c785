"""Benchmark: ``transferkit predict`` throughput against a hand-written PyTorch inference loop.

The same JPEG files (Fashion-MNIST test images, upscaled to ``--side`` px RGB JPEGs), the same network
(a ``resnet18`` run folder fine-tuned for one epoch at ``--img-size`` px, random initial weights), the same
batch size and DataLoader workers, fp32 on the CPU. Both paths start from the run folder and end with a
CSV of the top-5 classes and probabilities of every file:

* **transferkit**: ``transferkit predict RUN FOLDER --out FILE.csv`` (in this process: ``cli.main``), which
  loads the run, expands the folder, reads each file as the run read its images, and writes atomically;
* **hand-written**: ``torchvision.models.resnet18`` + ``load_state_dict`` of ``model.safetensors``,
  ``glob``, PIL ``open().convert("RGB")`` -> the same ``transforms.v2`` steps -> ``DataLoader`` -> the
  model in eval mode under ``torch.inference_mode`` -> softmax top-5 -> ``csv.writer``.

The two alternate ``--repeat`` times after a warm-up of each, in one process (other jobs share the CPU),
and the medians are compared. Target: transferkit within 10 % of the hand-written loop.

Run: ``python benchmarks/bench_predict.py [--out FILE.md|FILE.json]`` (about 2-3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import glob
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transferkit.cli import main as cli  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * data[3]).reshape(dims)


def write_jpegs(root: Path, images: np.ndarray, labels: np.ndarray, side: int, per_class: int | None) -> None:
    """``root/<class>/<index>.jpg``: RGB JPEGs (quality 90) upscaled to ``side`` px."""
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        picks = np.flatnonzero(labels == c)[:per_class]
        for i in picks:
            img = Image.fromarray(images[i]).convert("RGB").resize((side, side), Image.BILINEAR)
            img.save(root / name / f"{i:05d}.jpg", quality=90)


def make_run(tmp: Path, img_size: int, side: int) -> Path:
    """A finished resnet18 run on a small Fashion-MNIST JPEG folder (one epoch: the weights do not matter)."""
    tr_x, tr_y = _idx(FASHION / "train-images-idx3-ubyte.gz"), _idx(FASHION / "train-labels-idx1-ubyte.gz")
    write_jpegs(tmp / "train_data" / "train", tr_x, tr_y, side, 4)
    write_jpegs(tmp / "train_data" / "val", tr_x[30000:], tr_y[30000:], side, 2)
    argv = ["finetune", "--backbone", "resnet18", "--weights", "none", "--data", str(tmp / "train_data"),
            "--img-size", str(img_size), "--epochs", "1", "--batch-size", "8", "--workers", "0", "--quiet",
            "--output", str(tmp / "run")]  # fmt: skip
    assert cli(argv) == 0
    return tmp / "run"


class Files(torch.utils.data.Dataset):
    """The hand-written loop's dataset: PIL open, RGB, transforms."""

    def __init__(self, paths: list[str], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), i


def hand_written(run: Path, folder: Path, out: Path, batch_size: int, workers: int) -> int:
    """What a PyTorch user writes to classify a folder with the run's weights."""
    import torchvision
    from safetensors.torch import load_file
    from torchvision.transforms import InterpolationMode, v2

    labels = json.loads((run / "labels.json").read_text())
    model = torchvision.models.resnet18(num_classes=labels["num_classes"])
    model.load_state_dict(load_file(run / "model.safetensors"))
    model.eval()
    size, resize = labels["img_size"], labels["eval_transform"]["resize_size"]
    transform = v2.Compose([
        v2.Resize(resize, interpolation=InterpolationMode.BILINEAR, antialias=True), v2.CenterCrop(size),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(labels["mean"], labels["std"]),
    ])  # fmt: skip
    paths = sorted(glob.glob(str(folder / "**" / "*.jpg"), recursive=True))
    loader = torch.utils.data.DataLoader(Files(paths, transform), batch_size=batch_size, num_workers=workers)
    names = labels["class_names"]
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(f"{c}_{i}" for i in range(1, 6) for c in ("class", "prob"))])
        with torch.inference_mode():
            for x, idx in loader:
                probs, top = model(x).softmax(1).topk(5, dim=1)
                for i, p, t in zip(idx.tolist(), probs.tolist(), top.tolist()):
                    writer.writerow([paths[i], *(v for n, q in zip(t, p) for v in (names[n], f"{q:.6f}"))])
    return len(paths)


def with_transferkit(run: Path, folder: Path, out: Path, batch_size: int, workers: int) -> int:
    argv = ["predict", str(run), str(folder), "--out", str(out), "--overwrite", "--quiet", "--device", "cpu",
            "--batch-size", str(batch_size), "--workers", str(workers)]  # fmt: skip
    assert cli(argv) == 0
    with open(out) as f:
        return sum(1 for _ in f) - 1


def bench(args: argparse.Namespace) -> dict:
    if not FASHION.is_dir():
        raise SystemExit(f"{FASHION} is missing: apt-get install -y dataset-fashion-mnist")
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp_name:
        tmp = Path(tmp_name)
        run = make_run(tmp, args.img_size, args.side)
        te_x, te_y = _idx(FASHION / "t10k-images-idx3-ubyte.gz"), _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
        write_jpegs(tmp / "photos", te_x, te_y, args.side, args.images // 10)
        paths = {"transferkit": with_transferkit, "hand-written": hand_written}
        times: dict[str, list[float]] = {k: [] for k in paths}
        cpu: dict[str, list[float]] = {k: [] for k in paths}
        for rep in range(args.repeat + 1):  # the first round warms both up and is not counted
            # A-B, then B-A: neither path always runs first after the other's page-cache and allocator state
            for name in list(paths) if rep % 2 else list(paths)[::-1]:
                start, cpu_start = time.perf_counter(), _cpu_seconds()
                n = paths[name](run, tmp / "photos", tmp / f"{name}.csv", args.batch_size, args.workers)
                if rep:
                    times[name].append(time.perf_counter() - start)
                    cpu[name].append(_cpu_seconds() - cpu_start)
        same = _top1(tmp / "transferkit.csv") == _top1(tmp / "hand-written.csv")
    med = {k: statistics.median(v) for k, v in times.items()}
    # each round's two timings ran back to back under the same load from other jobs: their ratio is the steadier figure
    paired = statistics.median(a / b for a, b in zip(times["transferkit"], times["hand-written"]))
    return {
        "images": n, "side": args.side, "img_size": args.img_size, "batch_size": args.batch_size,
        "workers": args.workers, "repeat": args.repeat, "threads": torch.get_num_threads(),
        "seconds": times, "median_s": med, "images_per_s": {k: n / v for k, v in med.items()},
        "ratio": med["transferkit"] / med["hand-written"], "paired_ratio": paired, "same_top1": same,
        "cpu_s": cpu, "cpu_ratio": statistics.median(cpu["transferkit"]) / statistics.median(cpu["hand-written"]),
        "load_average": os.getloadavg(),
    }  # fmt: skip


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _top1(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {os.path.basename(r["path"]): r["class_1"] for r in csv.DictReader(f)}


def to_markdown(r: dict) -> str:
    rate = r["images_per_s"]
    slower = (r["ratio"] - 1) * 100
    verdict = "met" if max(r["ratio"], r["paired_ratio"]) <= 1.10 else "NOT met"
    return "\n".join([
        "## bench_predict: `transferkit predict` against a hand-written inference loop",
        "",
        f"{r['images']} Fashion-MNIST test images as {r['side']} px RGB JPEGs; a resnet18 run at {r['img_size']} px "
        f"(resize {round(r['img_size'] / 0.875)} + center crop, the run's own validation transform); batch "
        f"{r['batch_size']}, {r['workers']} DataLoader worker(s), fp32, {r['threads']} intra-op threads. Both "
        "paths start from the run folder and write the top-5 CSV; they alternate, median of "
        f"{r['repeat']} timed rounds after a warm-up.",
        "",
        "| path | median wall time | images/s | all rounds (s) |",
        "| --- | --- | --- | --- |",
        *[f"| {k} | {r['median_s'][k]:.2f} s | {rate[k]:.0f} | {', '.join(f'{s:.2f}' for s in r['seconds'][k])} |"
          for k in ("transferkit", "hand-written")],  # fmt: skip
        "",
        f"transferkit / hand-written: {r['ratio']:.3f} of the medians ({slower:+.1f} %), {r['paired_ratio']:.3f} "
        f"as the median of each round's ratio; target within 10 %: {verdict}. Same top-1 class for every file: "
        f"{r['same_top1']}. CPU time (the process and its workers), steadier than wall time on a shared "
        f"machine: transferkit / hand-written {r['cpu_ratio']:.3f} (medians "
        f"{statistics.median(r['cpu_s']['transferkit']):.2f} s and {statistics.median(r['cpu_s']['hand-written']):.2f} s). "
        f"Load average at the end: {', '.join(f'{v:.2f}' for v in r['load_average'])}.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results here (.json for JSON, else markdown)")
    parser.add_argument("--images", type=int, default=600, help="JPEG files to classify (a tenth per class)")
    parser.add_argument("--side", type=int, default=96, help="JPEG side in pixels")
    parser.add_argument("--img-size", type=int, default=64, help="the run's input size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of both paths")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeat", type=int, default=8, help="timed rounds per path")
    args = parser.parse_args(argv)
    # one intra-op thread by default: beside a DataLoader worker that fills the 2 cores, and a second thread
    # spinning against other jobs' processes made the timings of both paths swing by 2x
    torch.set_num_threads(args.threads)
    result = bench(args)
    text = to_markdown(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) if args.out.suffix == ".json" else text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
