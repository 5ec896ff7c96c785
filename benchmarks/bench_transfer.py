"""Does fine-tuning with transferkit's defaults give good models? Real pretrained weights, real data, peers.

Pairs (the same data, epochs and image size for every recipe within a pair):

* P1: the CIFAR-10 ResNet-20 (``cifar10_resnet20_dataparallel.th``) -> Fashion-MNIST, 50 images a class,
  1,000 validation images, 32 px;
* P2: the ImageNet EfficientNet-Lite0 (``efficientnet_lite0_lukemelas_imagenet.pth``, converted to timm's
  layout by pairing in order) -> the same images at 64 px;
* P3: the same Lite0 -> the CLI's embedded digits (1,437 / 360 images), 32 px.

Recipes: ``transferkit`` is the CLI as a user runs it (``--backbone --weights [--data] --img-size --epochs
--seed``, plus ``--mean/--std 0.5`` for Lite0, the statistics its weights were trained with; every recipe
gets them); ``transferkit-random`` the same with ``--weights none``; the others are plain-PyTorch loops in
``benchmarks/peer_recipes.py`` (plain full fine-tunes and the peers' published defaults, with their
sources cited there). Each cell is the mean over ``--seeds`` of the best and of the final validation
accuracy, with the range.

Run: ``python benchmarks/bench_transfer.py [--pairs P1,P2,P3] [--recipes ...] [--seeds 0,1]
[--subset-seed 0] [--out FILE.md] [--json FILE]`` (``make bench-transfer``). Needs ``../shared/fixtures``
and Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.transfer_data import (  # noqa: E402
    cifar_resnet20,
    digits_folder,
    fashion_folder,
    items,
    lite0_timm_file,
)

FIXTURES = ROOT.parent / "shared" / "fixtures"
RESNET20 = FIXTURES / "cifar10_resnet20_dataparallel.th"
EPOCHS = 10
HALF = (0.5, 0.5, 0.5)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

PAIRS = {
    "P1": {"what": "CIFAR-10 ResNet-20 -> Fashion-MNIST 50/class, 32 px", "img": 32, "data": "fashion"},
    "P2": {
        "what": "ImageNet EfficientNet-Lite0 -> Fashion-MNIST 50/class, 64 px",
        "img": 64,
        "data": "fashion",
    },
    "P3": {"what": "ImageNet EfficientNet-Lite0 -> embedded digits, 32 px", "img": 32, "data": "digits"},
}
CLI_RECIPES = ("transferkit", "transferkit-random")


def _cli_args(pair: str, lite0: Path, data: Path | None, epochs: int) -> list[str]:
    if pair == "P1":
        args = ["--backbone", "benchmarks.transfer_data:cifar_resnet20", "--weights", str(RESNET20)]
    else:
        args = [
            "--backbone",
            "timm:efficientnet_lite0",
            "--weights",
            str(lite0),
            "--mean",
            "0.5",
            "--std",
            "0.5",
        ]
    if PAIRS[pair]["data"] == "fashion":
        args += ["--data", str(data)]
    return args + ["--img-size", str(PAIRS[pair]["img"]), "--epochs", str(epochs)]


def run_cli(
    recipe: str, pair: str, seed: int, lite0: Path, data: Path | None, work: Path, epochs: int
) -> dict:
    """One ``transferkit finetune`` run in a subprocess; best and final accuracy from its metrics.csv."""
    out = work / f"{pair}-{recipe}-{seed}"
    cmd = [sys.executable, str(ROOT / "scripts" / "finetune.py"), *_cli_args(pair, lite0, data, epochs)]
    cmd += ["--seed", str(seed), "--output", str(out), "--quiet"]
    if recipe == "transferkit-random":
        cmd += ["--weights", "none"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(out / "metrics.csv") as f:
        accs = [float(row["val_acc"]) for row in csv.DictReader(f)]
    return {"best": max(accs), "final": accs[-1], "history": accs}


def _make_model(pair: str, lite0: Path, num_classes: int):  # noqa: ANN202 - a closure for peer_recipes
    import timm
    import torch
    from safetensors.torch import load_file
    from torch import nn

    def make() -> nn.Module:
        if pair == "P1":
            net = cifar_resnet20(10)
            state = torch.load(RESNET20, map_location="cpu", weights_only=True)["state_dict"]
            net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
            net.linear = nn.Linear(64, num_classes)
            return net
        net = timm.create_model("efficientnet_lite0", num_classes=1000)
        net.load_state_dict(load_file(str(lite0)))
        net.reset_classifier(num_classes)
        net.classifier = nn.Linear(net.classifier.in_features, num_classes)  # PyTorch's default init
        return net

    return make, ("linear" if pair == "P1" else "classifier")


def run_peer(recipe: str, pair: str, seed: int, lite0: Path, folder: Path, epochs: int) -> dict:
    from benchmarks.peer_recipes import run_recipe

    make, head = _make_model(pair, lite0, 10)
    mean, std = IMAGENET if pair == "P1" else (HALF, HALF)
    return run_recipe(
        recipe, make, head, items(folder / "train"), items(folder / "val"), img_size=PAIRS[pair]["img"],
        mean=mean, std=std, epochs=epochs, seed=seed, num_classes=10,
    )  # fmt: skip


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else f"{mean:.3f}"


def table(results: dict, pairs: list[str], recipes: list[str]) -> list[str]:
    """Markdown: one row a recipe, per pair the mean best / final accuracy over seeds with its range."""
    head = "| recipe | " + " | ".join(f"{p}: best | {p}: final" for p in pairs) + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(pairs))]
    for recipe in recipes:
        cells = []
        for pair in pairs:
            runs = results.get(pair, {}).get(recipe, [])
            cells += (
                [_cell([r["best"] for r in runs]), _cell([r["final"] for r in runs])] if runs else ["—", "—"]
            )
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    return lines


def checks(results: dict, pairs: list[str]) -> list[str]:
    """Issue 11's targets, per pair: the default is the best recipe or within 1 point of it (mean best
    accuracy over seeds), at least 5 points above random weights (P1, P2), final within 3 points of best."""
    lines = []
    for pair in pairs:
        runs = results.get(pair, {})
        if "transferkit" not in runs:
            continue

        def mean(recipe: str, runs: dict = runs) -> float:
            return statistics.fmean(r["best"] for r in runs[recipe])

        ours = mean("transferkit")
        best_other, best_name = (
            max((mean(r), r) for r in runs if r not in CLI_RECIPES) if len(runs) > 1 else (0, "-")
        )
        gap = [min(r["final"] - r["best"] for r in runs["transferkit"])]
        parts = [
            f"{pair}: default {ours:.3f}, best other recipe {best_name} {best_other:.3f} "
            f"({'OK' if ours >= best_other - 0.01 else 'MISSED'}: within 1 point or better)",
        ]
        if "transferkit-random" in runs:
            margin = ours - mean("transferkit-random")
            parts.append(
                f"{margin * 100:+.1f} points over random weights ({'OK' if margin >= 0.05 else 'MISSED'})"
            )
        parts.append(
            f"final - best at worst {gap[0] * 100:+.1f} points ({'OK' if gap[0] >= -0.03 else 'MISSED'})"
        )
        lines.append("- " + "; ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    from benchmarks.peer_recipes import RECIPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default="P1,P2,P3")
    parser.add_argument("--recipes", default=",".join([*CLI_RECIPES, *RECIPES]))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "--subset-seed", type=int, default=0, help="which Fashion-MNIST images (held-out check)"
    )
    parser.add_argument(
        "--epochs", type=int, default=EPOCHS, help="10 in every figure reported; fewer to try it"
    )
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print the table of earlier runs' --json files",
    )
    parser.add_argument("--out", type=Path, help="write the markdown section here")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args(argv)
    pairs, recipes = args.pairs.split(","), args.recipes.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {}
    if args.combine:
        for path in args.combine:
            for pair, by_recipe in json.loads(path.read_text()).items():
                for recipe, runs in by_recipe.items():
                    results.setdefault(pair, {}).setdefault(recipe, []).extend(runs)
        pairs = [p for p in pairs if p in results]
        print("\n".join([*table(results, pairs, recipes), "", *checks(results, pairs)]))
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_transfer_") as tmp:
        work = Path(tmp)
        fashion = fashion_folder(work / "fashion", subset_seed=args.subset_seed)
        digits = digits_folder(work / "digits")
        lite0 = lite0_timm_file(work / "lite0_timm.safetensors")
        for pair in pairs:
            folder = fashion if PAIRS[pair]["data"] == "fashion" else digits
            for recipe in recipes:
                for seed in seeds:
                    t0 = time.perf_counter()
                    if recipe in CLI_RECIPES:
                        data = folder if PAIRS[pair]["data"] == "fashion" else None
                        res = run_cli(recipe, pair, seed, lite0, data, work, args.epochs)
                    else:
                        res = run_peer(recipe, pair, seed, lite0, folder, args.epochs)
                    res["seconds"] = round(time.perf_counter() - t0, 1)
                    res["seed"], res["subset_seed"] = seed, args.subset_seed
                    results.setdefault(pair, {}).setdefault(recipe, []).append(res)
                    print(f"{pair} {recipe} seed {seed}: best {res['best']:.3f} final {res['final']:.3f} "
                          f"({res['seconds']:.0f} s)", flush=True)  # fmt: skip
    minutes = (time.perf_counter() - started) / 60
    lines = [
        f"Fashion-MNIST subset seed {args.subset_seed}; seeds {args.seeds}; {args.epochs} epochs; {minutes:.0f} min.",
        "",
        *(f"- {p}: {PAIRS[p]['what']}" for p in pairs),
        "",
        *table(results, pairs, recipes),
        "",
        *checks(results, pairs),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
