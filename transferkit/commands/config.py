"""Configuration layers of ``transferkit finetune`` and their validation.

``DEFAULTS < a resumed run's args.yaml < --config FILE.yaml < the command line``; config-file values are
checked against their flag's type, unknown keys get close matches. :class:`~transferkit.run.FinetuneSpec` checks every
value that needs no model or data; :func:`check_resume_unchanged` keeps a resumed run on its own schedule.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferkit.commands.parser import DEFAULTS, finetune_actions
from transferkit.errors import ConfigError
from transferkit.run.spec import PER_INVOCATION

__all__ = [
    "read_config",
    "resolve_config",
    "parse_unfreeze_at",
    "saved_args",
    "check_resume_unchanged",
]


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
        data = {k: v for k, v in data["args"].items() if str(k).replace("-", "_") not in PER_INVOCATION}
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
        cfg.update({k: v for k, v in saved.items() if k in DEFAULTS and k not in PER_INVOCATION})
    if explicit.get("config"):
        cfg.update(read_config(explicit["config"], actions))
    cfg.update(explicit)
    for key in ("rule", "unfreeze_at"):
        cfg[key] = list(cfg.get(key) or [])
    return cfg


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
