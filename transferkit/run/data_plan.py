"""The data of a run: the source scanned and checked up front, the bundle with the backbone's transforms,
the loader workers, the feature-cache decision and the checks that need model and data together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transferkit.errors import CheckpointError, ConfigError

__all__ = [
    "DIGITS_IMG_SIZE",
    "scan_data",
    "check_data_folder",
    "scan_eval_data",
    "check_classes",
    "load_bundle",
    "loader_workers",
    "use_feature_cache",
    "set_normalisation",
    "refuse_batchnorm_batches_of_one",
]

logger = logging.getLogger(__name__)

DIGITS_IMG_SIZE = 32  # 8x8 scans shown at 32 px: enough for a ResNet stem, cheap on a CPU


def scan_data(options: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """Scan/check the data source before anything heavy: ``(folder split or None, class names)``."""
    from transferkit.data import split_image_folder

    if options["data"] is None:
        return None, [str(i) for i in range(10)]
    check_data_folder(options["data"])
    split = split_image_folder(
        options["data"], val_split=options["val_split"], seed=options["seed"], strict=options["strict_data"]
    )
    return split, split.class_names


def check_data_folder(data: Any) -> None:
    """Refuse a ``data`` that is not a folder by its option's name (the scanners name only the path)."""
    root = Path(str(data)).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise ConfigError(f"`data` {data} {what}; give a folder of class sub-folders (DIR/<class>/*.png) or "
                          "DIR/train/<class> + DIR/val/<class>", param="data")  # fmt: skip


def scan_eval_data(
    options: Mapping[str, Any], ckpt: Mapping[str, Any] | None, resume_path: Path | None, saved_data: Any
) -> tuple[Any, list[str]] | None:
    """``eval_only``'s data: ``None`` for the run's own split (scanned as in training), else every image of
    ``data`` labelled by the run's class names (a renamed folder is refused, never scored as another)."""
    from transferkit.data import scan_eval_folder

    if options["data"] is None or (resume_path is not None and options["data"] == saved_data):
        return None  # the run's own validation split: the same seed and `val_split` reproduce it
    run_classes = ((ckpt or {}).get("meta") or {}).get("class_names")
    if ckpt is not None and not run_classes:
        raise CheckpointError(
            f"`resume`={resume_path}: the checkpoint does not record its class names, so the labels of "
            f"`data`={options['data']} cannot be checked against them; evaluate with the run's own data",
            param="data",
        )
    check_data_folder(options["data"])
    # no run to compare with (`init_checkpoint`, `weights`): the folder's own names, sorted
    split = scan_eval_folder(
        options["data"], list(run_classes) if run_classes else None, strict=options["strict_data"]
    )
    return split, split.class_names


def check_classes(options: Mapping[str, Any], class_names: list[str]) -> None:
    """``classes``, when given, must be the data's class count."""
    if options["classes"] is not None and options["classes"] != len(class_names):
        shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
        raise ConfigError(
            f"`classes` {options['classes']} does not match the data: {options['data'] or 'the embedded digits'} "
            f"has {len(class_names)} classes ({shown}); drop `classes` or fix it",
            param="classes",
        )


def load_bundle(options: Mapping[str, Any], split: Any, model: Any, aug: str) -> Any:
    """The :class:`~transferkit.data.DataBundle` (digits or the scanned folder) with the backbone's transforms
    and the resolved ``aug`` level (``none``, ``light``, ``randaugment`` or ``trivialaugment``)."""
    from transferkit.data import DataBundle, limit_dataset, load_digits_data, load_image_folder
    from transferkit.recipes import policy_transform

    config = model.data_config
    augment = aug != "none"
    if split is None:
        # the digits' background is black: geometric ops fill with it, not with the backbone's mean
        policy = policy_transform(aug, fill=(0, 0, 0))
        size = options["img_size"] or DIGITS_IMG_SIZE
        bundle = load_digits_data(size, config["mean"], config["std"], augment=augment, policy=policy)
    else:
        bundle = load_image_folder(
            split,
            config,
            img_size=options["img_size"],
            augment=augment,
            in_chans=getattr(model, "in_chans", 3),
            strict=options["strict_data"],
            policy=policy_transform(aug, mean=config["mean"]),
        )
    if options["limit_train"] or options["limit_val"]:
        bundle = DataBundle(
            limit_dataset(bundle.train, options["limit_train"], options["seed"]),
            limit_dataset(bundle.val, options["limit_val"], options["seed"]),
            bundle.class_names,
            bundle.source,
            bundle.img_size,
            bundle.skipped,
            bundle.augment,
        )
    return bundle


def loader_workers(options: Mapping[str, Any], bundle: Any) -> int:
    """``workers``, or a default suited to the data source."""
    cpus = cpu_count()
    workers = options["workers"]
    if workers is not None:
        if workers > cpus:
            # more loader processes than cores only adds start-up time and memory (and torch's own warning)
            logger.warning(
                "`workers` %d is more than the %d CPU core(s) this process may use; using %d",
                workers,
                cpus,
                cpus,
            )
            return cpus
        return workers
    if bundle.source == "digits":
        return 0  # in-memory tensors: worker processes would only add start-up and copying
    return max(0, min(4, cpus - 1))


def cpu_count() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def use_feature_cache(options: Mapping[str, Any], model: Any, thaws: bool, aug: str) -> bool:
    """Whether to train the head on cached features: ``feature_cache``, or by default whenever the whole
    backbone stays frozen (no thaw schedule) and nothing randomises the images."""
    head = set(model.head_parameter_names())
    backbone_frozen = not thaws and not any(
        p.requires_grad for n, p in model.named_parameters() if n not in head
    )
    mixing = bool(options["mixup"] or options["cutmix"])
    wanted = options["feature_cache"]
    use = wanted if wanted is not None else (backbone_frozen and aug == "none" and not mixing)
    if use and not backbone_frozen:
        raise ConfigError(
            "`feature_cache` needs the whole backbone frozen for the whole run (`linear_probe`=True)",
            param="feature_cache",
        )
    return use


def set_normalisation(model: Any, options: Mapping[str, Any]) -> None:
    """``mean``/``std``: the statistics the weights were trained with, over the backbone's defaults."""
    from transferkit.backbones.preprocess import adapt_data_config

    given = {k: tuple(options[k]) for k in ("mean", "std") if options[k] is not None}
    if not given:
        return
    config = dict(model.data_config)
    for key, values in given.items():
        # one value stands for every channel; adapt_data_config then fits the count to the network's
        config[key] = values if len(values) > 1 else values * len(config[key])
    model.data_config = adapt_data_config(config, model.in_chans)


def refuse_batchnorm_batches_of_one(
    options: Mapping[str, Any], model: Any, thaws: bool, img_size: int
) -> None:
    """A BatchNorm layer that sees one value per channel cannot train (torch raises mid-epoch, after the run
    folder was made): with ``batch_size`` 1, one eval-mode forward (which changes nothing) finds such
    layers, and the run is refused before anything is written."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    from transferkit.freeze import is_bn_locked

    if options["batch_size"] != 1:
        return
    # a BN layer locked in eval (frozen) never uses batch statistics, unless a thaw schedule unlocks it
    watched = {
        m: n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and (thaws or not is_bn_locked(m))
    }
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
            f"`batch_size`=1: BatchNorm layer {single[0]} of {options['backbone']} would see one value per "
            f"channel at {img_size} px, and cannot train on that (its batch statistics are undefined); use "
            "`batch_size`=2 or more, or `linear_probe`=True to keep it frozen",
            param="batch_size",
        )
