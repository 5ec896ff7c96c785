"""A fine-tuning job, validated and built in one place before anything is written.

:func:`build_job` checks every input -- data, classes, rules, backbone and weights, init checkpoint, the
freeze plan, resume checkpoint, run folder -- and builds model, data, plan, optimizer and schedules into
one frozen :class:`Job`, so bad input writes nothing. The steps run in the order each needs the one
before: the data's class names size the model, the weights decide the learning rate, the plan decides
the feature cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transferkit.distributed import DistContext, broadcast, seed_everything
from transferkit.errors import ConfigError
from transferkit.run.data_plan import (
    check_classes,
    load_bundle,
    loader_workers,
    refuse_batchnorm_batches_of_one,
    scan_data,
    scan_eval_data,
    set_normalisation,
    use_feature_cache,
)
from transferkit.run.plan import FreezePlan, build_training, plan_freeze, resolve_lr
from transferkit.run.resume import best_source, load_resume, restore_label
from transferkit.run.start import decide_run_dir

__all__ = ["Job", "JobData", "JobWeights", "Resumed", "build_job"]


@dataclass(frozen=True)
class JobWeights:
    """Where the model's weights came from.

    Attributes:
        pretrained: the model starts from trained weights (``weights`` or ``init_checkpoint``).
        requested: the ``weights`` option, ``None`` when it asked for random weights.
        init_report: the :class:`~transferkit.LoadReport` of ``init_checkpoint``, if one was given.
        drop_path_fact: what ``drop_path`` did, for ``args.yaml``.
    """

    pretrained: bool
    requested: str | None
    init_report: Any = None
    drop_path_fact: str = "off"


@dataclass(frozen=True)
class JobData:
    """The data: the bundle with its transforms, its class names, the resolved ``aug`` level, whether the
    head trains on cached features, and the loader worker count."""

    bundle: Any
    class_names: list[str]
    aug: str
    use_cache: bool
    workers: int


@dataclass(frozen=True)
class Resumed:
    """A run continued: the checkpoint ``resume`` named, as read, and the file holding its best epoch so far
    (``None`` before any epoch was evaluated)."""

    path: Path
    ckpt: dict[str, Any]
    best_source: Path | None


@dataclass(frozen=True)
class Job:
    """Everything a validated run needs, built before anything is written.

    ``options`` are the run's options with ``lr`` resolved (``args.yaml`` records them, so a resume keeps
    them). A training job has ``optimizer``, ``lr_schedule`` and ``run_dir`` (rank 0's choice, the same on
    every rank), and ``resumed`` when it continues a run; an ``eval_only`` job has the weights of the
    checkpoint it evaluates already in ``model``, and their EMA in ``eval_ema`` when the run kept one.
    """

    options: dict[str, Any]
    command: str
    dist: DistContext
    device: Any
    model: Any
    weights: JobWeights
    data: JobData
    freeze: FreezePlan
    resume_path: Path | None = None
    resumed: Resumed | None = None
    optimizer: Any = None
    lr_schedule: Any = None
    run_dir: Path | None = None
    eval_ema: dict[str, Any] | None = None


def build_job(
    options: Mapping[str, Any], *, resume_path: Path | None, dist: DistContext, device: Any, command: str
) -> Job:
    """Validate every input and build the job; writes nothing.

    Args:
        options: every option of the run (:func:`~transferkit.run.options.layered_options`).
        resume_path: the checkpoint ``resume`` names, if any.
        dist, device: this process's place in the run and its device.
        command: how the run was started, for ``args.yaml``.

    Raises:
        TransferkitError: the first input that cannot work (``param`` names its option).
    """
    from transferkit.recipes import resolve_aug
    from transferkit.rename import parse_rule

    seed_everything(options["seed"])
    rules = [parse_rule(r) for r in options["rule"]]
    eval_ckpt = load_resume(resume_path) if options["eval_only"] and resume_path is not None else None
    split, class_names = _scan(options, eval_ckpt, resume_path)
    check_classes(options, class_names)
    model, weights = _build_model(options, class_names, rules)
    options = {
        **options,
        "lr": resolve_lr(options, weights.pretrained),
    }  # resolved once the weights are known
    aug = resolve_aug(options["aug"], linear_probe=options["linear_probe"])
    freeze = plan_freeze(options, model, weights.pretrained)
    bundle = load_bundle(options, split, model, aug)
    thaws = freeze.schedule is not None
    if not options["eval_only"]:
        refuse_batchnorm_batches_of_one(options, model, thaws, bundle.img_size)
    use_cache = use_feature_cache(options, model, thaws, aug)
    data = JobData(bundle, class_names, aug, use_cache, loader_workers(options, bundle))
    job = Job(options, command, dist, device, model, weights, data, freeze, resume_path)
    return _eval_only(job, eval_ckpt) if options["eval_only"] else _training(job)


def _scan(
    options: Mapping[str, Any], eval_ckpt: Mapping[str, Any] | None, resume_path: Path | None
) -> tuple[Any, list[str]]:
    """The data source, scanned: ``eval_only``'s own folder if it names one, else the training data's."""
    if options["eval_only"]:
        from transferkit.run.options import saved_args

        saved = saved_args(resume_path.parent) if resume_path is not None else {}
        scanned = scan_eval_data(options, eval_ckpt, resume_path, saved.get("data"))
        if scanned is not None:
            return scanned
    return scan_data(options)


def _build_model(
    options: Mapping[str, Any], class_names: list[str], rules: list[Any]
) -> tuple[Any, JobWeights]:
    """The backbone with its new head, its weights (``weights``, then ``init_checkpoint``) and recipe."""
    from transferkit.backbones import create_model
    from transferkit.recipes import check_drop_path, drop_path_kwargs

    backbone = options["backbone"]
    _check_init_checkpoint(options["init_checkpoint"])
    requested = None if str(options["weights"]).lower() in ("none", "null", "random") else options["weights"]
    recipe = drop_path_kwargs(backbone, options["drop_path"])
    with _held_back("transferkit.backbones.weights"):  # the run says it once, in its own words
        model = create_model(backbone, len(class_names), weights=requested, class_names=class_names,
                             head=options["head"], align=options["align"], **recipe)  # fmt: skip
    set_normalisation(model, options)
    drop_path_fact = check_drop_path(model, backbone, options["drop_path"])
    pretrained = bool(getattr(model, "pretrained", False))
    if options["init_checkpoint"]:
        from transferkit.partial import load_partial

        report = load_partial(model, options["init_checkpoint"], rules=rules, key=options["key"],
                              salvage=options["salvage"], align=options["align"])  # fmt: skip
        return model, JobWeights(True, requested, report, drop_path_fact)
    if rules or options["salvage"]:
        name = "rule" if rules else "salvage"
        raise ConfigError(
            f"`{name}` applies to `init_checkpoint`; give `init_checkpoint`=PATH or drop `{name}`", param=name
        )
    return model, JobWeights(pretrained, requested, None, drop_path_fact)


def _check_init_checkpoint(path: str | None) -> None:
    """Refuse a missing ``init_checkpoint`` by its name, before the backbone is built."""
    if not path or Path(str(path)).expanduser().is_file():
        return
    what = "is a folder" if Path(str(path)).expanduser().is_dir() else "does not exist"
    raise ConfigError(f"`init_checkpoint` {path} {what}; give a checkpoint file (a run's best.pt, a .pth, a "
                      ".safetensors)", param="init_checkpoint")  # fmt: skip


@contextlib.contextmanager
def _held_back(logger_name: str) -> Iterator[None]:
    """Drop the WARNING records of one library logger for a while (the run words its own line instead)."""

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno != logging.WARNING

    target = logging.getLogger(logger_name)
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


def _eval_only(job: Job, ckpt: Mapping[str, Any] | None) -> Job:
    """An ``eval_only`` job: the weights of the checkpoint ``resume`` names restored into the model."""
    if ckpt is None:
        return job
    from transferkit.checkpoint import restore_checkpoint

    assert job.resume_path is not None
    label, hint = restore_label(job.resume_path, job.options["backbone"], len(job.data.class_names))
    restored = restore_checkpoint(ckpt, model=job.model, restore_rng=False, label=label, hint=hint)
    return replace(job, eval_ema=(restored.get("models") or {}).get("ema"))


def _training(job: Job) -> Job:
    """A training job: the resumed checkpoint read, optimizer and LR schedule, the run folder decided."""
    ckpt = load_resume(job.resume_path) if job.resume_path is not None else None
    optimizer, lr_schedule = build_training(
        job.options, job.model, job.freeze, job.weights.pretrained, _steps_per_epoch(job)
    )
    run_dir = _decide_run_dir(job)
    resumed = None
    if ckpt is not None:
        assert job.resume_path is not None
        resumed = Resumed(job.resume_path, ckpt, best_source(ckpt, job.resume_path, run_dir))
    return replace(job, optimizer=optimizer, lr_schedule=lr_schedule, run_dir=run_dir, resumed=resumed)


def _steps_per_epoch(job: Job) -> int:
    """Optimizer steps an epoch (the loaders' length is known before any feature cache: same datasets)."""
    from transferkit.data import make_loaders

    bundle, batch_size = job.data.bundle, job.options["batch_size"]
    probe, _ = make_loaders(bundle, batch_size, rank=job.dist.rank, world_size=job.dist.world_size)
    if len(probe) == 0:
        raise ConfigError(
            f"the training set ({len(bundle.train)} images) is smaller than one batch per process; "
            "lower `batch_size` or add images",
            param="batch_size",
        )
    return len(probe)


def _decide_run_dir(job: Job) -> Path:
    """Rank 0 decides the run folder (its name holds a timestamp) and every rank gets its choice or error."""
    decided: Path | ConfigError | None = None
    if job.dist.is_main:
        try:
            decided = decide_run_dir(job.options, job.resume_path)
        except ConfigError as exc:
            decided = exc
    decided = broadcast(decided, job.dist)
    if isinstance(decided, ConfigError):
        raise decided
    assert decided is not None
    return decided
