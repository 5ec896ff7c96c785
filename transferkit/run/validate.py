"""The checks of fine-tuning options that need no model or data (:meth:`FinetuneSpec.validate`).

Each error names the option as an API parameter (`` `lr` ``, see :mod:`transferkit.errors`) and carries
it as ``param``; the CLI shows the flag.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from transferkit.errors import ConfigError

__all__ = ["MAX_IMG_SIZE", "check_options"]

# an image side beyond which a run cannot fit in memory on any machine (4096 px: 200 MB per RGB float32
# image, times the batch, times the activations); a typo like 100000 would otherwise try to allocate TBs
MAX_IMG_SIZE = 4096


def check_options(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first option whose value cannot work."""
    if not cfg.get("backbone"):
        raise ConfigError(
            "transferkit finetune: `backbone` is required, e.g. `backbone`=resnet50", param="backbone"
        )
    _check_sizes(cfg)
    _check_rates(cfg)
    _check_plan(cfg)
    _check_normalisation(cfg)
    _check_recipe(cfg)


def _positive(cfg: Mapping[str, Any], name: str, allow_none: bool = True, minimum: int = 1) -> None:
    v = cfg.get(name)
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ConfigError(f"`{name}` must be an integer >= {minimum}, got {v!r}", param=name)


def _check_sizes(cfg: Mapping[str, Any]) -> None:
    _positive(cfg, "classes")
    _positive(cfg, "epochs", allow_none=False)
    _positive(cfg, "batch_size", allow_none=False)
    _positive(cfg, "img_size", minimum=8)
    size = cfg.get("img_size")
    if size is not None and size > MAX_IMG_SIZE:
        raise ConfigError(
            f"`img_size` {size} is above the limit of {MAX_IMG_SIZE} px: one {size}x{size} RGB image alone "
            f"takes {3 * size**2 * 4 / 1e9:,.1f} GB as float32, before any activation; backbones are trained "
            "at 224-518 px, so give a size in that range",
            param="img_size",
        )
    for name in ("limit_train", "limit_val", "unfreeze_every"):
        _positive(cfg, name)
    _positive(cfg, "workers", minimum=0)
    _positive(cfg, "warmup_epochs", minimum=0, allow_none=False)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_rates(cfg: Mapping[str, Any]) -> None:
    if cfg["lr"] is not None and not (_finite(cfg["lr"]) and cfg["lr"] > 0):
        raise ConfigError(f"`lr` must be a positive finite number, e.g. 1e-3, got {cfg['lr']!r}", param="lr")
    wd = cfg["weight_decay"]
    if not (_finite(wd) and wd >= 0):
        raise ConfigError(
            f"`weight_decay` must be a finite number >= 0, e.g. 0.05, got {wd!r}", param="weight_decay"
        )
    hs = cfg["head_lr_scale"]
    if hs is not None and not (_finite(hs) and hs > 0):
        raise ConfigError(
            f"`head_lr_scale` must be a positive number, e.g. 10, got {hs!r}", param="head_lr_scale"
        )
    if cfg["lr_decay"] is not None and not 0 < cfg["lr_decay"] <= 1:
        raise ConfigError(f"`lr_decay` must be in (0, 1], got {cfg['lr_decay']!r}", param="lr_decay")
    if not 0 < cfg["val_split"] < 1:
        raise ConfigError(
            f"`val_split` must be between 0 and 1 (exclusive), got {cfg['val_split']!r}", param="val_split"
        )
    if not 0 <= cfg["label_smoothing"] < 1:
        raise ConfigError(
            f"`label_smoothing` must be in [0, 1), got {cfg['label_smoothing']!r}", param="label_smoothing"
        )


def _check_plan(cfg: Mapping[str, Any]) -> None:
    if cfg["warmup_epochs"] >= cfg["epochs"] and cfg["warmup_epochs"] > 0:
        raise ConfigError(
            f"`warmup_epochs` ({cfg['warmup_epochs']}) must be smaller than `epochs` ({cfg['epochs']})",
            param="warmup_epochs",
        )
    if cfg["scheduler"] not in ("cosine", "step", "onecycle", "none"):
        raise ConfigError(
            f"`scheduler` must be cosine, step, onecycle or none, got {cfg['scheduler']!r}", param="scheduler"
        )
    if cfg["scheduler"] == "onecycle" and cfg["warmup_epochs"]:
        raise ConfigError(
            "`scheduler` onecycle has its own warmup; drop `warmup_epochs`", param="warmup_epochs"
        )
    if cfg["overwrite"] and cfg["resume"]:
        raise ConfigError(
            "`overwrite` and `resume` contradict each other; give one of them", param="overwrite"
        )
    if cfg["linear_probe"] and (
        cfg["unfreeze_at"] or cfg["unfreeze_every"] or cfg["freeze"] not in ("auto", "backbone")
    ):
        raise ConfigError(
            "`linear_probe` trains the head only; drop `unfreeze_at`/`unfreeze_every`/`freeze`",
            param="linear_probe",
        )
    if cfg["unfreeze_at"] and cfg["unfreeze_every"]:
        raise ConfigError("give one of `unfreeze_at` and `unfreeze_every`, not both", param="unfreeze_every")


def _check_normalisation(cfg: Mapping[str, Any]) -> None:
    for name in ("mean", "std"):
        values = cfg[name]
        if values is None:
            continue
        if not isinstance(values, list | tuple) or len(values) not in (1, 3) or not all(map(_finite, values)):
            raise ConfigError(
                f"`{name}` takes one number or three (one a channel), e.g. `{name}`=0.5, got {values!r}",
                param=name,
            )
        if name == "std" and any(v <= 0 for v in values):
            raise ConfigError(f"`std` values must be > 0, got {values!r}", param="std")
    if cfg["feature_cache"] and cfg["aug"] not in (None, "none"):
        raise ConfigError(
            "`feature_cache` needs `aug`=none: cached features would freeze one random draw",
            param="feature_cache",
        )


def _number(
    cfg: Mapping[str, Any], name: str, low: float, high: float, low_open=False, high_open=False
) -> None:
    v = cfg[name]
    if v is None:
        return
    ok = _finite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"`{name}` must be a number in {span}, got {v!r}", param=name)


def _check_recipe(cfg: Mapping[str, Any]) -> None:
    """The recipe options (aug, mixup/cutmix, model_ema, drop_path, layer_decay)."""
    from transferkit.recipes import AUG_CHOICES

    if cfg["aug"] is not None and cfg["aug"] not in AUG_CHOICES:
        raise ConfigError(f"`aug` must be one of {', '.join(AUG_CHOICES)}, got {cfg['aug']!r}", param="aug")
    _number(cfg, "mixup", 0, 100)
    _number(cfg, "cutmix", 0, 100)
    _number(cfg, "mixup_prob", 0, 1, low_open=True)
    _number(cfg, "model_ema", 0, 1, low_open=True, high_open=True)
    _number(cfg, "drop_path", 0, 1, high_open=True)
    _number(cfg, "layer_decay", 0, 1, low_open=True)
    mixing = bool(cfg["mixup"] or cfg["cutmix"])
    if cfg["mixup_prob"] != 1.0 and not mixing:
        raise ConfigError(
            "`mixup_prob` applies to `mixup`/`cutmix`; give one of them or drop `mixup_prob`",
            param="mixup_prob",
        )
    if mixing and cfg["feature_cache"]:
        raise ConfigError(
            "`mixup`/`cutmix` mix images, not cached features; drop `feature_cache`", param="mixup"
        )
    if cfg["layer_decay"] is not None and cfg["lr_decay"] is not None:
        raise ConfigError(
            "`layer_decay` replaces `lr_decay` (rates per layer instead of per layer group); give one of them",
            param="layer_decay",
        )
    if cfg["layer_decay"] is not None and cfg["linear_probe"]:
        raise ConfigError(
            "`layer_decay` sets the rates below the head, and `linear_probe` trains the head only",
            param="layer_decay",
        )
