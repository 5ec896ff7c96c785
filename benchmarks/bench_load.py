"""Benchmark: loading a ViT-B/16-sized checkpoint with a 1000 -> 10 head mismatch, six ways.

Each path runs in a fresh Python process (so one path's page cache of Python objects, allocator state
and peak RSS cannot leak into the next) and reports wall time and peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) above the RSS measured after imports and, where the
model is built first, after building it. The checkpoint is torchvision ``vit_b_16``'s random
state dict (1000 classes, 86.6 M parameters, ~346 MB), written once to a temporary folder.

Paths:
  a. seeds' recipe: build ``vit_b_16(num_classes=10)``, ``torch.load``, filter by shape, ``update``
     the model's state dict, ``load_state_dict``;
  b. timm: ``timm.models.load_checkpoint(model, path, strict=False, filter_fn=...)`` dropping the head
     keys first, as timm's ``load_pretrained`` does for a new class count;
  c. reference: a bare ``model.load_state_dict(sd, strict=False)`` of a dict already in memory (the
     read is not timed);
  d. ``transferkit.load_partial(model, path)`` into an existing model;
  e. ``transferkit.backbones.create_model("vit_b_16", num_classes=10, weights=path)`` (build and load
     in one call; meta-device construction);
  f. floor for reading the file safely: ``torch.load(path, mmap=True, weights_only=True)``, drop the head,
     bare ``load_state_dict`` (no checks, no report, not transactional). (c) excludes reading the file
     altogether; (f) is what any path that starts from the file pays, so ``d / f`` is transferkit's own
     overhead and ``f / c`` the cost of the read itself (unpickling with the weights-only unpickler and
     faulting in the mapped pages).

Run: ``python benchmarks/bench_load.py [--out FILE.md|FILE.json] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATHS = {
    "a": "seeds' recipe (build, torch.load, filter, update, load_state_dict)",
    "b": "timm load_checkpoint(strict=False, head keys filtered)",
    "c": "bare load_state_dict of an in-memory dict (reference)",
    "d": "transferkit load_partial into an existing model",
    "e": "transferkit create_model(weights=path) (build + load)",
    "f": "floor: torch.load(mmap=True, weights_only=True), drop head, bare load_state_dict",
}
HEAD = ("heads.head.weight", "heads.head.bias")


def _rss_mb() -> float:
    """Current resident set size (MB), from /proc."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child(path_id: str, ckpt: str) -> dict:
    """Run one path in this (fresh) process and return its measurements."""
    import torch
    import torchvision

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if path_id in "de":
        import transferkit.partial  # noqa: F401 - imported before the baseline, like torch
    if path_id == "e":
        try:
            from transferkit.backbones import create_model
        except ImportError as exc:
            return {"skipped": f"transferkit.backbones.create_model is not importable: {exc}"}
    if path_id == "b":
        import timm.models
    rss_imports = _rss_mb()
    result: dict = {"rss_imports_mb": rss_imports}

    if path_id == "e":
        t0 = time.perf_counter()
        model = create_model("vit_b_16", num_classes=10, weights=ckpt)
        result["load_s"] = time.perf_counter() - t0
        result["build_s"] = None
        result["loaded"] = len(model.load_report.loaded) if model.load_report is not None else None
        # assign=True leaves parameters backed by the mmap'd file: read one value per page so the table
        # also shows what the first forward pass pays for bringing the weights into memory
        t1 = time.perf_counter()
        with torch.no_grad():
            for p in model.parameters():
                p.detach().reshape(-1)[::1024].sum()
        result["touch_s"] = time.perf_counter() - t1
    else:
        t0 = time.perf_counter()
        model = torchvision.models.vit_b_16(num_classes=10)
        result["build_s"] = time.perf_counter() - t0
        rss_model = _rss_mb()
        result["rss_model_mb"] = rss_model
        if path_id == "c":
            sd = torch.load(ckpt, map_location="cpu", weights_only=True)
            for k in HEAD:
                sd.pop(k)
            result["rss_model_mb"] = rss_model = _rss_mb()  # the dict is not part of the measured load
            t1 = time.perf_counter()
            model.load_state_dict(sd, strict=False)
            result["load_s"] = time.perf_counter() - t1
            result["loaded"] = len(sd)
        elif path_id == "a":
            t1 = time.perf_counter()
            sd = torch.load(ckpt, map_location="cpu")
            own = model.state_dict()
            filtered = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
            own.update(filtered)
            model.load_state_dict(own)
            result["load_s"] = time.perf_counter() - t1
            result["loaded"] = len(filtered)
        elif path_id == "b":

            def drop_head(state: dict, model: torch.nn.Module) -> dict:
                return {k: v for k, v in state.items() if k not in HEAD}

            t1 = time.perf_counter()
            timm.models.load_checkpoint(model, ckpt, strict=False, filter_fn=drop_head)
            result["load_s"] = time.perf_counter() - t1
            result["loaded"] = None
        elif path_id == "f":
            t1 = time.perf_counter()
            sd = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
            for k in HEAD:
                sd.pop(k)
            model.load_state_dict(sd, strict=False)
            result["load_s"] = time.perf_counter() - t1
            result["loaded"] = len(sd)
        elif path_id == "d":
            from transferkit.partial import load_partial

            t1 = time.perf_counter()
            report = load_partial(model, ckpt)
            result["load_s"] = time.perf_counter() - t1
            result["loaded"] = len(report.loaded)
            result["mismatched"] = sorted(report.mismatched)
        result["peak_above_model_mb"] = _peak_mb() - rss_model
    result["peak_above_imports_mb"] = _peak_mb() - rss_imports
    result["total_s"] = (result.get("build_s") or 0.0) + result["load_s"]
    return result


def _run_child(path_id: str, ckpt: Path) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", path_id, str(ckpt)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        return {"skipped": f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _make_checkpoint(folder: Path) -> tuple[Path, float]:
    import torch
    import torchvision

    path = folder / "vit_b_16_1000.pth"
    torch.save(torchvision.models.vit_b_16(num_classes=1000).state_dict(), path)
    return path, path.stat().st_size / 2**20


def _aggregate(runs: list[dict]) -> dict:
    if any("skipped" in r for r in runs):
        return next(r for r in runs if "skipped" in r)
    out = dict(runs[0])
    for key in ("build_s", "load_s", "touch_s", "total_s", "peak_above_model_mb", "peak_above_imports_mb"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(results: dict[str, dict], ckpt_mb: float, repeat: int) -> str:
    ref = results.get("c", {}).get("load_s")
    lines = [
        f"Checkpoint: torchvision vit_b_16 state dict, 1000 classes, {ckpt_mb:.0f} MB; target 10 classes. "
        f"Median of {repeat} fresh process(es) per path; {os.cpu_count()} CPU(s); torch threads <= 4.",
        "",
        "| path | build s | load s | load / ref | peak RSS above model, MB (x ckpt) | peak above imports, MB "
        "| tensors loaded |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pid, label in PATHS.items():
        r = results[pid]
        if "skipped" in r:
            lines.append(f"| {pid}. {label} | skipped: {r['skipped']} | | | | | |")
            continue
        above = r.get("peak_above_model_mb")
        ratio = f"{r['load_s'] / ref:.2f}x" if ref else "-"
        lines.append(
            f"| {pid}. {label} | {_fmt(r.get('build_s'), '.2f')} | {r['load_s']:.2f} | {ratio} | "
            f"{_fmt(above, '.0f')}{f' ({above / ckpt_mb:.2f}x)' if above is not None else ''} | "
            f"{r['peak_above_imports_mb']:.0f} | {r.get('loaded') if r.get('loaded') is not None else '-'} |"
        )
    lines.append("")
    lines.append(
        "load / ref: load time relative to (c), a load_state_dict of a dict already in memory; (e) includes "
        "building the model. Peak RSS counts file pages mapped by mmap that were read."
    )
    floor, mine = results.get("f", {}).get("load_s"), results.get("d", {}).get("load_s")
    if floor and mine and ref:
        lines.append(
            f"Reading the file safely at all (f) costs {floor / ref:.2f}x the in-memory reference; "
            f"load_partial (d) is {mine / floor:.2f}x that floor (its checks, report and transactional "
            "ordering)."
        )
    seeds, fast = results.get("a", {}), results.get("e", {})
    if seeds.get("build_s") and fast.get("load_s"):
        recipe = seeds["build_s"] + seeds["load_s"]
        lines.append(
            f"Building the adapter with its weights, (e) vs (a) build + load: {recipe / fast['load_s']:.1f}x "
            f"faster ({fast['load_s']:.2f} s vs {recipe:.2f} s; target >= 8x); (e) peak above imports "
            f"{fast['peak_above_imports_mb'] / ckpt_mb:.2f}x the checkpoint (target <= 1.2x)."
        )
    touch = results.get("e", {}).get("touch_s")
    if touch is not None:
        lines.append(
            f"(e) materialises parameters from the mmap'd file (assign=True): reading every page of them "
            f"afterwards took {touch:.2f} s more (peak above imports includes it)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results here (.json for JSON, else markdown)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per path (median reported)")
    parser.add_argument("--paths", default="".join(PATHS), help="which paths to run (default: all)")
    parser.add_argument("--child", nargs=2, metavar=("PATH_ID", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        ckpt, ckpt_mb = _make_checkpoint(Path(tmp))
        results = {}
        for pid in PATHS:
            if pid not in args.paths:
                results[pid] = {"skipped": "not selected (--paths)"}
                continue
            results[pid] = _aggregate([_run_child(pid, ckpt) for _ in range(max(1, args.repeat))])
    table = _table(results, ckpt_mb, args.repeat)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            payload = {"checkpoint_mb": ckpt_mb, "repeat": args.repeat, "paths": PATHS, "results": results}
            args.out.write_text(json.dumps(payload, indent=2))
        else:
            args.out.write_text("## bench_load: ViT-B/16 checkpoint, 1000 -> 10 classes\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
