"""The ``transferkit finetune`` job: validate and build everything, then train, export and report.

Everything is validated -- data folder, classes, rules, device, backbone, init checkpoint, resume
checkpoint -- and built into one :class:`_Job` before the run folder is created, so bad input writes
nothing. Then the feature cache (linear probe), the epochs (:class:`~transferkit.train.Trainer`), and the
best weights exported as ``model.safetensors`` + ``labels.json`` with the confusion matrix. Under torchrun
only rank 0 prints and writes; rank 0 decides the run folder and broadcasts it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.commands.config import check_resume_unchanged, resolve_config, saved_args
from transferkit.commands.console import Console, setup_logging
from transferkit.commands.plan import (
    decide_run_dir,
    head_lr_scale,
    load_bundle,
    load_resume,
    loader_workers,
    make_lr_schedule,
    resolve_lr,
    resume_source,
    scan_data,
    scan_eval_data,
    setup_freeze,
)
from transferkit.errors import CheckpointError, CheckpointMismatchError, ConfigError
from transferkit.run.folder import RunFolder
from transferkit.run.spec import FinetuneSpec

__all__ = ["execute", "run_finetune", "Interrupted"]


logger = logging.getLogger("transferkit.cli")


def run_finetune(ns: argparse.Namespace) -> int:
    """``transferkit finetune``: layer and validate the configuration, join torchrun's group, run the job."""
    explicit = {k: v for k, v in vars(ns).items() if k not in ("func", "command", "argv")}
    return execute(explicit, list(ns.argv))[0]


def execute(explicit: dict[str, Any], argv: list[str]) -> tuple[int, Path | None]:
    """Run the job of the options given (``explicit``, over DEFAULTS / a resumed run's / ``config``'s).

    Returns the exit code and the run folder (``None`` when the job stopped before deciding it).
    """
    cfg = resolve_config(explicit)
    resume_path = None
    if cfg["resume"]:
        resume_path = resume_source(cfg)
        # the run's own args.yaml is the base; this command line (and --config) override it
        saved = saved_args(resume_path.parent)
        if not saved and not cfg["backbone"]:
            raise ConfigError(
                f"--resume {cfg['resume']}: {resume_path.parent} has no args.yaml, so it is not the folder of a "
                "transferkit run (or its args.yaml was removed); give the folder of an earlier run, or repeat "
                "that run's flags (--backbone, --data, --epochs, ...)"
            )
        cfg = resolve_config(explicit, saved)
        if not cfg["eval_only"]:
            check_resume_unchanged(cfg, saved, resume_path)
    cfg = FinetuneSpec.from_dict(cfg).to_dict()  # checks every value that needs no model or data

    from transferkit.distributed import cleanup_distributed, init_distributed

    dist_ctx, device = init_distributed(cfg["device"])
    log_handler, undo_logging = setup_logging(cfg["quiet"], dist_ctx.rank)
    bars = dist_ctx.is_main and not cfg["quiet"] and sys.stderr.isatty()
    console = Console(dist_ctx.rank, bars, log_handler)
    try:
        return _run(cfg, dist_ctx, device, console, resume_path, argv)
    finally:
        undo_logging()
        cleanup_distributed()


@dataclass
class _Job:
    """Everything a validated ``finetune`` run needs; built before anything is written."""

    cfg: dict[str, Any]
    dist: Any
    device: Any
    model: Any
    bundle: Any
    class_names: list[str]
    pretrained: bool
    weights_requested: Any
    aug: str
    use_cache: bool
    workers: int = 0
    freeze_schedule: Any = None
    freeze_desc: str = ""
    optimizer: Any = None
    lr_schedule: Any = None
    init_report: Any = None
    resume_path: Path | None = None
    resume_ckpt: Any = None
    best_source: Path | None = None
    start_epoch: int = 0
    run_dir: Path | None = None
    run_start: Any = None
    freeze_warnings: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    drop_path_fact: str = "off"
    facts: dict[str, Any] = field(default_factory=dict)
    saved_epoch: int = -1
    #: the EMA weights of an --eval-only --resume checkpoint, evaluated beside the model's
    eval_ema: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)


def _run(
    cfg: dict[str, Any],
    dist_ctx: Any,
    device: Any,
    console: Console,
    resume_path: Path | None,
    argv: list[str],
) -> tuple[int, Path | None]:
    job = _prepare(cfg, dist_ctx, device, resume_path)
    job.argv = argv
    return _run_job(job, console), job.run_dir


def _run_job(job: _Job, console: Console) -> int:
    cfg = job.cfg
    if _already_finished(job):
        console.validated()
        return _report_finished(job, console)
    job.model.to(job.device)
    trainer = None
    if not cfg["eval_only"]:
        # a resumed checkpoint is restored here: one that does not fit this model fails before any output
        trainer = _build_trainer(job, console)
    console.validated()
    if (
        not job.pretrained
        and job.weights_requested is not None
        and not cfg["eval_only"]
        and job.resume_ckpt is None
    ):
        # once, short: the library's own warning (the cache paths, the API spelling) is held back in _prepare;
        # what trains (everything, the head only, a thaw schedule) is the freeze line's to say
        console.warn(
            f"WARNING: no pretrained weights for {cfg['backbone']} could be loaded (--weights {cfg['weights']}: "
            "not cached, or none exist); training from RANDOM initialisation. --weights PATH uses a local file, "
            "--weights none silences this"
        )
    if not cfg["eval_only"]:
        for line in job.freeze_warnings:
            console.warn(f"WARNING: {line}")
    if job.init_report is not None:
        logger.info("init checkpoint %s:\n%s", cfg["init_checkpoint"], job.init_report)
    if trainer is None:
        return _eval_only(job, console)
    _train(job, trainer, console)
    return _finish(job, trainer, console)


def _already_finished(job: _Job) -> bool:
    """A resumed run whose last.pt holds its final epoch, and whose export was written: nothing to do."""
    if job.resume_ckpt is None or int(job.resume_ckpt["epoch"]) + 1 < job.cfg["epochs"]:
        return False
    # killed between the last epoch's checkpoint and the export: resuming finishes the export
    return RunFolder(job.run_dir).exported()


def _report_finished(job: _Job, console: Console) -> int:
    """Say that the resumed run is complete, with its best accuracy; write nothing."""
    cfg, extra = job.cfg, job.resume_ckpt.get("extra") or {}
    epochs = cfg["epochs"]
    best = job.run_dir / "best.pt"
    console.out(
        f"run {job.run_dir} is complete: it already trained its {_count(epochs, 'epoch')}; nothing to resume "
        f"(to train longer, start a new run with --init-checkpoint {best}; to re-check its accuracy: "
        f"--resume {best} --eval-only)"
    )
    best_epoch = int(extra.get("best_epoch", -1))
    if best_epoch >= 0:
        source = " of the model EMA" if extra.get("best_weights") == "ema" else ""
        console.out(
            f"best val accuracy {float(extra.get('best_acc', 0.0)):.2%}{source} (epoch {best_epoch + 1}/{epochs}); "
            f"run folder: {job.run_dir}"
        )
    return 0


def _count(n: int, noun: str) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _prepare(cfg: dict[str, Any], dist_ctx: Any, device: Any, resume_path: Path | None) -> _Job:
    """Validate every input and build model, data, schedules; decide the run folder. Writes nothing."""
    from transferkit.backbones import create_model
    from transferkit.distributed import seed_everything
    from transferkit.recipes import check_drop_path, drop_path_kwargs, resolve_aug
    from transferkit.rename import parse_rule

    seed_everything(cfg["seed"])
    rules = [parse_rule(r) for r in cfg["rule"]]
    eval_ckpt, split = None, None
    if cfg["eval_only"]:
        eval_ckpt = load_resume(resume_path) if resume_path is not None else None
        split, class_names = _scan_eval(cfg, eval_ckpt, resume_path)
    if split is None:
        split, class_names = scan_data(cfg)
    if cfg["classes"] is not None and cfg["classes"] != len(class_names):
        shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
        raise ConfigError(
            f"--classes {cfg['classes']} does not match the data: {cfg['data'] or 'the embedded digits'} has "
            f"{len(class_names)} classes ({shown}); drop --classes or fix it"
        )
    weights = None if str(cfg["weights"]).lower() in ("none", "null", "random") else cfg["weights"]
    recipe_kwargs = drop_path_kwargs(cfg["backbone"], cfg["drop_path"])
    with _held_back("transferkit.backbones.weights"):  # the console says it once, in the CLI's words
        model = create_model(
            cfg["backbone"],
            len(class_names),
            weights=weights,
            class_names=class_names,
            head=cfg["head"],
            align=cfg["align"],
            **recipe_kwargs,
        )
    _set_normalisation(model, cfg)
    drop_path_fact = check_drop_path(model, cfg["backbone"], cfg["drop_path"])
    pretrained = bool(getattr(model, "pretrained", False))
    init_report = None
    if cfg["init_checkpoint"]:
        from transferkit.partial import load_partial

        init_report = load_partial(
            model,
            cfg["init_checkpoint"],
            rules=rules,
            key=cfg["key"],
            salvage=cfg["salvage"],
            align=cfg["align"],
        )
        pretrained = True
    elif rules or cfg["salvage"]:
        flag = "--rule" if rules else "--salvage"
        raise ConfigError(f"{flag} applies to --init-checkpoint; give --init-checkpoint PATH or drop {flag}")
    # resolved here, once the weights are known; args.yaml records the value, so a resume keeps it
    cfg["lr"] = resolve_lr(cfg, pretrained)
    aug = resolve_aug(cfg["aug"], linear_probe=cfg["linear_probe"])
    freeze_sched, freeze_desc, opt_lr_decay = setup_freeze(cfg, model, pretrained)
    freeze_sched, freeze_desc, freeze_warnings = _check_freeze_plan(
        cfg, model, freeze_sched, freeze_desc, pretrained
    )
    bundle = load_bundle(cfg, split, model, aug)
    if not cfg["eval_only"]:
        _refuse_batchnorm_batches_of_one(cfg, model, freeze_sched, bundle.img_size)
    head = set(model.head_parameter_names())
    backbone_frozen = freeze_sched is None and not any(
        p.requires_grad for n, p in model.named_parameters() if n not in head
    )
    use_cache = (
        cfg["feature_cache"]
        if cfg["feature_cache"] is not None
        else (backbone_frozen and aug == "none" and not _mixing(cfg))
    )
    if use_cache and not backbone_frozen:
        raise ConfigError(
            "--feature-cache needs the whole backbone frozen for the whole run (--linear-probe)"
        )
    job = _Job(cfg, dist_ctx, device, model, bundle, class_names, pretrained, weights, aug, use_cache,
               loader_workers(cfg, bundle), freeze_sched, freeze_desc, init_report=init_report,
               resume_path=resume_path, freeze_warnings=freeze_warnings,
               drop_path_fact=drop_path_fact)  # fmt: skip
    if cfg["eval_only"]:
        if resume_path is not None:
            from transferkit.checkpoint import restore_checkpoint

            try:
                ckpt = restore_checkpoint(eval_ckpt, model=model, restore_rng=False)
            except CheckpointMismatchError as exc:
                raise _does_not_fit(job, exc) from None
            job.eval_ema = (ckpt.get("models") or {}).get("ema")
        return job
    job.resume_ckpt = load_resume(resume_path) if resume_path is not None else None
    _build_optimizer(job, opt_lr_decay)
    decided = None
    if dist_ctx.is_main:
        try:
            decided = decide_run_dir(cfg, resume_path)
        except ConfigError as exc:
            decided = exc
    decided = _broadcast(decided, dist_ctx)  # rank 0 decides (the folder name holds a timestamp)
    if isinstance(decided, ConfigError):
        raise decided
    job.run_dir = decided
    if job.resume_ckpt is not None:
        job.best_source = _best_source(job)
    return job


def _set_normalisation(model: Any, cfg: dict[str, Any]) -> None:
    """``--mean``/``--std``: the statistics the weights were trained with, over the backbone's defaults."""
    from transferkit.backbones.preprocess import adapt_data_config

    given = {k: tuple(cfg[k]) for k in ("mean", "std") if cfg[k] is not None}
    if not given:
        return
    config = dict(model.data_config)
    for key, values in given.items():
        # one value stands for every channel; adapt_data_config then fits the count to the network's
        config[key] = values if len(values) > 1 else values * len(config[key])
    model.data_config = adapt_data_config(config, model.in_chans)


def _check_freeze_plan(
    cfg: dict[str, Any], model: Any, sched: Any, desc: str, pretrained: bool
) -> tuple[Any, str, list[str]]:
    """What the freeze line may announce: ``(schedule, description, warnings)``.

    Whatever recipe built the plan, a thaw due at or after ``--epochs`` can never happen ("stem after epoch
    10" in a 4-epoch run): it is dropped from the schedule (the group stays frozen) and said once. A backbone
    frozen on random weights only feeds the head random features: said too.
    """
    warnings: list[str] = []
    epochs = cfg["epochs"]
    late = {e: g for e, g in (getattr(sched, "plan", None) or {}).items() if e >= epochs}
    if late:
        for e in late:
            del sched.plan[e]
        names = [g for e in sorted(late) for g in late[e]]
        warnings.append(
            f"{', '.join(names)} would thaw only after epoch {min(late)}, past the run's {_count(epochs, 'epoch')}: "
            "left frozen for the whole run (thaw earlier with --unfreeze-at/--unfreeze-every, or train longer)"
        )
        thaws = [f"{'+'.join(g)} after epoch {e}" if e else f"{'+'.join(g)} from the start"
                 for e, g in sorted(sched.plan.items())]  # fmt: skip
        if thaws:
            desc = (
                f"head only, then thaw {', '.join(thaws)}; frozen for the whole run: {', '.join(names)} "
                f"(lr x{sched.lr_decay:g} per level)"
            )
        else:  # nothing left to thaw: a fixed freeze
            sched, desc = (
                None,
                f"backbone frozen for the whole run: the head trains (never thawed: {', '.join(names)})",
            )
    head = set(model.head_parameter_names())
    frozen_at_start = [n for n, p in model.named_parameters() if n not in head and not p.requires_grad]
    if frozen_at_start and not pretrained:
        warnings.append(
            f"layers of {cfg['backbone']} start frozen on RANDOM weights ({_frozen_span(sched)}): they only feed "
            "the head random features, so accuracy stays low; use --freeze none, or pretrained weights "
            "(--weights PATH)"
        )
    return sched, desc, warnings


def _frozen_span(sched: Any) -> str:
    if sched is None:
        return "for the whole run"
    return "until their thaw" if sched.plan else "for the whole run"


@contextlib.contextmanager
def _held_back(logger_name: str) -> Iterator[None]:
    """Drop the WARNING records of one library logger for a while (the CLI prints its own line instead)."""

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno != logging.WARNING

    target = logging.getLogger(logger_name)
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


def _refuse_batchnorm_batches_of_one(
    cfg: dict[str, Any], model: Any, freeze_sched: Any, img_size: int
) -> None:
    """A BatchNorm layer that sees one value per channel cannot train (torch raises mid-epoch, after the run
    folder was made): with ``--batch-size 1``, one eval-mode forward (which changes nothing) finds such
    layers, and the run is refused before anything is written."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    from transferkit.freeze import is_bn_locked

    if cfg["batch_size"] != 1:
        return
    # a BN layer locked in eval (frozen) never uses batch statistics, unless a thaw schedule unlocks it
    watched = {m: n for n, m in model.named_modules() if isinstance(m, _BatchNorm)
               and (freeze_sched is not None or not is_bn_locked(m))}  # fmt: skip
    single: list[str] = []

    def record(module: Any, args: Any) -> None:
        x = args[0]
        if x.numel() // x.shape[1] == 1:
            single.append(watched[module])

    hooks = [m.register_forward_pre_hook(record) for m in watched]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, getattr(model, "in_chans", 3), img_size, img_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    if single:
        raise ConfigError(
            f"--batch-size 1: BatchNorm layer {single[0]} of {cfg['backbone']} would see one value per channel "
            f"at {img_size} px, and cannot train on that (its batch statistics are undefined); use --batch-size "
            "2 or more, or --linear-probe to keep it frozen"
        )


def _scan_eval(cfg: dict[str, Any], ckpt: Any, resume_path: Path | None) -> tuple[Any, list[str]]:
    """--eval-only's data: ``(None, [])`` for the run's own split (scanned as in training), else every image
    of --data labelled by the run's class names (a renamed folder is refused, never scored as another)."""
    saved = saved_args(resume_path.parent) if resume_path is not None else {}
    if cfg["data"] is None or (resume_path is not None and cfg["data"] == saved.get("data")):
        return None, []  # the run's own validation split: the same seed and --val-split reproduce it
    meta = (ckpt or {}).get("meta") or {}
    run_classes = meta.get("class_names")
    if ckpt is not None and not run_classes:
        raise CheckpointError(
            f"--resume {resume_path}: the checkpoint does not record its class names, so the labels of "
            f"--data {cfg['data']} cannot be checked against them; evaluate with the run's own data"
        )
    return scan_eval_data(cfg, list(run_classes) if run_classes else None)


def _best_source(job: _Job) -> Path | None:
    """Where a resumed run's best weights so far are (for the export if no later epoch beats them).

    Checked before anything is written: finding out after the last epoch would leave a trained run without
    its export.
    """
    extra = job.resume_ckpt.get("extra") or {}
    best_epoch = int(extra.get("best_epoch", -1))
    if best_epoch < 0:
        return None  # no epoch evaluated yet: the first one resumed becomes the best
    assert job.resume_path is not None and job.run_dir is not None
    if best_epoch == int(job.resume_ckpt["epoch"]):
        # the checkpoint resumed is the best epoch's (best.pt may be older, if the run was killed before
        # linking it, and last.pt is replaced by the next epoch)
        return job.resume_path
    for folder in (job.run_dir, job.resume_path.parent):
        if (folder / "best.pt").is_file():
            return folder / "best.pt"
    raise ConfigError(
        f"--resume {job.resume_path}: {job.resume_path.parent / 'best.pt'} is missing, and it holds the best "
        f"epoch's weights (epoch {best_epoch + 1}) that the export needs; put it back, or start a new run "
        f"from these weights with --init-checkpoint {job.resume_path}"
    )


def _build_optimizer(job: _Job, lr_decay: float | None) -> None:
    from transferkit.data import make_loaders
    from transferkit.optim import build_optimizer

    cfg = job.cfg
    # the loaders' length is known before any feature cache: same datasets, same sizes
    probe, _ = make_loaders(job.bundle, cfg["batch_size"], rank=job.dist.rank, world_size=job.dist.world_size)
    if len(probe) == 0:
        raise ConfigError(
            f"the training set ({len(job.bundle.train)} images) is smaller than one batch per process; "
            "lower --batch-size or add images"
        )
    job.optimizer = build_optimizer(
        job.model,
        cfg["optimizer"],
        lr=cfg["lr"],
        weight_decay=cfg["weight_decay"],
        lr_decay=lr_decay,
        head_lr_scale=head_lr_scale(cfg, job.model, job.pretrained),
        layer_decay=cfg["layer_decay"],
    )
    job.lr_schedule = make_lr_schedule(cfg, job.optimizer, len(probe))


def _build_trainer(job: _Job, console: Console) -> Any:
    """Feature cache, loaders, the Trainer, and a resumed checkpoint restored into it. Writes nothing."""
    from transferkit.data import cache_features, make_loaders
    from transferkit.distributed import amp_dtype_for
    from transferkit.recipes import MixupCutmix
    from transferkit.report import format_epoch
    from transferkit.train import Trainer

    cfg, model, device, dist_ctx, run_dir = job.cfg, job.model, job.device, job.dist, job.run_dir
    if job.use_cache:
        amp_dtype = amp_dtype_for(device) if cfg["amp"] else None
        job.bundle = cache_features(model, job.bundle, cfg["batch_size"], device, amp_dtype=amp_dtype,
                                    channels_last=cfg["channels_last"], workers=job.workers)  # fmt: skip
    train_loader, val_loader = make_loaders(
        job.bundle, cfg["batch_size"], workers=0 if job.use_cache else job.workers, seed=cfg["seed"],
        rank=dist_ctx.rank, world_size=dist_ctx.world_size, pin_memory=device.type == "cuda",
    )  # fmt: skip
    mixup = None
    if _mixing(cfg):
        # label smoothing goes into the soft targets (timm's Mixup), not into a second loss
        mixup = MixupCutmix(len(job.class_names), mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"],
                            prob=cfg["mixup_prob"], label_smoothing=cfg["label_smoothing"])  # fmt: skip
    job.facts = _resolved_facts(job, train_loader, mixup)

    def on_epoch_end(trainer: Trainer, event: Any) -> None:
        RunFolder(job.run_dir).save_epoch(trainer, event)
        job.saved_epoch = event.epoch
        console.out(format_epoch(event.row, cfg["epochs"]))
        if job.run_start is not None:  # last.pt holds this run's first epoch: the replaced run can go
            job.run_start.commit()
        if dist_ctx.is_main:
            RunFolder(run_dir).write_history(trainer.history)

    trainer = Trainer(
        model, job.optimizer, train_loader, val_loader, epochs=cfg["epochs"], num_classes=len(job.class_names),
        device=device, lr_schedule=job.lr_schedule, freeze_schedule=job.freeze_schedule, amp=cfg["amp"],
        channels_last=cfg["channels_last"], compile=cfg["compile"], dist=dist_ctx,
        inputs="features" if job.use_cache else "images", frozen_backbone=cfg["linear_probe"],
        meta={**getattr(model, "meta", {}), "img_size": job.bundle.img_size, "run": str(run_dir)},
        seed=cfg["seed"], label_smoothing=0.0 if mixup is not None else cfg["label_smoothing"], mixup=mixup,
        ema_decay=cfg["model_ema"], progress=console.progress, on_epoch_end=on_epoch_end,
    )  # fmt: skip
    job.start_epoch = _resume(job, trainer) if job.resume_ckpt is not None else 0
    job.saved_epoch = job.start_epoch - 1
    return trainer


def _train(job: _Job, trainer: Any, console: Console) -> None:
    """The run folder (only now, with every input checked and a resumed checkpoint restored), the epochs.

    A new run's start is undone if it fails or is interrupted before its first checkpoint (see
    :mod:`transferkit.commands.run_folder`): the folder is removed again, or an earlier run that
    ``--overwrite`` set aside is put back.
    """
    from transferkit.commands.run_folder import RunStart

    cfg, start = job.cfg, job.start_epoch
    assert job.run_dir is not None
    if job.dist.is_main:
        if job.resume_ckpt is None:
            job.run_start = RunStart(job.run_dir, overwrite=cfg["overwrite"], auto_named=not cfg["output"])
            job.run_start.begin()
            job.run_dir = job.run_start.run_dir  # renumbered if another run claimed the name meanwhile
        else:
            _create_run_dir(job.run_dir)
    job.run_dir = _broadcast(job.run_dir, job.dist)
    trainer.meta["run"] = str(job.run_dir)
    if job.dist.is_main and job.best_source is not None:
        RunFolder(job.run_dir).keep_best(job.best_source)
    try:
        _start_epochs(job, trainer, console, start)
    except BaseException:
        if job.run_start is not None:
            job.run_start.rollback()
        raise


def _start_epochs(job: _Job, trainer: Any, console: Console, start: int) -> None:
    cfg = job.cfg
    if job.dist.is_main:
        _write_args(job)
    if job.resume_ckpt is not None:
        if start < cfg["epochs"]:
            console.out(f"resumed {job.resume_path} at epoch {start + 1}/{cfg['epochs']}")
        else:  # the last epoch was saved but the export was not: write it now
            n = cfg["epochs"]
            console.out(
                f"resumed {job.resume_path}: epoch {n}/{n} was already trained; writing the missing export"
            )
    for line in _header(cfg, job.facts):
        console.out(line)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        raise Interrupted(_interrupted_message(job, trainer)) from None


def _write_args(job: _Job) -> None:
    """``args.yaml``: the flags as resolved, and what the run really used."""
    args_out = {k: v for k, v in job.cfg.items() if k != "config"}
    RunFolder(job.run_dir).write_args(args_out, job.facts)


def _mixing(cfg: dict[str, Any]) -> bool:
    return bool(cfg["mixup"] or cfg["cutmix"])


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during the epochs, with what was kept and how to continue."""


def _interrupted_message(job: _Job, trainer: Any) -> str:
    done = job.saved_epoch + 1  # epochs whose checkpoint reached last.pt, resumed ones included
    epochs = job.cfg["epochs"]
    if done == 0 or not (job.run_dir / "last.pt").is_file():
        kept = (
            f"the earlier run in {job.run_dir} is back as it was"
            if job.run_start is not None and job.run_start.aside is not None
            else "nothing was kept"
        )
        return f"interrupted before the first epoch finished; {kept}: run the command again to start over"
    return (
        f"interrupted: {job.run_dir / 'last.pt'} holds epoch {done}/{epochs}; continue with "
        f"transferkit finetune --resume {job.run_dir}"
    )


def _resume(job: _Job, trainer: Any) -> int:
    """Restore the resumed checkpoint into the trainer; a checkpoint of another model is a one-line error."""
    try:
        return int(trainer.resume(job.resume_ckpt))
    except CheckpointMismatchError as exc:
        raise _does_not_fit(job, exc) from None


def _does_not_fit(job: _Job, exc: CheckpointMismatchError) -> CheckpointError:
    """A restore error in the CLI's words, from its data: the library's hint speaks of its API."""
    return CheckpointError(
        f"--resume {job.resume_path}: the checkpoint does not fit this run ({job.cfg['backbone']}, "
        f"{len(job.class_names)} classes): cannot restore {exc.what}: {'; '.join(exc.problems)}. "
        "Nothing was restored.",
        hint="Was it written by a run of another backbone, class count or freeze plan? To start from its "
        f"weights instead: --init-checkpoint {job.resume_path}",
    )


def _create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # checked up front; this is a race or a file system that changed since
        raise ConfigError(
            f"--output {run_dir}: cannot create the run folder ({exc.strerror or exc})"
        ) from None


def _finish(job: _Job, trainer: Any, console: Console) -> int:
    """Best weights -> confusion matrix, model.safetensors + labels.json; the last line."""
    from transferkit.data import eval_transform_spec

    cfg, model, run_dir = job.cfg, job.model, job.run_dir
    folder = RunFolder(run_dir)
    _barrier(job.dist)  # rank 0 wrote best.pt
    # best.pt holds the model and its EMA: the export takes whichever validated better
    best_state = folder.read_best_weights(trainer.best_weights)
    model.load_state_dict(best_state)
    final = trainer.evaluate()
    if job.dist.is_main:
        folder.write_history(trainer.history)
        folder.write_confusion(final.confusion, job.class_names)
        info = {
            "backbone": cfg["backbone"],
            "img_size": job.bundle.img_size,
            "mean": list(model.data_config["mean"]),
            "std": list(model.data_config["std"]),
            "in_chans": getattr(model, "in_chans", 3),
            # the exact evaluation pipeline: resize, crop, interpolation, normalisation, channels
            "eval_transform": eval_transform_spec(
                model.data_config,
                job.bundle.img_size,
                in_chans=getattr(model, "in_chans", 3),
                source="digits" if job.bundle.source == "digits" else "folder",
            ),
            "epoch": trainer.best_epoch + 1,
            "val_acc": final.acc,
            "best_weights": trainer.best_weights,
            "data": job.facts["data"],
        }
        # the network's own key layout (no "backbone." prefix): the file loads into the plain torchvision/timm
        # network and into create_model(..., weights="model.safetensors")
        native = {k.removeprefix("backbone."): v for k, v in best_state.items()}
        info["layout"] = (
            "native: load into the plain network, or create_model(backbone, num_classes, weights=file)"
        )
        folder.export(native, job.class_names, info)
        if trainer.ema is not None:  # which weights best.pt's export took is known only now
            job.facts["best_weights"] = _best_weights_fact(trainer)
            _write_args(job)
    minutes = (time.perf_counter() - job.started) / 60
    source = " of the model EMA" if trainer.best_weights == "ema" else ""
    console.out(
        f"best val accuracy {trainer.best_acc:.2%}{source} (epoch {trainer.best_epoch + 1}/{cfg['epochs']}, "
        f"{minutes:.1f} min); run folder: {run_dir}"
    )
    # every rank leaves together: a gloo peer that exits while rank 0 is still writing can abort rank 0
    _barrier(job.dist)
    return 0


def _best_weights_fact(trainer: Any) -> str:
    """args.yaml's account of where best.pt's export came from, in a run with a model EMA."""
    if trainer.best_weights == "ema":
        return (
            f"ema: the model EMA of epoch {trainer.best_epoch + 1} validated best; model.safetensors holds it "
            "(best.pt: models.ema)"
        )
    return (
        f"model: the trained weights of epoch {trainer.best_epoch + 1} validated best (best.pt: models.model)"
    )


def _barrier(dist_ctx: Any) -> None:
    if dist_ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def _broadcast(obj: Any, dist_ctx: Any) -> Any:
    """Rank 0's value on every rank (run folder names hold a timestamp; errors must agree)."""
    if not dist_ctx.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _resolved_facts(job: _Job, train_loader: Any, mixup: Any = None) -> dict[str, Any]:
    """What the run really used, for args.yaml's ``resolved`` section."""
    import torch

    import transferkit
    from transferkit.recipes import describe_aug

    model, bundle = job.model, job.bundle
    return {
        "command": " ".join(["transferkit", "finetune", *job.argv]),
        "backbone": job.cfg["backbone"],
        "pretrained_weights_used": job.pretrained,
        # with --init-checkpoint the weights come from that file, whatever the backbone was built with
        "weights_source": (
            f"init checkpoint {job.cfg['init_checkpoint']}"
            if job.init_report is not None
            else str(getattr(model, "weights", "random"))
        ),
        "backbone_built_with": str(getattr(model, "weights", "random")),
        "init_checkpoint_tensors": len(job.init_report.loaded) if job.init_report is not None else None,
        # what became of the checkpoint's classifier (kept only for matching class names) and why
        "head": next(
            (n.removeprefix("head: ") for n in getattr(model, "notes", []) if n.startswith("head: ")),
            "fresh: no checkpoint head (random weights)" if not job.pretrained else None,
        ),
        "num_classes": len(bundle.class_names),
        "class_names": list(bundle.class_names),
        "data": bundle.source,
        "train_images": len(bundle.train),
        "val_images": len(bundle.val),
        "unreadable_images_skipped": len(bundle.skipped),
        "img_size": bundle.img_size,
        "mean": list(model.data_config["mean"]),
        "std": list(model.data_config["std"]),
        "aug": describe_aug(job.aug if not job.use_cache else "none"),
        "mixup": mixup.describe() if mixup is not None else "off",
        "model_ema": (
            f"decay {job.cfg['model_ema']:g} with timm's warmup (ModelEmaV3); validated every epoch; "
            "best.pt and model.safetensors take whichever of the model and its EMA validates better"
            if job.cfg["model_ema"] is not None
            else "off"
        ),
        "drop_path": job.drop_path_fact,
        "layer_decay": _layer_decay_fact(model, job.cfg["layer_decay"]),
        "freeze": job.freeze_desc,
        "trainable_parameters_at_start": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in model.parameters()),
        "feature_cache": job.use_cache,
        "device": str(job.device),
        "world_size": job.dist.world_size,
        "steps_per_epoch": len(train_loader),
        "transferkit_version": transferkit.__version__,
        "torch_version": torch.__version__,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _layer_decay_fact(model: Any, factor: float | None) -> str:
    if factor is None:
        return "off"
    from transferkit.optim import layer_decay_scales

    scales = layer_decay_scales(model, factor)
    kind = (
        "timm's fine layers (group_matcher)" if hasattr(model.backbone, "group_matcher") else "layer groups"
    )
    if factor == 1:
        return f"x1 per layer ({kind}): every layer at the head's rate"
    layers = len(set(scales.values()))
    return f"x{factor:g} per layer over {layers} layers ({kind}); the lowest at x{min(scales.values()):.3g}"


def _header(cfg: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    weights = "pretrained" if facts["pretrained_weights_used"] else "random init"
    return [
        f"{facts['backbone']} ({weights}), {facts['num_classes']} classes, data {facts['data']}: "
        f"{facts['train_images']} train / {facts['val_images']} val images at {facts['img_size']} px",
        f"{facts['freeze']}; {cfg['optimizer']} lr {cfg['lr']:g}, {cfg['scheduler']} schedule, "
        f"{_count(cfg['epochs'], 'epoch')} x {facts['steps_per_epoch']} steps on {facts['device']}"
        + (f" x {facts['world_size']} processes" if facts["world_size"] > 1 else "")
        + (", cached features" if facts["feature_cache"] else ""),
        *_recipe_line(cfg, facts),
    ]


def _recipe_line(cfg: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """The recipe options in use, in one line (none when every option is at its default)."""
    parts = [facts["aug"].split(" (")[0]] if facts["aug"] not in ("light", "none") else []
    mixes = [f"{k} {cfg[k]:g}" for k in ("mixup", "cutmix") if cfg[k]]
    if mixes:
        parts.append(" + ".join(mixes) + (f" (p={cfg['mixup_prob']:g})" if cfg["mixup_prob"] != 1 else ""))
    if cfg["model_ema"] is not None:
        parts.append(f"model EMA {cfg['model_ema']:g}")
    if cfg["drop_path"]:
        parts.append(f"drop-path {cfg['drop_path']:g}")
    if cfg["layer_decay"] is not None:
        parts.append(f"layer decay x{cfg['layer_decay']:g}")
    return [f"recipe: {', '.join(parts)}"] if parts else []


def _eval_only(job: _Job, console: Console) -> int:
    """Evaluate the weights (pretrained, --init-checkpoint or --resume) on the validation set; write nothing."""
    import torch

    from transferkit.data import make_loaders
    from transferkit.train import Trainer

    cfg, bundle = job.cfg, job.bundle
    if job.resume_path is None and not job.pretrained:
        console.warn(
            "WARNING: --eval-only with random weights; give --resume RUN, --init-checkpoint or --weights"
        )
    _, val_loader = make_loaders(bundle, cfg["batch_size"], workers=job.workers, rank=job.dist.rank,
                                 world_size=job.dist.world_size, pin_memory=job.device.type == "cuda")  # fmt: skip
    no_training = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    trainer = Trainer(job.model, no_training, val_loader, val_loader, epochs=1, num_classes=bundle.num_classes,
                      device=job.device, amp=cfg["amp"], channels_last=cfg["channels_last"], dist=job.dist)  # fmt: skip
    result = trainer.evaluate()
    what = "every image of" if not bundle.train else "the validation split of"
    console.out(
        f"val loss {result.loss:.4f}, val accuracy {result.acc:.2%} on {result.count} images ({what} "
        f"{bundle.source})"
    )
    if job.eval_ema is not None:  # the checkpoint of a run with --model-ema: its EMA competes too
        import copy

        averaged = copy.deepcopy(job.model)
        averaged.load_state_dict(job.eval_ema)
        ema = trainer.evaluate(model=averaged)
        console.out(f"model EMA: val loss {ema.loss:.4f}, val accuracy {ema.acc:.2%} on {ema.count} images")
    return 0
