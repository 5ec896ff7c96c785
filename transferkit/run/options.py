"""A run's options, layered: defaults < a resumed run's ``args.yaml`` < a YAML ``config`` file < given.

:func:`layered_options` is the whole of it for ``transferkit finetune`` and :func:`transferkit.finetune`
alike: the options given (flags, keywords) over the ``config`` file's, over the resumed run's own
``args.yaml`` (when ``resume`` names a run), over :meth:`FinetuneSpec.defaults`. A config file's values
are checked against their option's kind (a switch, a number, a list ...), and an unknown key gets close
matches. A resumed run continues its own plan: an option that would change it is refused
(:func:`check_resume_unchanged`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError
from transferkit.run.folder import RunFolder
from transferkit.run.spec import PER_INVOCATION, FinetuneSpec

__all__ = ["read_config", "resolve_options", "saved_args", "check_resume_unchanged", "layered_options"]

# what lays out a run's trajectory: its LR schedule (steps per epoch x epochs), freeze plan, optimizer and
# batches. A resumed run restores its saved schedules, so a changed value would be silently ignored (a
# longer `epochs` would train the extra epochs at the cosine schedule's final LR of 0): refused instead.
_TRAJECTORY = ("backbone", "head", "mean", "std", "data", "val_split", "img_size", "limit_train", "epochs", "batch_size", "lr",
               "optimizer", "weight_decay", "lr_decay", "head_lr_scale", "scheduler", "warmup_epochs", "freeze", "unfreeze_at",
               "unfreeze_every", "linear_probe", "aug", "label_smoothing", "seed")  # fmt: skip
# the recipe options change the trajectory too: the EMA, the mixing draws, the model, the rates
_RECIPE = ("mixup", "cutmix", "mixup_prob", "model_ema", "drop_path", "layer_decay")


def _kinds() -> dict[str, dict[str, Any]]:
    """``{option: its argparse keywords}``: how a value of each option is read."""
    return {f.name: dict(f.metadata["cli"]) for f in dataclasses.fields(FinetuneSpec)}


def _coerce(name: str, value: Any, kind: Mapping[str, Any], source: str) -> Any:
    """A config-file value checked against its option's kind."""
    if value is None:
        return None
    action = kind.get("action")
    if action in ("store_true", argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
        return value
    if action == "append":
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if isinstance(v, dict | list) or v is None]
        if bad:
            raise ConfigError(
                f"{source}: {name} must be a string or a list of strings, got {bad[0]!r}"
                + (" (quote a rule that holds ': ', e.g. 'a: b')" if isinstance(bad[0], dict) else "")
            )
        return [str(v) for v in values]
    if kind.get("nargs") == "+":  # `mean` 0.5 or 0.485 0.456 0.406; in YAML a number or a list
        values = value if isinstance(value, list) else [value]
        return [_coerce(name, v, {"type": kind.get("type")}, source) for v in values]
    number = kind.get("type")
    if number in (int, float):
        return _number(name, value, number, source)
    if isinstance(value, dict | list):
        raise ConfigError(
            f"{source}: {name} must be a single value, got the {type(value).__name__} {value!r}"
        )
    return str(value)


def _number(name: str, value: Any, number: type, source: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
    try:
        out = number(value)
    except ValueError:
        raise ConfigError(
            f"{source}: {name} must be a{'n integer' if number is int else ' number'}, got {value!r}"
        ) from None
    if number is int and isinstance(value, float) and value != out:
        raise ConfigError(f"{source}: {name} must be an integer, got {value!r}")
    return out


def _load_yaml(path: str | Path) -> Any:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
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


def read_config(path: str | Path) -> dict[str, Any]:
    """Options from a YAML file of ``option: value`` (``batch-size`` or ``batch_size``); a run's
    ``args.yaml`` works too (its ``args`` section, without the options of that one invocation).

    Raises:
        ConfigError: an unreadable file, not YAML, not a mapping, an unknown key or a value of the wrong kind.
    """
    data = _load_yaml(path)
    if data is None:
        return {}
    if isinstance(data, dict) and isinstance(data.get("args"), dict):
        # a run's args.yaml: the options, not the resolved facts, and none that point at that run itself (its
        # `output`: reusing a config must never write into, or offer to overwrite, the source run)
        data = {k: v for k, v in data["args"].items() if str(k).replace("-", "_") not in PER_INVOCATION}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of flag: value, found a {type(data).__name__}"
        )
    kinds = _kinds()
    known = sorted(k for k in kinds if k != "config")
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        name = str(raw_key).lstrip("-").replace("-", "_")
        if name not in kinds or name == "config":
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"config file {path}: unknown key {raw_key!r}{hint}")
        out[name] = _coerce(name, value, kinds[name], f"config file {path}")
    return out


def resolve_options(given: Mapping[str, Any], saved: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults < ``saved`` (a resumed run's options) < ``given["config"]``'s file < ``given``."""
    options = FinetuneSpec.defaults()
    if saved:
        options.update({k: v for k, v in saved.items() if k in options and k not in PER_INVOCATION})
    if given.get("config"):
        options.update(read_config(given["config"]))
    options.update(given)
    for key in ("rule", "unfreeze_at"):
        options[key] = list(options.get(key) or [])
    return options


def saved_args(run_dir: Path) -> dict[str, Any]:
    """The options a run folder's ``args.yaml`` recorded (empty when it has none)."""
    folder = RunFolder(run_dir)
    path = folder.path / folder.ARGS
    return read_config(path) if path.is_file() else {}


def _given(name: str, value: Any) -> str:
    """An option's value as a user gives it: `` `data`=photos ``, ``no `data` (the embedded digits)``."""
    if value is None or value is False or value == []:
        return f"no `{name}`" + (" (the embedded digits)" if name == "data" else "")
    if value is True:
        return f"`{name}`=True"
    if isinstance(value, list):
        return " ".join(f"`{name}`={v}" for v in value)
    return f"`{name}`={value}"


def check_resume_unchanged(options: Mapping[str, Any], saved: Mapping[str, Any], resume_path: Path) -> None:
    """A resumed run continues its own plan: an option that would change it is an error, not ignored."""
    changed = [k for k in (*_TRAJECTORY, *_RECIPE) if k in saved and options.get(k) != saved[k]]
    if changed:
        given = ", ".join(f"{_given(k, options.get(k))} (the run has {_given(k, saved[k])})" for k in changed)
        raise ConfigError(
            f"`resume`={resume_path}: {given}; a resumed run continues its own schedule, so drop the changed "
            f"option(s), or start a new run from its weights with `init_checkpoint`={resume_path.parent / 'best.pt'}",
            param=changed[0],
        )


def layered_options(given: Mapping[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """Every option of the run, and the checkpoint ``resume`` names (``None`` for a new run).

    Raises:
        ConfigError: a config file or a resumed run that cannot be read, or a resume that would change the
            run's plan.
    """
    from transferkit.run.resume import resume_source

    options = resolve_options(given)
    if not options["resume"]:
        return options, None
    resume_path = resume_source(options)
    # the run's own args.yaml is the base; the options given (and `config`) override it
    saved = saved_args(resume_path.parent)
    if not saved and not options["backbone"]:
        raise ConfigError(
            f"`resume`={options['resume']}: {resume_path.parent} has no args.yaml, so it is not the folder of a "
            "transferkit run (or its args.yaml was removed); give the folder of an earlier run, or repeat "
            "that run's options (`backbone`, `data`, `epochs`, ...)",
            param="resume",
        )
    options = resolve_options(given, saved)
    if not options["eval_only"]:
        check_resume_unchanged(options, saved, resume_path)
    return options, resume_path
