"""Benchmark: the fine-tuning loop's overhead, and the linear-probe feature cache's speed-up.

1. **Loop overhead.** Images per second of :class:`transferkit.train.Trainer` against a hand-written
   PyTorch loop doing the same work: same model (torchvision ``resnet18``, random weights), same batches
   (digits at ``--img-size`` px, batch ``--batch-size``, the same DataLoader), same precision (fp32), the
   same AdamW and per-step cosine LR, loss and accuracy accumulated on the device. The two loops alternate,
   ``--repeat`` timed epochs each after a warm-up, in one process, and the medians are compared; the
   target is an overhead of at most 3 %.
2. **Linear probe.** 10 epochs of head-only training on a frozen backbone (``resnet18``, digits at
   ``--probe-img-size`` px): with the feature cache (features computed once, then the head trains on
   them) against recomputing the backbone's features every epoch. Both include validation every epoch;
   the cached path includes building the cache. Target: at least 5x.

Run: ``python benchmarks/bench_finetune.py [--out FILE.md|FILE.json]`` (about 2-4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transferkit.backbones import create_model  # noqa: E402
from transferkit.data import cache_features, limit_dataset, load_digits_data, make_loaders, set_loader_epoch  # noqa: E402
from transferkit.freeze import freeze_backbone  # noqa: E402
from transferkit.optim import build_optimizer  # noqa: E402
from transferkit.schedule import LRSchedule  # noqa: E402
from transferkit.train import Trainer  # noqa: E402

BACKBONE = "resnet18"


def _setup(img_size: int, batch_size: int, n_train: int, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(BACKBONE, 10, weights=None)
    bundle = load_digits_data(img_size, model.data_config["mean"], model.data_config["std"], augment=False)
    bundle.train = limit_dataset(bundle.train, n_train)
    train, val = make_loaders(bundle, batch_size, seed=seed)
    return model, train, val


def hand_written_epoch(model, optimizer, scheduler, loader) -> int:
    """The loop a PyTorch user writes: forward, loss, backward, step, LR step, running accuracy."""
    model.train()
    sums = torch.zeros(3, dtype=torch.float64)
    for x, y in loader:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            sums += torch.stack(
                [
                    loss.detach().double() * y.numel(),
                    (logits.argmax(1) == y).sum().double(),
                    torch.tensor(float(y.numel()), dtype=torch.float64),
                ]
            )
    return int(sums[2])


def bench_overhead(img_size: int, batch_size: int, n_train: int, repeat: int) -> dict:
    """Images/s of Trainer.train_epoch vs the hand-written loop, alternating, medians of ``repeat``."""
    model_a, train, _ = _setup(img_size, batch_size, n_train)
    opt_a = build_optimizer(model_a, "adamw", lr=1e-3, weight_decay=0.05, no_decay_bias_norm=False)
    steps = len(train) * (repeat + 1)
    trainer = Trainer(model_a, opt_a, train, train, epochs=repeat + 1,
                      lr_schedule=LRSchedule(opt_a, "cosine", total_steps=steps))  # fmt: skip

    model_b, train_b, _ = _setup(img_size, batch_size, n_train)
    opt_b = torch.optim.AdamW(model_b.parameters(), lr=1e-3, weight_decay=0.05)
    sched_b = torch.optim.lr_scheduler.LambdaLR(
        opt_b, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )

    def toolkit(epoch: int) -> float:
        t = time.perf_counter()
        n = trainer.train_epoch(epoch)["images"]
        return n / (time.perf_counter() - t)

    def manual(epoch: int) -> float:
        set_loader_epoch(train_b, epoch)
        t = time.perf_counter()
        n = hand_written_epoch(model_b, opt_b, sched_b, train_b)
        return n / (time.perf_counter() - t)

    toolkit(0), manual(0)  # warm-up: allocator, kernels' first calls
    a, b = [], []
    for epoch in range(1, repeat + 1):
        # alternate the order so a slow spell on a shared machine hits both loops alike
        if epoch % 2:
            a.append(toolkit(epoch)), b.append(manual(epoch))
        else:
            b.append(manual(epoch)), a.append(toolkit(epoch))
    ta, tb = statistics.median(a), statistics.median(b)
    return {
        "model": BACKBONE, "img_size": img_size, "batch_size": batch_size, "images_per_epoch": len(train) * batch_size,
        "epochs_timed": repeat, "precision": "fp32",
        "toolkit_img_s": ta, "manual_img_s": tb, "overhead_pct": 100.0 * (tb - ta) / tb,
        "toolkit_all": a, "manual_all": b,
    }  # fmt: skip


def _probe_once(mode: str, img_size: int, batch_size: int, epochs: int) -> dict:
    torch.manual_seed(0)
    model = create_model(BACKBONE, 10, weights=None)
    freeze_backbone(model)
    bundle = load_digits_data(img_size, model.data_config["mean"], model.data_config["std"], augment=False)
    t = time.perf_counter()
    build = 0.0
    if mode == "cached":
        bundle = cache_features(model, bundle, batch_size=batch_size)
        build = time.perf_counter() - t
    train, val = make_loaders(bundle, batch_size, seed=0)
    opt = build_optimizer(model, "adamw", lr=1e-2)
    schedule = LRSchedule(opt, "cosine", total_steps=epochs * len(train))
    trainer = Trainer(model, opt, train, val, epochs=epochs, inputs="features" if mode == "cached" else "images",
                      frozen_backbone=True, lr_schedule=schedule)  # fmt: skip
    result = trainer.fit()
    return {
        "seconds": time.perf_counter() - t,
        "build_s": build,
        "val_acc": result.history[-1]["val_acc"],
        "head": model.head.weight.detach().clone(),
    }


def bench_probe(img_size: int, batch_size: int, epochs: int, repeat: int = 2) -> dict:
    """Linear probe over ``epochs`` epochs: feature cache vs recomputing the frozen backbone every epoch.

    The two paths alternate ``repeat`` times; the fastest run of each is compared (the least disturbed
    by other work on the machine).
    """
    runs: dict[str, list[dict]] = {"recompute": [], "cached": []}
    for _ in range(repeat):
        for mode in runs:
            runs[mode].append(_probe_once(mode, img_size, batch_size, epochs))
    best = {mode: min(r, key=lambda x: x["seconds"]) for mode, r in runs.items()}
    return {
        "recompute_s": best["recompute"]["seconds"],
        "cached_s": best["cached"]["seconds"],
        "cache_build_s": best["cached"]["build_s"],
        "recompute_all": [r["seconds"] for r in runs["recompute"]],
        "cached_all": [r["seconds"] for r in runs["cached"]],
        "recompute_val_acc": best["recompute"]["val_acc"],
        "cached_val_acc": best["cached"]["val_acc"],
        "speedup": best["recompute"]["seconds"] / best["cached"]["seconds"],
        "max_head_weight_diff": float((best["cached"]["head"] - best["recompute"]["head"]).abs().max()),
        "model": BACKBONE,
        "img_size": img_size,
        "batch_size": batch_size,
        "epochs": epochs,
        "repeat": repeat,
        "train_images": 1437,
        "val_images": 360,
    }


def to_markdown(overhead: dict, probe: dict) -> str:
    o, p = overhead, probe
    return "\n".join(
        [
            "## bench_finetune: training-loop overhead and the linear-probe feature cache",
            "",
            f"1. Loop overhead: `{o['model']}` (random weights), digits at {o['img_size']} px, batch {o['batch_size']}, "
            f"{o['precision']}, AdamW + per-step cosine LR; {o['images_per_epoch']} images per epoch, median of "
            f"{o['epochs_timed']} alternating timed epochs after a warm-up.",
            "",
            "| loop | images/s (median) | all epochs |",
            "| --- | --- | --- |",
            f"| hand-written PyTorch loop | {o['manual_img_s']:.1f} | {', '.join(f'{v:.1f}' for v in o['manual_all'])} |",
            f"| transferkit `Trainer` | {o['toolkit_img_s']:.1f} | {', '.join(f'{v:.1f}' for v in o['toolkit_all'])} |",
            "",
            f"Overhead of the toolkit loop: **{o['overhead_pct']:+.1f} %** (target <= 3 %; negative = faster).",
            "",
            f"2. Linear probe: `{p['model']}` backbone frozen, digits at {p['img_size']} px ({p['train_images']} train / "
            f"{p['val_images']} val), batch {p['batch_size']}, {p['epochs']} epochs with validation every epoch; "
            f"fastest of {p['repeat']} alternating runs each.",
            "",
            "| path | seconds (fastest) | all runs | final val acc |",
            "| --- | --- | --- | --- |",
            f"| recompute features every epoch | {p['recompute_s']:.1f} | {', '.join(f'{v:.1f}' for v in p['recompute_all'])} "
            f"| {p['recompute_val_acc']:.2%} |",
            f"| feature cache (building it: {p['cache_build_s']:.1f} s, included) | {p['cached_s']:.1f} | "
            f"{', '.join(f'{v:.1f}' for v in p['cached_all'])} | {p['cached_val_acc']:.2%} |",
            "",
            f"Speed-up: **{p['speedup']:.1f}x** (target >= 5x); largest difference between the two heads' weights: "
            f"{p['max_head_weight_diff']:.1e}.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results here (.json for JSON, else markdown)")
    parser.add_argument("--img-size", type=int, default=64, help="overhead benchmark image size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-images", type=int, default=384, help="images per timed epoch")
    parser.add_argument("--repeat", type=int, default=4, help="timed epochs per loop")
    parser.add_argument("--probe-img-size", type=int, default=64)
    parser.add_argument("--probe-epochs", type=int, default=10)
    parser.add_argument("--probe-repeat", type=int, default=2, help="alternating runs per linear-probe path")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    overhead = bench_overhead(args.img_size, args.batch_size, args.train_images, args.repeat)
    probe = bench_probe(args.probe_img_size, 64, args.probe_epochs, args.probe_repeat)
    text = to_markdown(overhead, probe)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            args.out.write_text(json.dumps({"overhead": overhead, "linear_probe": probe}, indent=2))
        else:
            args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
