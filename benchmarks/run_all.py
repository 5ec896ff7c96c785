"""Run every benchmark in its own process and rewrite ``benchmarks/RESULTS.md`` (``make bench``).

Each benchmark writes its markdown section to a temporary file (``--out``); this script adds the machine
(CPU model, cores, memory, torch/torchvision/timm versions, GPU if any), the exact commands and their wall
times, and replaces RESULTS.md atomically. A benchmark that fails is reported as failed, with the tail of
its error output, instead of stopping the others.

Run: ``python benchmarks/run_all.py [--only bench_load,bench_finetune] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHMARKS = ("bench_load", "bench_finetune", "bench_predict")
TRANSFER = HERE / "RESULTS_transfer.md"  # written by `make bench-transfer` (bench_transfer.py)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return "unknown"


def machine() -> list[str]:
    """Markdown lines describing this machine and the software versions."""
    import torch
    import torchvision

    try:
        import timm

        timm_v = timm.__version__
    except ImportError:
        timm_v = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- CPU: {_cpu_model()}, {affinity} usable core(s) ({os.cpu_count()} logical), memory {_memory_gib()}",
        f"- GPU: {gpu}",
        f"- Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} intra-op "
        f"threads), torchvision {torchvision.__version__}, timm {timm_v}, {platform.platform()}",
        f"- Load average when started: {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
    ]


def run(name: str, out_dir: Path) -> tuple[str, str, float]:
    """Run one benchmark; returns (command, markdown section, seconds)."""
    out = out_dir / f"{name}.md"
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    shown = f"python benchmarks/{name}.py"
    print(f"running {shown} ...", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        section = f"## {name}: FAILED (exit {proc.returncode})\n\n```\n{tail}\n```"
    else:
        section = out.read_text().strip()
    print(f"  done in {seconds:.0f} s", flush=True)
    return shown, section, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmark names")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="the results file to rewrite")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; expected some of {', '.join(BENCHMARKS)}")
    header = machine()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="transferkit_bench_") as tmp:
        results = [run(name, Path(tmp)) for name in names]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`python benchmarks/run_all.py`) on {started}. Re-run to refresh; numbers from",
        "a shared or busy machine are noisy, so compare figures from one run with each other.",
        "",
        "## Machine",
        "",
        *header,
        "",
        "## Commands",
        "",
        *[f"- `{cmd}` ({seconds:.0f} s)" for cmd, _, seconds in results],
        *(
            [
                "- `python benchmarks/bench_transfer.py` (`make bench-transfer`, run on its own: its section below is kept)"
            ]
            if TRANSFER.is_file()
            else []
        ),
        "",
    ]
    for _, section, _ in results:
        lines += [section, ""]
    if TRANSFER.is_file():  # 40 minutes, so `make bench-transfer` runs it on its own; its section is kept
        lines += [TRANSFER.read_text().strip(), ""]
    text = "\n".join(lines)
    tmp_out = args.out.with_name(f".{args.out.name}.tmp")
    tmp_out.write_text(text)
    os.replace(tmp_out, args.out)  # a failed or interrupted run leaves the old results whole
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    print("command line:", shlex.join([sys.executable, *sys.argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
