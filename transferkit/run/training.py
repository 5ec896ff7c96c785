"""The epochs of a run: the Trainer built (and a resumed checkpoint restored), the run folder started,
each epoch written through :class:`~transferkit.run.RunFolder`, then the best weights exported.

The run folder is created only once every input was checked and a resumed checkpoint restored. A new
run's start is undone if it fails or is interrupted before its first checkpoint (see
:mod:`transferkit.run.start`). Only rank 0 writes; every rank evaluates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit.distributed import barrier, broadcast
from transferkit.report import format_epoch
from transferkit.run.facts import best_line, best_weights_fact, export_info, resolved_facts, summary_lines
from transferkit.run.folder import RunFolder
from transferkit.run.job import Job
from transferkit.run.reporter import Reporter
from transferkit.run.resume import restore_label
from transferkit.run.start import RunStart, create_run_dir
from transferkit.train import EpochEnd, Trainer

__all__ = ["RunInterrupted", "Training", "prepare_training", "train", "finish"]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during the epochs, with what the run folder kept.

    Attributes:
        run_dir: the run folder.
        epochs: the run's epochs.
        saved: the epochs whose checkpoint reached ``last.pt`` (resumed ones included); 0: none.
        restored: an earlier run that ``overwrite`` set aside is put back as it was.
    """

    def __init__(self, run_dir: Path, epochs: int, saved: int, restored: bool) -> None:
        super().__init__(f"interrupted: {run_dir} keeps {saved}/{epochs} epochs")
        self.run_dir, self.epochs, self.saved, self.restored = run_dir, epochs, saved, restored


@dataclass(frozen=True)
class Training:
    """A training job's Trainer (a resumed checkpoint already restored), the data it trains on (cached
    features for a linear probe), ``args.yaml``'s resolved facts, and when the job started."""

    trainer: Trainer
    bundle: Any
    facts: dict[str, Any]
    started: float


def prepare_training(job: Job, reporter: Reporter, started: float) -> Training:
    """Feature cache, loaders, the Trainer, and a resumed checkpoint restored into it. Writes nothing."""
    from transferkit.data import cache_features, make_loaders
    from transferkit.distributed import amp_dtype_for
    from transferkit.recipes import MixupCutmix

    options, model, device, dist, data = job.options, job.model, job.device, job.dist, job.data
    bundle = data.bundle
    if data.use_cache:
        amp_dtype = amp_dtype_for(device) if options["amp"] else None
        bundle = cache_features(model, bundle, options["batch_size"], device, amp_dtype=amp_dtype,
                                channels_last=options["channels_last"], workers=data.workers)  # fmt: skip
    train_loader, val_loader = make_loaders(
        bundle, options["batch_size"], workers=0 if data.use_cache else data.workers, seed=options["seed"],
        rank=dist.rank, world_size=dist.world_size, pin_memory=device.type == "cuda",
    )  # fmt: skip
    mixup = None
    if options["mixup"] or options["cutmix"]:
        # label smoothing goes into the soft targets (timm's Mixup), not into a second loss
        mixup = MixupCutmix(len(data.class_names), mixup_alpha=options["mixup"], cutmix_alpha=options["cutmix"],
                            prob=options["mixup_prob"], label_smoothing=options["label_smoothing"])  # fmt: skip
    trainer = Trainer(
        model, job.optimizer, train_loader, val_loader, epochs=options["epochs"],
        num_classes=len(data.class_names), device=device, lr_schedule=job.lr_schedule,
        freeze_schedule=job.freeze.schedule, amp=options["amp"], channels_last=options["channels_last"],
        compile=options["compile"], dist=dist, inputs="features" if data.use_cache else "images",
        frozen_backbone=options["linear_probe"],
        meta={**getattr(model, "meta", {}), "img_size": bundle.img_size, "run": str(job.run_dir)},
        seed=options["seed"], label_smoothing=0.0 if mixup is not None else options["label_smoothing"],
        mixup=mixup, ema_decay=options["model_ema"], progress=reporter.progress,
    )  # fmt: skip
    if job.resumed is not None:
        # a checkpoint that does not fit this model fails here, before any output
        label, hint = restore_label(job.resumed.path, options["backbone"], len(data.class_names))
        trainer.resume(job.resumed.ckpt, label=label, hint=hint)
    return Training(trainer, bundle, resolved_facts(job, bundle, len(train_loader), mixup), started)


class _EpochWriter:
    """The run's ``on_epoch_end``: the checkpoints, the epoch's line, the replaced run's files dropped once
    the new run has a checkpoint, the metrics and curves so far."""

    def __init__(self, folder: RunFolder, start: RunStart | None, reporter: Reporter, job: Job, saved: int):
        self.folder, self.start, self.reporter, self.job = folder, start, reporter, job
        #: the last epoch (from 0) whose checkpoint is in last.pt; -1: none
        self.saved = saved

    def __call__(self, trainer: Trainer, event: EpochEnd) -> None:
        self.folder.save_epoch(trainer, event)
        self.saved = event.epoch
        self.reporter.out(format_epoch(event.row, self.job.options["epochs"]))
        if self.start is not None:  # last.pt holds this run's first epoch: the replaced run can go
            self.start.commit()
        if self.job.dist.is_main:
            self.folder.write_history(trainer.history)


def train(job: Job, training: Training, reporter: Reporter) -> RunFolder:
    """The run folder (only now), ``args.yaml``, the opening lines and the epochs; returns the folder.

    Raises:
        RunInterrupted: Ctrl-C during the epochs (the folder keeps what ``last.pt`` holds).
    """
    options, trainer = job.options, training.trainer
    start, folder = _open_folder(job)
    trainer.meta["run"] = str(folder.path)
    writer = _EpochWriter(folder, start, reporter, job, trainer.start_epoch - 1)
    trainer.on_epoch_end = writer
    try:
        if job.dist.is_main:
            folder.write_args(_args(options), training.facts)
        _say_resumed(job, trainer.start_epoch, reporter)
        for line in summary_lines(options, training.facts):
            reporter.out(line)
        try:
            trainer.fit()
        except KeyboardInterrupt:
            saved = writer.saved + 1 if folder.last.is_file() else 0
            restored = start is not None and start.aside is not None
            raise RunInterrupted(folder.path, options["epochs"], saved, restored) from None
    except BaseException:
        if start is not None:
            start.rollback()
        raise
    return folder


def _open_folder(job: Job) -> tuple[RunStart | None, RunFolder]:
    """Rank 0 claims a new run's folder (:class:`RunStart`) or creates a resumed one's, and gives it the
    best epoch so far as ``best.pt``; every rank gets the folder (renumbered if another run took the name)."""
    assert job.run_dir is not None
    start, run_dir = None, job.run_dir
    if job.dist.is_main:
        if job.resumed is None:
            start = RunStart(
                run_dir, overwrite=job.options["overwrite"], auto_named=not job.options["output"]
            )
            start.begin()
            run_dir = start.run_dir
        else:
            create_run_dir(run_dir)
            if job.resumed.best_source is not None:
                RunFolder(run_dir).keep_best(job.resumed.best_source)
    return start, RunFolder(broadcast(run_dir, job.dist))


def _args(options: dict[str, Any]) -> dict[str, Any]:
    """``args.yaml``'s ``args``: the options as resolved, without the ``config`` file they came through."""
    return {k: v for k, v in options.items() if k != "config"}


def _say_resumed(job: Job, start: int, reporter: Reporter) -> None:
    if job.resumed is None:
        return
    epochs = job.options["epochs"]
    if start < epochs:
        reporter.out(f"resumed {job.resumed.path} at epoch {start + 1}/{epochs}")
    else:  # the last epoch was saved but the export was not: write it now
        reporter.out(
            f"resumed {job.resumed.path}: epoch {epochs}/{epochs} was already trained; writing the missing export"
        )


def finish(job: Job, training: Training, folder: RunFolder, reporter: Reporter) -> None:
    """The best weights (``best.pt``: the model's, or its EMA's when that validated better) evaluated once
    more, then the confusion matrix, ``model.safetensors`` + ``labels.json``, and the last line."""
    trainer, dist, class_names = training.trainer, job.dist, job.data.class_names
    barrier(dist)  # rank 0 wrote best.pt
    best = folder.read_best_weights(trainer.best_weights)
    job.model.load_state_dict(best)
    final = trainer.evaluate()
    if dist.is_main:
        folder.write_history(trainer.history)
        folder.write_confusion(final.confusion, class_names)
        native = {k.removeprefix("backbone."): v for k, v in best.items()}
        info = export_info(job, training.bundle, trainer.best_epoch, final.acc, trainer.best_weights)
        folder.export(native, class_names, info)
        if trainer.ema is not None:  # which weights best.pt's export took is known only now
            facts = {
                **training.facts,
                "best_weights": best_weights_fact(trainer.best_weights, trainer.best_epoch),
            }
            folder.write_args(_args(job.options), facts)
    minutes = (time.perf_counter() - training.started) / 60
    epochs = job.options["epochs"]
    reporter.out(
        best_line(trainer.best_acc, trainer.best_weights, trainer.best_epoch, epochs, folder.path, minutes)
    )
    # every rank leaves together: a gloo peer that exits while rank 0 is still writing can abort rank 0
    barrier(dist)
