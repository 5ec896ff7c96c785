"""A whole fine-tuning run: the job built, then trained and exported -- or evaluated, or found complete.

:func:`run` is what ``transferkit finetune`` and :func:`transferkit.finetune` both run, with the options
already layered (:func:`~transferkit.run.options.layered_options`) and the process group joined; its lines
go to a :class:`~transferkit.run.reporter.Reporter`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from transferkit.distributed import DistContext, all_reduce_sum, amp_dtype_for
from transferkit.run.facts import best_line, count
from transferkit.run.folder import RunFolder
from transferkit.run.job import Job, build_job
from transferkit.run.reporter import Reporter
from transferkit.run.training import finish, prepare_training, train

__all__ = ["run"]

logger = logging.getLogger(__name__)


def run(
    options: Mapping[str, Any],
    *,
    resume_path: Path | None,
    dist: DistContext,
    device: Any,
    reporter: Reporter,
    command: str,
) -> Path | None:
    """Build and run the job of ``options``; returns the run folder (``None`` for ``eval_only``).

    Raises:
        TransferkitError: bad input, before anything is written.
        RunInterrupted: Ctrl-C during the epochs.
    """
    started = time.perf_counter()
    job = build_job(options, resume_path=resume_path, dist=dist, device=device, command=command)
    if _already_finished(job):
        reporter.validated()
        _report_finished(job, reporter)
        return job.run_dir
    job.model.to(job.device)
    # a resumed checkpoint is restored here: one that does not fit this model fails before any output
    training = None if job.options["eval_only"] else prepare_training(job, reporter, started)
    reporter.validated()
    if training is None:
        _log_init_report(job)
        _evaluate_only(job, reporter)
        return None
    _warn(job, reporter)
    _log_init_report(job)
    folder = train(job, training, reporter)
    finish(job, training, folder, reporter)
    return folder.path


def _already_finished(job: Job) -> bool:
    """A resumed run whose last.pt holds its final epoch, and whose export was written: nothing to do."""
    if job.resumed is None or int(job.resumed.ckpt["epoch"]) + 1 < job.options["epochs"]:
        return False
    # killed between the last epoch's checkpoint and the export: resuming finishes the export
    return job.run_dir is not None and RunFolder(job.run_dir).exported()


def _report_finished(job: Job, reporter: Reporter) -> None:
    """Say that the resumed run is complete, with its best accuracy; write nothing."""
    assert job.resumed is not None
    extra, epochs, run_dir = job.resumed.ckpt.get("extra") or {}, job.options["epochs"], job.run_dir
    best = RunFolder(run_dir).best
    reporter.out(
        f"run {run_dir} is complete: it already trained its {count(epochs, 'epoch')}; nothing to resume "
        f"(to train longer, start a new run with `init_checkpoint`={best}; to re-check its accuracy: "
        f"`resume`={best} `eval_only`=True)"
    )
    best_epoch = int(extra.get("best_epoch", -1))
    if best_epoch >= 0:
        acc, weights = float(extra.get("best_acc", 0.0)), str(extra.get("best_weights", "model"))
        reporter.out(best_line(acc, weights, best_epoch, epochs, run_dir))


def _warn(job: Job, reporter: Reporter) -> None:
    """Once, short: training from random weights that were meant to be pretrained, and the freeze plan's
    warnings (what trains -- everything, the head only, a thaw schedule -- is the freeze line's to say)."""
    weights, options = job.weights, job.options
    if not weights.pretrained and weights.requested is not None and job.resumed is None:
        # the library's own warning (the cache paths, the API spelling) was held back while building
        reporter.warn(
            f"WARNING: no pretrained weights for {options['backbone']} could be loaded (`weights`={options['weights']}: "
            "not cached, or none exist); training from RANDOM initialisation. `weights`=PATH uses a local file, "
            "`weights`=none silences this"
        )
    for line in job.freeze.warnings:
        reporter.warn(f"WARNING: {line}")


def _log_init_report(job: Job) -> None:
    if job.weights.init_report is not None:
        logger.info("init checkpoint %s:\n%s", job.options["init_checkpoint"], job.weights.init_report)


def _evaluate_only(job: Job, reporter: Reporter) -> None:
    """Evaluate the weights (pretrained, ``init_checkpoint`` or ``resume``) on the validation set; and the
    model EMA the resumed checkpoint holds, if any. Writes nothing."""
    import torch

    from transferkit.data import make_loaders
    from transferkit.evaluation import evaluate

    options, bundle, dist, device = job.options, job.data.bundle, job.dist, job.device
    if job.resume_path is None and not job.weights.pretrained:
        reporter.warn(
            "WARNING: `eval_only`=True with random weights; give `resume`=RUN, `init_checkpoint` or `weights`"
        )
    _, val_loader = make_loaders(bundle, options["batch_size"], workers=job.data.workers, rank=dist.rank,
                                 world_size=dist.world_size, pin_memory=device.type == "cuda")  # fmt: skip
    model = job.model
    if options["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    score = partial(evaluate, loader=val_loader, num_classes=bundle.num_classes, device=device,
                    amp_dtype=amp_dtype_for(device) if options["amp"] else None,
                    channels_last=options["channels_last"],
                    reduce=partial(all_reduce_sum, ctx=dist) if dist.enabled else None)  # fmt: skip
    result = score(model)
    what = "every image of" if not bundle.train else "the validation split of"
    reporter.out(
        f"val loss {result.loss:.4f}, val accuracy {result.acc:.2%} on {result.count} images ({what} "
        f"{bundle.source})"
    )
    if job.eval_ema is not None:  # the checkpoint of a run with `model_ema`: its EMA competes too
        averaged = copy.deepcopy(model)
        averaged.load_state_dict(job.eval_ema)
        ema = score(averaged)
        reporter.out(f"model EMA: val loss {ema.loss:.4f}, val accuracy {ema.acc:.2%} on {ema.count} images")
