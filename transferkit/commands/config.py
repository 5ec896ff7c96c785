"""Configuration layers of ``transferkit finetune`` and their validation.

``DEFAULTS < a resumed run's args.yaml < --config FILE.yaml < the command line``; config-file values are
checked against their flag's type, unknown keys get close matches. :func:`validate` checks every value
that needs no model or data; :func:`check_resume_unchanged` keeps a resumed run on its own schedule.
"""

from __future__ import annotations

import argparse
import difflib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferkit.commands.parser import DEFAULTS, finetune_actions
from transferkit.errors import ConfigError

__all__ = [
    "read_config",
    "resolve_config",
    "validate",
    "parse_unfreeze_at",
    "saved_args",
    "check_resume_unchanged",
]

# an image side beyond which a run cannot fit in memory on any machine (4096 px: 200 MB per RGB float32
# image, times the batch, times the activations); a typo like 100000 would otherwise try to allocate TBs
MAX_IMG_SIZE = 4096

# flags describing one invocation, never inherited from a resumed run's args.yaml
_PER_INVOCATION = ("resume", "overwrite", "eval_only", "config", "quiet", "output")


def _coerce(dest: str, value: Any, action: argparse.Action, source: str) -> Any:
    """A config-file value checked against its flag's type."""
    if value is None:
        return None
    if isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {dest} must be true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if isinstance(v, dict | list) or v is None]
        if bad:
            raise ConfigError(
                f"{source}: {dest} must be a string or a list of strings, got {bad[0]!r}"
                + (" (quote a rule that holds ': ', e.g. 'a: b')" if isinstance(bad[0], dict) else "")
            )
        return [str(v) for v in values]
    if action.nargs == "+":  # --mean 0.5 or --mean 0.485 0.456 0.406; in YAML a number or a list
        values = value if isinstance(value, list) else [value]
        return [_coerce(dest, v, argparse.Action([], dest, type=action.type), source) for v in values]
    kind = action.type
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{source}: {dest} must be a number, got {value!r}")
        try:
            out = kind(value)
        except ValueError:
            raise ConfigError(
                f"{source}: {dest} must be a{'n integer' if kind is int else ' number'}, got {value!r}"
            ) from None
        if kind is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{source}: {dest} must be an integer, got {value!r}")
        return out
    if isinstance(value, dict | list):
        raise ConfigError(
            f"{source}: {dest} must be a single value, got the {type(value).__name__} {value!r}"
        )
    return str(value)


def read_config(
    path: str, actions: dict[str, argparse.Action], *, section: str | None = None
) -> dict[str, Any]:
    """Flags from a YAML file (an ``args.yaml`` of a run works too: its ``args`` section is used)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (is it the right file?); give a YAML file of flag: value"
        ) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}; fix its syntax") from None
    if data is None:
        return {}
    if isinstance(data, dict) and isinstance(data.get("args"), dict):
        # a run's args.yaml: the flags, not the resolved facts, and none that point at that run itself (its
        # --output: reusing a config must never write into, or offer to overwrite, the source run)
        data = {k: v for k, v in data["args"].items() if str(k).replace("-", "_") not in _PER_INVOCATION}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of flag: value, found a {type(data).__name__}"
        )
    out: dict[str, Any] = {}
    known = sorted(d for d in actions if d not in ("func", "config"))
    for raw_key, value in data.items():
        dest = str(raw_key).lstrip("-").replace("-", "_")
        if dest not in actions or dest == "config":
            close = difflib.get_close_matches(dest, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"config file {path}: unknown key {raw_key!r}{hint}")
        out[dest] = _coerce(dest, value, actions[dest], f"config file {path}")
    return out


def resolve_config(explicit: dict[str, Any], saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS < saved (a resumed run's args) < --config file < explicit command-line flags."""
    actions = finetune_actions()
    cfg = dict(DEFAULTS)
    if saved:
        cfg.update({k: v for k, v in saved.items() if k in DEFAULTS and k not in _PER_INVOCATION})
    if explicit.get("config"):
        cfg.update(read_config(explicit["config"], actions))
    cfg.update(explicit)
    for key in ("rule", "unfreeze_at"):
        cfg[key] = list(cfg.get(key) or [])
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Check every value that needs no model or data; raises :class:`ConfigError` naming the flag."""
    if not cfg.get("backbone"):
        raise ConfigError("transferkit finetune: --backbone is required, e.g. --backbone resnet50")

    def positive(name: str, kind: type = int, allow_none: bool = True, minimum: float = 1) -> None:
        v = cfg.get(name)
        if v is None and allow_none:
            return
        if not isinstance(v, kind) or isinstance(v, bool) or v < minimum:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(f"--{name.replace('_', '-')} must be {what} >= {minimum}, got {v!r}")

    positive("classes")
    positive("epochs", allow_none=False)
    positive("batch_size", allow_none=False)
    positive("img_size", minimum=8)
    if cfg.get("img_size") is not None and cfg["img_size"] > MAX_IMG_SIZE:
        gb = 3 * cfg["img_size"] ** 2 * 4 / 1e9
        raise ConfigError(
            f"--img-size {cfg['img_size']} is above the limit of {MAX_IMG_SIZE} px: one {cfg['img_size']}x"
            f"{cfg['img_size']} RGB image alone takes {gb:,.1f} GB as float32, before any activation; "
            "backbones are trained at 224-518 px, so give a size in that range"
        )
    positive("limit_train")
    positive("limit_val")
    positive("unfreeze_every")
    positive("workers", minimum=0)
    positive("warmup_epochs", minimum=0, allow_none=False)
    if cfg["lr"] is not None and not (
        isinstance(cfg["lr"], int | float) and math.isfinite(cfg["lr"]) and cfg["lr"] > 0
    ):
        raise ConfigError(f"--lr must be a positive finite number, e.g. 1e-3, got {cfg['lr']!r}")
    wd = cfg["weight_decay"]
    if not (isinstance(wd, int | float) and math.isfinite(wd) and wd >= 0):
        raise ConfigError(f"--weight-decay must be a finite number >= 0, e.g. 0.05, got {wd!r}")
    hs = cfg["head_lr_scale"]
    if hs is not None and not (isinstance(hs, int | float) and math.isfinite(hs) and hs > 0):
        raise ConfigError(f"--head-lr-scale must be a positive number, e.g. 10, got {hs!r}")
    if cfg["lr_decay"] is not None and not 0 < cfg["lr_decay"] <= 1:
        raise ConfigError(f"--lr-decay must be in (0, 1], got {cfg['lr_decay']!r}")
    if not 0 < cfg["val_split"] < 1:
        raise ConfigError(f"--val-split must be between 0 and 1 (exclusive), got {cfg['val_split']!r}")
    if not 0 <= cfg["label_smoothing"] < 1:
        raise ConfigError(f"--label-smoothing must be in [0, 1), got {cfg['label_smoothing']!r}")
    if cfg["warmup_epochs"] >= cfg["epochs"] and cfg["warmup_epochs"] > 0:
        raise ConfigError(
            f"--warmup-epochs ({cfg['warmup_epochs']}) must be smaller than --epochs ({cfg['epochs']})"
        )
    if cfg["scheduler"] not in ("cosine", "step", "onecycle", "none"):
        raise ConfigError(f"--scheduler must be cosine, step, onecycle or none, got {cfg['scheduler']!r}")
    if cfg["scheduler"] == "onecycle" and cfg["warmup_epochs"]:
        raise ConfigError("--scheduler onecycle has its own warmup; drop --warmup-epochs")
    if cfg["overwrite"] and cfg["resume"]:
        raise ConfigError("--overwrite and --resume contradict each other; give one of them")
    if cfg["linear_probe"] and (
        cfg["unfreeze_at"] or cfg["unfreeze_every"] or cfg["freeze"] not in ("auto", "backbone")
    ):
        raise ConfigError("--linear-probe trains the head only; drop --unfreeze-at/--unfreeze-every/--freeze")
    if cfg["unfreeze_at"] and cfg["unfreeze_every"]:
        raise ConfigError("give one of --unfreeze-at and --unfreeze-every, not both")
    for name in ("mean", "std"):
        values = cfg[name]
        if values is None:
            continue
        if (
            not isinstance(values, list | tuple)
            or len(values) not in (1, 3)
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in values)
        ):
            raise ConfigError(
                f"--{name} takes one number or three (one a channel), e.g. --{name} 0.5, got {values!r}"
            )
        if name == "std" and any(v <= 0 for v in values):
            raise ConfigError(f"--std values must be > 0, got {values!r}")
    if cfg["feature_cache"] and cfg["aug"] not in (None, "none"):
        raise ConfigError("--feature-cache needs --aug none: cached features would freeze one random draw")
    _validate_recipe(cfg)


def _validate_recipe(cfg: dict[str, Any]) -> None:
    """The recipe options (--aug, --mixup/--cutmix, --model-ema, --drop-path, --layer-decay)."""
    from transferkit.recipes import AUG_CHOICES

    if cfg["aug"] is not None and cfg["aug"] not in AUG_CHOICES:
        raise ConfigError(f"--aug must be one of {', '.join(AUG_CHOICES)}, got {cfg['aug']!r}")

    def number(
        name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
    ) -> None:
        v = cfg[name]
        if v is None:
            return
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        if not ok:
            span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise ConfigError(f"--{name.replace('_', '-')} must be a number in {span}, got {v!r}")

    number("mixup", 0, 100)
    number("cutmix", 0, 100)
    number("mixup_prob", 0, 1, low_open=True)
    number("model_ema", 0, 1, low_open=True, high_open=True)
    number("drop_path", 0, 1, high_open=True)
    number("layer_decay", 0, 1, low_open=True)
    mixing = bool(cfg["mixup"] or cfg["cutmix"])
    if cfg["mixup_prob"] != 1.0 and not mixing:
        raise ConfigError("--mixup-prob applies to --mixup/--cutmix; give one of them or drop --mixup-prob")
    if mixing and cfg["feature_cache"]:
        raise ConfigError("--mixup/--cutmix mix images, not cached features; drop --feature-cache")
    if cfg["layer_decay"] is not None and cfg["lr_decay"] is not None:
        raise ConfigError(
            "--layer-decay replaces --lr-decay (rates per layer instead of per layer group); give one of them"
        )
    if cfg["layer_decay"] is not None and cfg["linear_probe"]:
        raise ConfigError(
            "--layer-decay sets the rates below the head, and --linear-probe trains the head only"
        )


def parse_unfreeze_at(specs: Sequence[str]) -> dict[int, list[str] | None]:
    """``["2:layer4,4:layer3", "6"]`` -> ``{2: ["layer4"], 4: ["layer3"], 6: None}`` (None: the rest)."""
    plan: dict[int, list[str] | None] = {}
    for spec in specs:
        for item in str(spec).split(","):
            item = item.strip()
            if not item:
                continue
            epoch_s, _, group = item.partition(":")
            try:
                epoch = int(epoch_s)
            except ValueError:
                raise ConfigError(
                    f"--unfreeze-at {item!r}: expected EPOCH or EPOCH:GROUP (e.g. 2:layer4), epoch not an integer"
                ) from None
            if epoch < 0:
                raise ConfigError(f"--unfreeze-at {item!r}: the epoch must be >= 0")
            if group:
                current = plan.setdefault(epoch, [])
                if current is None:
                    raise ConfigError(f"--unfreeze-at: epoch {epoch} already thaws every remaining group")
                current.append(group.strip())
            else:
                if epoch in plan:
                    raise ConfigError(f"--unfreeze-at: epoch {epoch} given twice")
                plan[epoch] = None
    return plan


def saved_args(run_dir: Path) -> dict[str, Any]:
    """The flags a run folder's ``args.yaml`` recorded (empty when it has none)."""
    path = run_dir / "args.yaml"
    if not path.is_file():
        return {}
    return read_config(str(path), finetune_actions())


# what lays out a run's trajectory: its LR schedule (steps per epoch x epochs), freeze plan, optimizer and
# batches. A resumed run restores its saved schedules, so a changed value would be silently ignored (a
# longer --epochs would train the extra epochs at the cosine schedule's final LR of 0): refused instead.
_TRAJECTORY = ("backbone", "head", "mean", "std", "data", "val_split", "img_size", "limit_train", "epochs", "batch_size", "lr",
               "optimizer", "weight_decay", "lr_decay", "head_lr_scale", "scheduler", "warmup_epochs", "freeze", "unfreeze_at",
               "unfreeze_every", "linear_probe", "aug", "label_smoothing", "seed")  # fmt: skip
# the recipe options change the trajectory too: the EMA, the mixing draws, the model, the rates
_RECIPE = ("mixup", "cutmix", "mixup_prob", "model_ema", "drop_path", "layer_decay")


def _given(dest: str, value: Any) -> str:
    """A flag's value as a user would type it: ``--data photos``, ``no --data (the embedded digits)``."""
    flag = f"--{dest.replace('_', '-')}"
    if value is None or value is False or value == []:
        default = " (the embedded digits)" if dest == "data" else ""
        return f"no {flag}{default}"
    if value is True:
        return flag
    if isinstance(value, list):
        return " ".join(f"{flag} {v}" for v in value)
    return f"{flag} {value}"


def check_resume_unchanged(cfg: dict[str, Any], saved: dict[str, Any], resume_path: Path) -> None:
    """A resumed run continues its own plan: a flag that would change it is an error, not ignored."""
    changed = [k for k in (*_TRAJECTORY, *_RECIPE) if k in saved and cfg.get(k) != saved[k]]
    if changed:
        flags = ", ".join(f"{_given(k, cfg.get(k))} (the run has {_given(k, saved[k])})" for k in changed)
        raise ConfigError(
            f"--resume {resume_path}: {flags}; a resumed run continues its own schedule, so drop the changed "
            f"flag(s), or start a new run from its weights with --init-checkpoint {resume_path.parent / 'best.pt'}"
        )
