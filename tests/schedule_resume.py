"""A tiny training run with gradual unfreezing and an LR schedule, stoppable and resumable.

Used by tests/test_schedule.py in-process and as a fresh process::

    python tests/schedule_resume.py --resume CKPT --out RESULT.pt [--epochs 4] [--kind cosine] [--optim adamw]
        [--global-rng-loader]

writes ``{"model": state_dict, "optimizer": state_dict, "order": [[sample ids per batch], ...],
"trainable": [names]}`` to RESULT.pt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # schedule_models, when run as a script

from schedule_models import TinyNet, tiny_data  # noqa: E402

from transferkit.optim import build_optimizer  # noqa: E402
from transferkit.schedule import GradualUnfreeze, LRSchedule  # noqa: E402

STEPS_PER_EPOCH = 6
SCHEDULE_KW = {
    "cosine": {"warmup_steps": 3},
    "onecycle": {},
    "step": {"milestones": [5, 14], "gamma": 0.5},
    "linear": {"warmup_steps": 2},
}


def run(
    *,
    epochs: int = 4,
    stop: int | None = None,
    save_to: Path | None = None,
    resume: Path | None = None,
    kind: str = "cosine",
    optim: str = "adamw",
    own_generator: bool = True,
    restore_rng: bool = True,
) -> dict:
    """Train ``epochs`` epochs (or up to ``stop``, then save); resume from ``resume`` when given.

    ``own_generator=False`` shuffles with the global torch RNG (a DataLoader without ``generator=``), so
    only the RNG state inside the checkpoint can give a resumed run the same data order;
    ``restore_rng=False`` resumes without it, as a checkpoint without RNG state would (Lightning's).
    """
    from transferkit.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same float reduction order in every process
    try:
        torch.manual_seed(0)
        model = TinyNet()
        unfreeze_sched = GradualUnfreeze(model, every=1, lr_decay=0.5)  # layer2@1, layer1@2, stem@3
        opt = build_optimizer(model, optim, lr=1e-2, weight_decay=1e-2)
        lr_sched = LRSchedule(opt, kind, total_steps=epochs * STEPS_PER_EPOCH, **SCHEDULE_KW[kind])
        x, y = tiny_data(8 * STEPS_PER_EPOCH).tensors
        data = torch.utils.data.TensorDataset(x, y, torch.arange(len(y)))
        gen = torch.Generator().manual_seed(1234) if own_generator else None
        loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, generator=gen)
        start = 0
        if resume is not None:
            ckpt = load_checkpoint(resume)
            unfreeze_sched.load_state_dict(ckpt["extra"]["freeze_schedule"], opt)
            restore_checkpoint(ckpt, model=model, optimizer=opt, restore_rng=restore_rng)
            lr_sched.load_state_dict(ckpt["extra"]["lr_schedule"])
            if gen is not None:
                gen.set_state(ckpt["extra"]["loader_rng"])
            start = ckpt["epoch"] + 1
        order = []
        for epoch in range(start, stop if stop is not None else epochs):
            unfreeze_sched.step(epoch, opt)
            model.train()
            for xb, yb, idx in loader:
                order.append(idx.tolist())
                opt.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
                lr_sched.step()
        if save_to is not None:
            save_checkpoint(
                save_to,
                model=model,
                optimizer=opt,
                epoch=epoch,
                extra={
                    "freeze_schedule": unfreeze_sched.state_dict(),
                    "lr_schedule": lr_sched.state_dict(),
                    **({"loader_rng": gen.get_state()} if gen is not None else {}),
                },
            )
        return {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "order": order,
            "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
        }
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resume", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--kind", default="cosine")
    parser.add_argument("--optim", default="adamw")
    parser.add_argument("--global-rng-loader", action="store_true", help="shuffle with the global RNG")
    args = parser.parse_args(argv)
    result = run(
        epochs=args.epochs,
        resume=args.resume,
        kind=args.kind,
        optim=args.optim,
        own_generator=not args.global_rng_loader,
    )
    torch.save(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
