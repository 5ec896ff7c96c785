"""From a validated configuration to the objects of a run, writing nothing.

The data source (scanned and checked up front), the data bundle with the backbone's transforms, the
freeze policy (a :class:`~transferkit.schedule.GradualUnfreeze` or a fixed freeze), the LR schedule, the
DataLoader worker count, the checkpoint a ``--resume`` names and the run folder to write into.
"""

from __future__ import annotations

import datetime
import difflib
import logging
import os
import re
from pathlib import Path
from typing import Any

from transferkit.commands.config import parse_unfreeze_at
from transferkit.errors import ConfigError, LayerGroupError

logger = logging.getLogger("transferkit.cli")

__all__ = [
    "DIGITS_IMG_SIZE",
    "PRETRAINED_LR_SPAN",
    "PRETRAINED_LR",
    "SCRATCH_LR",
    "resolve_lr",
    "HEAD_LR_SCALE",
    "HEAD_FAN_IN",
    "head_lr_scale",
    "span_decay",
    "safe_name",
    "resume_source",
    "decide_run_dir",
    "is_run_folder",
    "load_resume",
    "scan_data",
    "scan_eval_data",
    "load_bundle",
    "loader_workers",
    "setup_freeze",
    "make_lr_schedule",
]

DIGITS_IMG_SIZE = 32  # 8x8 scans shown at 32 px: enough for a ResNet stem, cheap on a CPU
# The default recipe with pretrained weights, each value chosen by benchmarks/bench_transfer.py (the evidence
# is in benchmarks/RESULTS.md): every layer group trains from the first step (a head-only first epoch, the
# shape of fastai's fine_tune, reached 65.6 % on ResNet-20 where training everything from the start reached
# 71-74 % at the same base rate), at rates spread geometrically by level below the head, down to
# PRETRAINED_LR_SPAN x --lr for the lowest group, whatever the number of groups.
PRETRAINED_LR_SPAN = 0.1
# AdamW's base rate: fine-tuning a pretrained network on a small data set in a few hundred steps needs a
# rate high enough for its upper layers to move (1e-3 left EfficientNet-Lite0 at 64 % where 1e-2 gave 80 %);
# from random weights the usual 1e-3
PRETRAINED_LR = 1e-2
SCRATCH_LR = 1e-3
# The new head starts near zero and has the farthest to go. Adam moves every weight by about the rate, so a
# logit moves in proportion to the head's fan-in: a narrow head (ResNet-20's 64 features) needs a higher rate
# to move its logits as fast as a wide one (Lite0's 1,280), where a higher rate destabilises (97 % -> 92 %
# on the digits at 3x). The head trains at HEAD_FAN_IN / fan-in x --lr, between 1x and HEAD_LR_SCALE x.
HEAD_FAN_IN = 256
HEAD_LR_SCALE = 3.0


def span_decay(num_groups: int, span: float = PRETRAINED_LR_SPAN) -> float:
    """The per-level rate factor that spreads ``num_groups`` groups' rates over ``span``.

    Example:
        >>> round(span_decay(4), 3)  # 3 levels below the head: 1, 0.464, 0.215, 0.1
        0.464
    """
    return 1.0 if num_groups < 2 else float(span ** (1.0 / (num_groups - 1)))


def safe_name(backbone: str) -> str:
    """A backbone name as a folder-name part: ``timm:convnext_atto`` -> ``timm-convnext_atto``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", backbone).strip("-.") or "model"


def resume_source(cfg: dict[str, Any]) -> Path:
    """The checkpoint a --resume names: a file, a run folder, --output's, or the newest run of the backbone."""
    value = cfg["resume"]
    if value != "auto":
        path = Path(value)
        if path.is_dir():
            path = path / "last.pt"
            if not path.is_file():
                raise ConfigError(
                    f"--resume {value}: the run folder has no last.pt (its run never finished an epoch); "
                    "drop --resume to start it again (with --overwrite if the folder holds files)"
                )
        if not path.is_file():
            raise ConfigError(f"--resume {value}: no checkpoint at {path}; give a run folder or its last.pt")
        return path
    if cfg.get("output"):
        folder = Path(cfg["output"])
        if not folder.is_dir():
            raise ConfigError(
                f"--resume: no run folder {folder} (from --output); give the folder of an earlier run, or drop "
                "--resume to start a new run there"
            )
        path = folder / "last.pt"
        if not path.is_file():
            raise ConfigError(
                f"--resume: {folder} has no last.pt (the run there never finished an epoch); drop --resume to "
                "start it again (with --overwrite if the folder holds files)"
            )
        return path
    pattern = f"*-{safe_name(cfg['backbone'] or '')}/last.pt"
    found = (
        sorted(Path("runs").glob(pattern), key=lambda p: p.stat().st_mtime) if Path("runs").is_dir() else []
    )
    if not found:
        raise ConfigError(f"--resume: no runs/{pattern} found; give --resume PATH or --output DIR")
    return found[-1]


def decide_run_dir(cfg: dict[str, Any], resume_path: Path | None) -> Path:
    """Decide the run folder (validating, creating nothing)."""
    if cfg["output"]:
        run_dir = Path(cfg["output"])
    elif resume_path is not None:
        run_dir = resume_path.parent
    else:
        from transferkit.commands.run_folder import numbered

        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        # two runs started in the same second: -2, -3, ... (claimed atomically when the folder is made)
        run_dir = numbered(Path("runs") / f"{stamp}-{safe_name(cfg['backbone'])}")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--output {run_dir} is a file; give a folder")
    _check_creatable(run_dir)
    # hidden entries (.DS_Store, .ipynb_checkpoints) do not make a folder someone's work
    entries = (
        sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) if run_dir.is_dir() else []
    )
    if entries and not (cfg["overwrite"] or resume_path is not None):
        if is_run_folder(run_dir) and (run_dir / "model.safetensors").is_file():
            # never advise --overwrite for a finished run: following that advice would destroy it
            raise ConfigError(
                f"run folder {run_dir} holds a complete run; give a new --output for this one (to re-check "
                f"that run: --resume {run_dir} --eval-only)"
            )
        raise ConfigError(
            f"run folder {run_dir} already exists and is not empty; use --resume to continue it, "
            "--overwrite to replace it, or another --output"
        )
    if entries and resume_path is not None and run_dir.resolve() != resume_path.parent.resolve():
        raise ConfigError(
            f"--output {run_dir} is not the folder of the run resumed ({resume_path.parent}) and is not empty; "
            "its files would be replaced: drop --output to continue in the run's own folder, or give an "
            "empty --output"
        )
    if entries and cfg["overwrite"] and not is_run_folder(run_dir):
        # --overwrite replaces a run's own files and keeps the rest; in a folder that is not a run's, a file
        # named like one (someone's metrics.csv and labels.json) is not the run's to replace
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(
            f"--overwrite: {run_dir} is not a transferkit run folder (no args.yaml of a run) and holds "
            f"files ({shown}); nothing was touched. Give a new or empty --output folder"
        )
    return run_dir


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a run's ``args.yaml`` (its ``args`` and ``resolved`` sections)."""
    import yaml

    try:
        with open(folder / "args.yaml", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and isinstance(data.get("args"), dict) and "resolved" in data


def _check_creatable(run_dir: Path) -> None:
    """Refuse, before any work, a run folder that cannot be created or written (under a file, read-only)."""
    probe = run_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(
            f"--output {run_dir}: cannot create the run folder, {probe} is a file; give a folder path"
        )
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--output {run_dir}: {probe} is not writable (permission denied); give a folder you can write to"
        )


def load_resume(path: Path) -> Any:
    """Read a ``--resume`` checkpoint, refusing one that is not a run's ``last.pt``/``best.pt``."""
    from transferkit.checkpoint import load_checkpoint
    from transferkit.checkpoint.training import require_training_checkpoint
    from transferkit.errors import CheckpointError

    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        best = path.parent / "best.pt"
        other = (
            f"; {best} may still be intact: --resume {best} continues from the best epoch"
            if best.is_file() and path.name != "best.pt"
            else ""
        )
        detail = str(exc).removeprefix(f"{path}: ")
        raise CheckpointError(f"--resume {path}: {detail}{other}") from None
    hint = f"to start a new run from its weights use --init-checkpoint {path}"
    return require_training_checkpoint(ckpt, f"--resume {path}", epoch=True, hint=hint)


def scan_data(cfg: dict[str, Any]) -> tuple[Any, list[str]]:
    """Scan/check the data source before anything heavy: ``(folder split or None, class names)``."""
    from transferkit.data import split_image_folder

    if cfg["data"] is None:
        return None, [str(i) for i in range(10)]
    split = split_image_folder(
        cfg["data"], val_split=cfg["val_split"], seed=cfg["seed"], strict=cfg["strict_data"]
    )
    return split, split.class_names


def scan_eval_data(cfg: dict[str, Any], run_classes: list[str] | None) -> tuple[Any, list[str]]:
    """``--eval-only --data DIR``: every image of DIR, labelled by the run's class names (when known)."""
    from transferkit.data import scan_eval_folder

    # no run to compare with (--init-checkpoint, --weights): the folder's own names, sorted
    split = scan_eval_folder(cfg["data"], run_classes, strict=cfg["strict_data"])
    return split, split.class_names


def load_bundle(cfg: dict[str, Any], split: Any, model: Any, aug: str) -> Any:
    """The :class:`~transferkit.data.DataBundle` (digits or the scanned folder) with the backbone's transforms
    and the ``--aug`` level (resolved: ``none``, ``light``, ``randaugment`` or ``trivialaugment``)."""
    from transferkit.data import DataBundle, limit_dataset, load_digits_data, load_image_folder
    from transferkit.recipes import policy_transform

    config = model.data_config
    augment = aug != "none"
    if split is None:
        # the digits' background is black: geometric ops fill with it, not with the backbone's mean
        policy = policy_transform(aug, fill=(0, 0, 0))
        bundle = load_digits_data(
            cfg["img_size"] or DIGITS_IMG_SIZE, config["mean"], config["std"], augment=augment, policy=policy
        )
    else:
        bundle = load_image_folder(
            split,
            config,
            img_size=cfg["img_size"],
            augment=augment,
            in_chans=getattr(model, "in_chans", 3),
            strict=cfg["strict_data"],
            policy=policy_transform(aug, mean=config["mean"]),
        )
    if cfg["limit_train"] or cfg["limit_val"]:
        bundle = DataBundle(
            limit_dataset(bundle.train, cfg["limit_train"], cfg["seed"]),
            limit_dataset(bundle.val, cfg["limit_val"], cfg["seed"]),
            bundle.class_names,
            bundle.source,
            bundle.img_size,
            bundle.skipped,
            bundle.augment,
        )
    return bundle


def loader_workers(cfg: dict[str, Any], bundle: Any) -> int:
    """``--workers``, or a default suited to the data source."""
    cpus = _cpu_count()
    if cfg["workers"] is not None:
        if cfg["workers"] > cpus:
            # more loader processes than cores only adds start-up time and memory (and torch's own warning)
            logger.warning(
                "--workers %d is more than the %d CPU core(s) this process may use; using %d",
                cfg["workers"],
                cpus,
                cpus,
            )
            return cpus
        return cfg["workers"]
    if bundle.source == "digits":
        return 0  # in-memory tensors: worker processes would only add start-up and copying
    return max(0, min(4, cpus - 1))


def _cpu_count() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_lr(cfg: dict[str, Any], pretrained: bool) -> float:
    """``--lr``, or the default for the weights: :data:`PRETRAINED_LR` or :data:`SCRATCH_LR`."""
    if cfg["lr"] is not None:
        return float(cfg["lr"])
    return PRETRAINED_LR if pretrained else SCRATCH_LR


def head_lr_scale(cfg: dict[str, Any], model: Any, pretrained: bool) -> float:
    """``--head-lr-scale``, or the default on pretrained weights: ``HEAD_FAN_IN / fan-in`` clipped to
    ``[1, HEAD_LR_SCALE]`` (3 for a 64-feature head, 1 from 256 features up); 1 on random weights.

    Example:
        >>> import torch
        >>> class Net(torch.nn.Module):
        ...     head = torch.nn.Linear(64, 10)
        >>> head_lr_scale({"head_lr_scale": None}, Net(), pretrained=True)
        3.0
    """
    if cfg["head_lr_scale"] is not None:
        return float(cfg["head_lr_scale"])
    if not pretrained:
        return 1.0
    head = getattr(model, "head", None)
    fan_in = getattr(head, "in_features", None) or getattr(head, "in_channels", None)
    if not fan_in:
        return 1.0
    return float(min(HEAD_LR_SCALE, max(1.0, HEAD_FAN_IN / fan_in)))


def setup_freeze(cfg: dict[str, Any], model: Any, pretrained: bool) -> tuple[Any, str, float | None]:
    """Freeze policy -> ``(GradualUnfreeze or None, description, lr_decay for the optimizer)``."""
    from transferkit.freeze import freeze, freeze_backbone
    from transferkit.schedule import GradualUnfreeze

    mode = str(cfg["freeze"]).strip()
    lr_decay = cfg["lr_decay"]
    layer_decay = cfg["layer_decay"]
    if lr_decay is None and pretrained and layer_decay is None:
        lr_decay = span_decay(len(list(model.layer_groups())))
    schedule_decay = lr_decay if lr_decay is not None else 1.0
    if layer_decay is not None:
        schedule_decay = 1.0  # a thawed parameter's rate comes from its layer (build_optimizer's layer_decay)
    plan = parse_unfreeze_at(cfg["unfreeze_at"])
    every = cfg["unfreeze_every"]
    if cfg["linear_probe"]:
        freeze_backbone(model)
        return None, "linear probe: backbone frozen, head trains", None
    if mode == "auto":
        if plan or every:
            mode = "backbone"
        else:
            mode = "none"
    if mode == "none":
        if plan or every:
            raise ConfigError(
                "--unfreeze-at/--unfreeze-every need a frozen start; use --freeze backbone (or auto)"
            )
        scale = head_lr_scale(cfg, model, pretrained)
        rates = [f"head at {scale:g} x lr"] if scale != 1.0 else []
        rates += [f"lr x{lr_decay:.3g} per group level below the head"] if lr_decay not in (None, 1.0) else []
        rates = f" ({', '.join(rates)})" if rates else ""
        return None, f"nothing frozen: every layer trains{rates}", lr_decay
    if mode == "backbone":
        if not plan and not every:
            freeze_backbone(model)
            return None, "backbone frozen for the whole run: the head trains", None
        if every:
            sched = GradualUnfreeze(
                model, every=every, lr_decay=schedule_decay, layer_decay=layer_decay, lr=cfg["lr"]
            )
        else:
            below = list(model.layer_groups())[:-1]
            named = {g for gs in plan.values() if gs for g in gs}
            at = {
                e: (gs if gs is not None else [g for g in reversed(below) if g not in named])
                for e, gs in plan.items()
            }
            at = {e: g for e, g in at.items() if g}
            try:
                sched = GradualUnfreeze(
                    model, at=at, lr_decay=schedule_decay, layer_decay=layer_decay, lr=cfg["lr"]
                )
            except LayerGroupError as exc:
                raise _unfreeze_at_error(exc) from None
        # plan key e (0-based) = thawed after e epochs, i.e. from console epoch e + 1 on
        desc = "head only, then thaw " + ", ".join(
            f"{'+'.join(g)} after epoch {e}" if e else f"{'+'.join(g)} from the start"
            for e, g in sorted(sched.plan.items())
        )
        rates = (
            f"lr x{layer_decay:g} per layer"
            if layer_decay is not None
            else f"lr x{schedule_decay:.3g} per level"
        )
        return sched, f"{desc} ({rates})", None
    groups = [g.strip() for g in mode.split(",") if g.strip()]
    if plan or every:
        raise ConfigError(
            "--unfreeze-at/--unfreeze-every start from a frozen backbone; use --freeze backbone"
        )
    known = list(model.layer_groups())
    unknown = [g for g in groups if g not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"--freeze {mode}: unknown layer group(s) {unknown}; expected none, backbone, auto or groups of "
            f"{', '.join(known)}.{hint}"
        )
    freeze(model, *groups)
    return None, f"frozen for the whole run: {', '.join(groups)}", lr_decay


def _unfreeze_at_error(exc: LayerGroupError) -> ConfigError:
    """The library's thaw-plan refusal in ``--unfreeze-at``'s own spelling, from the error's data."""
    if exc.repeated:
        return ConfigError(f"--unfreeze-at: layer group {exc.group!r} is given twice; name each group once")
    return ConfigError(
        f"--unfreeze-at {exc.epoch}:{exc.group}: {exc.group!r} is not a layer group below the head; expected "
        f"one of {', '.join(exc.expected)}.",
        hint=exc.hint,
    )


def make_lr_schedule(cfg: dict[str, Any], optimizer: Any, steps_per_epoch: int) -> Any:
    """The per-step :class:`~transferkit.schedule.LRSchedule` of ``--scheduler``/``--warmup-epochs``."""
    from transferkit.schedule import LRSchedule

    total = cfg["epochs"] * steps_per_epoch
    kind = cfg["scheduler"]
    kwargs: dict[str, Any] = {}
    if kind == "step":
        kwargs["step_size"] = max(1, cfg["epochs"] // 3) * steps_per_epoch
    warm = cfg["warmup_epochs"] * steps_per_epoch
    return LRSchedule(optimizer, kind, total_steps=total, warmup_steps=warm, **kwargs)
