"""The command line: ``transferkit finetune`` and ``transferkit inspect``.

``transferkit finetune --backbone resnet50 --classes 10`` fine-tunes on the embedded digits (or
``--data DIR``) and writes a run folder (see :mod:`transferkit.report`). Every flag can also come from
``--config FILE.yaml`` (keys are flag names, ``batch-size`` or ``batch_size``); flags on the command
line win. ``--resume`` continues a run with its saved ``args.yaml`` as the base configuration.

Everything is validated -- data folder, classes, rules, device, backbone, init checkpoint, resume
checkpoint -- before the run folder is created, and any :class:`~transferkit.errors.TransferkitError`
(or argparse error) becomes one line on stderr and exit code 2: nothing written, no traceback.

Multi-process: ``torchrun --standalone --nproc_per_node=2 scripts/finetune.py --backbone resnet18``.
Only rank 0 prints and writes.

Example:
    >>> main(["finetune", "--backbone", "resnet18", "--classes", "0"])  # doctest: +SKIP
    transferkit finetune: error: --classes must be an integer >= 1, got 0
    2
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError, TransferkitError

__all__ = ["main", "build_parser", "DEFAULTS"]

logger = logging.getLogger("transferkit.cli")

# Defaults of `finetune`, chosen so that `make demo` (resnet50, digits, 2 CPU cores, random weights when
# offline) finishes in a few minutes with a meaningful accuracy. Layering: DEFAULTS < a resumed run's
# args.yaml < --config < the command line.
DEFAULTS: dict[str, Any] = {
    "backbone": None,
    "classes": None,
    "data": None,
    "val_split": 0.2,
    "img_size": None,
    "strict_data": False,
    "augment": None,
    "limit_train": None,
    "limit_val": None,
    "weights": "auto",
    "init_checkpoint": None,
    "rule": [],
    "key": None,
    "epochs": 10,
    "batch_size": 64,
    "lr": 1e-3,
    "optimizer": "adamw",
    "weight_decay": 0.05,
    "lr_decay": None,
    "scheduler": "cosine",
    "warmup_epochs": 0,
    "freeze": "auto",
    "unfreeze_at": [],
    "unfreeze_every": None,
    "linear_probe": False,
    "feature_cache": None,
    "label_smoothing": 0.0,
    "amp": False,
    "channels_last": False,
    "compile": False,
    "device": "auto",
    "workers": None,
    "seed": 0,
    "output": None,
    "resume": None,
    "overwrite": False,
    "eval_only": False,
    "config": None,
    "quiet": False,
}
DIGITS_IMG_SIZE = 32  # 8x8 scans shown at 32 px: enough for a ResNet stem, cheap on a CPU
PRETRAINED_LR_DECAY = 0.5
# flags describing one invocation, never inherited from a resumed run's args.yaml
_PER_INVOCATION = ("resume", "overwrite", "eval_only", "config", "quiet", "output")


# ----------------------------------------------------------------------------------------------------------
# parser


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become ConfigError: one line, exit 2, through the same path as every error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def _help(text: str, dest: str) -> str:
    default = DEFAULTS.get(dest)
    if default in (None, [], False):
        return text
    return f"{text} (default: {default})"


def _add_finetune(sub: Any) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a backbone on the embedded digits or an image folder",
        description="Fine-tune a pretrained backbone; writes a run folder (args.yaml, metrics.csv, plots, "
        "last.pt, best.pt, model.safetensors, labels.json).",
        argument_default=argparse.SUPPRESS,
    )

    def add(group: Any, *flags: str, help: str, **kw: Any) -> None:  # noqa: A002
        dest = kw.get("dest") or flags[0].lstrip("-").replace("-", "_")
        group.add_argument(*flags, help=_help(help, dest), **kw)

    g = p.add_argument_group("model")
    add(g, "--backbone", help="torchvision name (resnet50), timm:NAME, or package.module:callable")
    add(g, "--classes", type=int, help="number of classes; must agree with the data (default: from the data)")
    add(g, "--weights", help="auto (pretrained if available offline, else random), imagenet, PATH or none")
    add(g, "--init-checkpoint", metavar="PATH", help="start from this checkpoint's weights (partial load)")
    add(
        g,
        "--rule",
        action="append",
        metavar="OLD=>NEW",
        help="rename rule for --init-checkpoint (repeatable; 're:PATTERN=>REPL' for a regex)",
    )
    add(g, "--key", help="where the weights sit inside --init-checkpoint (e.g. state_dict, models.model)")

    g = p.add_argument_group("data")
    add(
        g,
        "--data",
        metavar="DIR",
        help="image folder: DIR/train/<class> + DIR/val/<class>, or DIR/<class> "
        "split by --val-split (default: the embedded scikit-learn digits)",
    )
    add(g, "--val-split", type=float, help="validation fraction of a DIR/<class> tree")
    add(g, "--img-size", type=int, help="image side in pixels (default: the backbone's; 32 for the digits)")
    add(g, "--strict-data", action="store_true", help="fail on an unreadable image instead of skipping it")
    add(
        g,
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="light training augmentation (default: on, off with --linear-probe)",
    )
    add(
        g,
        "--limit-train",
        type=int,
        metavar="N",
        help="use a seeded random subset of N training images (quick runs and tests)",
    )
    add(g, "--limit-val", type=int, metavar="N", help="use a seeded random subset of N validation images")
    add(
        g,
        "--workers",
        type=int,
        help="DataLoader worker processes (default: 0 for the in-memory digits, up to 4 for image folders)",
    )

    g = p.add_argument_group("training")
    add(g, "--epochs", type=int, help="training epochs")
    add(g, "--batch-size", type=int, help="images per step and process")
    add(g, "--lr", type=float, help="learning rate of the head (earlier groups: times --lr-decay per level)")
    add(g, "--optimizer", help="adamw, adam, sgd, rmsprop, ...")
    add(g, "--weight-decay", type=float, help="weight decay (not on biases and norm weights)")
    add(
        g,
        "--lr-decay",
        type=float,
        help="discriminative rate factor per layer group below the head "
        "(default: 0.5 with pretrained weights, none otherwise)",
    )
    add(g, "--scheduler", choices=["cosine", "step", "onecycle", "none"], help="LR schedule over all steps")
    add(g, "--warmup-epochs", type=int, help="linear LR warmup")
    add(g, "--label-smoothing", type=float, help="cross-entropy label smoothing")
    add(
        g,
        "--freeze",
        metavar="none|backbone|GROUPS",
        help="what starts frozen: auto (pretrained: head only, "
        "then a gradual thaw; random weights: nothing), none, backbone, or comma-separated layer groups",
    )
    add(
        g,
        "--unfreeze-at",
        action="append",
        metavar="EPOCH[:GROUP,...]",
        help="thaw layer groups at an "
        "epoch, e.g. 2:layer4,4:layer3 (repeatable); a bare EPOCH thaws every remaining group",
    )
    add(g, "--unfreeze-every", type=int, metavar="K", help="thaw one more layer group every K epochs")
    add(
        g,
        "--linear-probe",
        action="store_true",
        help="train only the head on a frozen backbone, with cached features when augmentation is off",
    )
    add(
        g,
        "--feature-cache",
        action=argparse.BooleanOptionalAction,
        help="cache the frozen backbone's "
        "features (default: whenever the whole backbone is frozen and augmentation is off)",
    )

    g = p.add_argument_group("system")
    add(g, "--device", help="auto, cpu, cuda or cuda:N")
    add(g, "--amp", action="store_true", help="mixed precision (bfloat16 on CPU and recent GPUs)")
    add(g, "--channels-last", action="store_true", help="NHWC memory format")
    add(g, "--compile", action="store_true", help="torch.compile the model")
    add(g, "--seed", type=int, help="random seed")

    g = p.add_argument_group("run folder")
    add(g, "--output", metavar="DIR", help="run folder (default: runs/<YYYYmmdd-HHMMSS>-<backbone>/)")
    add(
        g,
        "--resume",
        nargs="?",
        const="auto",
        metavar="PATH",
        help="continue a run: a run folder or its "
        "last.pt (no PATH: --output's, else the newest run of this backbone)",
    )
    add(g, "--overwrite", action="store_true", help="replace an existing run folder's files")
    add(
        g,
        "--eval-only",
        action="store_true",
        help="evaluate the weights on the validation set; write nothing",
    )
    add(g, "--config", metavar="FILE.yaml", help="read flags from YAML; command-line flags win")
    add(g, "--quiet", action="store_true", help="no progress bars or info logs; epoch lines only")
    p.set_defaults(func=_finetune)


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="describe a checkpoint, or dry-run loading it into a model",
        description="Describe a checkpoint file; with --model/--classes or --against, also show how it would "
        "load (a dry run: nothing is modified).",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="the checkpoint file")
    p.add_argument("--model", help="backbone name to dry-run the load into (with --classes)")
    p.add_argument("--classes", type=int, help="number of classes of --model")
    p.add_argument("--against", metavar="OTHER", help="another checkpoint whose layout to compare with")
    p.add_argument("--rule", action="append", default=[], metavar="OLD=>NEW", help="rename rule (repeatable)")
    p.add_argument("--key", help="where the weights sit inside the checkpoint (e.g. state_dict)")
    p.add_argument(
        "--salvage", action="store_true", help="read files weights_only refuses without running code"
    )
    p.set_defaults(func=_inspect)


def build_parser() -> argparse.ArgumentParser:
    """The ``transferkit`` argument parser (subcommands ``finetune`` and ``inspect``)."""
    parser = _Parser(prog="transferkit", description="Transfer learning on PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_finetune(sub)
    _add_inspect(sub)
    return parser


# ----------------------------------------------------------------------------------------------------------
# configuration layers


def _finetune_actions() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["finetune"]._actions if a.dest not in ("help",)}


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
        return [str(v) for v in values]
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
    return str(value)


def _read_config(
    path: str, actions: dict[str, argparse.Action], *, section: str | None = None
) -> dict[str, Any]:
    """Flags from a YAML file (an ``args.yaml`` of a run works too: its ``args`` section is used)."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}; fix its syntax") from None
    if data is None:
        return {}
    if isinstance(data, dict) and isinstance(data.get("args"), dict):
        data = data["args"]  # a run's args.yaml: the flags, not the resolved facts
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of flag: value, found a {type(data).__name__}"
        )
    out: dict[str, Any] = {}
    known = sorted(d for d in actions if d != "func")
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
    actions = _finetune_actions()
    cfg = dict(DEFAULTS)
    if saved:
        cfg.update({k: v for k, v in saved.items() if k in DEFAULTS and k not in _PER_INVOCATION})
    if explicit.get("config"):
        cfg.update(_read_config(explicit["config"], actions))
    cfg.update(explicit)
    for key in ("rule", "unfreeze_at"):
        cfg[key] = list(cfg.get(key) or [])
    return cfg


def _validate(cfg: dict[str, Any]) -> None:
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
    positive("limit_train")
    positive("limit_val")
    positive("unfreeze_every")
    positive("workers", minimum=0)
    positive("warmup_epochs", minimum=0, allow_none=False)
    if not (isinstance(cfg["lr"], int | float) and cfg["lr"] > 0):
        raise ConfigError(f"--lr must be a positive number, got {cfg['lr']!r}")
    if not (isinstance(cfg["weight_decay"], int | float) and cfg["weight_decay"] >= 0):
        raise ConfigError(f"--weight-decay must be >= 0, got {cfg['weight_decay']!r}")
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
    if cfg["feature_cache"] and cfg["augment"]:
        raise ConfigError("--feature-cache needs --no-augment: cached features would freeze one random draw")


def _parse_unfreeze_at(specs: Sequence[str]) -> dict[int, list[str] | None]:
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


# ----------------------------------------------------------------------------------------------------------
# output helpers


class _Console:
    """The only place that prints: rank 0, stdout for results, stderr for warnings and errors."""

    def __init__(
        self, rank: int = 0, bars: bool = False, log_handler: _DeferredHandler | None = None
    ) -> None:
        self.rank, self.bars, self.log_handler = rank, bars, log_handler

    def validated(self) -> None:
        """Validation passed: show the log records held back until now."""
        if self.log_handler is not None:
            self.log_handler.show_pending()

    def out(self, line: str) -> None:
        if self.rank != 0:
            return
        if self.bars:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def warn(self, line: str) -> None:
        if self.rank == 0:
            print(line, file=sys.stderr, flush=True)

    def progress(self, iterable: Any, total: int | None = None, desc: str = "") -> Any:
        if not self.bars:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


class _DeferredHandler(logging.StreamHandler):
    """Holds log records until :meth:`release`: a run that fails validation prints only its error line."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.pending: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.pending is not None:
            self.pending.append(record)
        else:
            super().emit(record)

    def show_pending(self) -> None:
        pending, self.pending = self.pending or [], None
        for record in pending:
            super().emit(record)


def _setup_logging(quiet: bool, rank: int) -> tuple[_DeferredHandler, Callable[[], None]]:
    """Send transferkit's log records to stderr (deferred until validation passed); returns the undo."""
    level = logging.WARNING if quiet else logging.INFO
    if rank != 0:
        level = logging.ERROR
    root = logging.getLogger("transferkit")
    handler = _DeferredHandler()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    # one "saved checkpoint" line per epoch says nothing the epoch line does not
    saver = logging.getLogger("transferkit.checkpoint")
    old_saver = saver.level
    saver.setLevel(max(level, logging.WARNING))

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(old_level)
        saver.setLevel(old_saver)

    return handler, undo


def _one_line(message: str) -> str:
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    return " | ".join(lines) if lines else "error"


def _safe_name(backbone: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", backbone).strip("-.") or "model"


# ----------------------------------------------------------------------------------------------------------
# finetune


def _resume_source(cfg: dict[str, Any]) -> Path:
    """The checkpoint a --resume names: a file, a run folder, --output's, or the newest run of the backbone."""
    value = cfg["resume"]
    if value != "auto":
        path = Path(value)
        if path.is_dir():
            path = path / "last.pt"
        if not path.is_file():
            raise ConfigError(f"--resume {value}: no checkpoint at {path}; give a run folder or its last.pt")
        return path
    if cfg.get("output"):
        path = Path(cfg["output"]) / "last.pt"
        if not path.is_file():
            raise ConfigError(f"--resume: {path} does not exist; the run in --output never finished an epoch")
        return path
    pattern = f"*-{_safe_name(cfg['backbone'] or '')}/last.pt"
    found = (
        sorted(Path("runs").glob(pattern), key=lambda p: p.stat().st_mtime) if Path("runs").is_dir() else []
    )
    if not found:
        raise ConfigError(f"--resume: no runs/{pattern} found; give --resume PATH or --output DIR")
    return found[-1]


def _saved_args(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "args.yaml"
    if not path.is_file():
        return {}
    return _read_config(str(path), _finetune_actions())


def _build_data(cfg: dict[str, Any]) -> tuple[Any, list[str]]:
    """Scan/check the data source before anything heavy: ``(folder split or None, class names)``."""
    from transferkit.data import split_image_folder

    if cfg["data"] is None:
        return None, [str(i) for i in range(10)]
    split = split_image_folder(
        cfg["data"], val_split=cfg["val_split"], seed=cfg["seed"], strict=cfg["strict_data"]
    )
    return split, split.class_names


def _setup_freeze(cfg: dict[str, Any], model: Any, pretrained: bool) -> tuple[Any, str, float | None]:
    """Freeze policy -> ``(GradualUnfreeze or None, description, lr_decay for the optimizer)``."""
    from transferkit.freeze import freeze, freeze_backbone
    from transferkit.schedule import GradualUnfreeze

    mode = str(cfg["freeze"]).strip()
    lr_decay = cfg["lr_decay"]
    schedule_decay = lr_decay if lr_decay is not None else (PRETRAINED_LR_DECAY if pretrained else 1.0)
    plan = _parse_unfreeze_at(cfg["unfreeze_at"])
    every = cfg["unfreeze_every"]
    if cfg["linear_probe"]:
        freeze_backbone(model)
        return None, "linear probe: backbone frozen, head trains", None
    if mode == "auto":
        if plan or every:
            mode = "backbone"
        elif pretrained:
            groups = list(model.layer_groups())
            below = max(1, len(groups) - 1)
            every = max(1, cfg["epochs"] // (2 * below))
            mode = "backbone"
        else:
            mode = "none"
    if mode == "none":
        if plan or every:
            raise ConfigError(
                "--unfreeze-at/--unfreeze-every need a frozen start; use --freeze backbone (or auto)"
            )
        return None, "nothing frozen: every layer trains", lr_decay
    if mode == "backbone":
        if not plan and not every:
            freeze_backbone(model)
            return None, "backbone frozen for the whole run: the head trains", None
        if every:
            sched = GradualUnfreeze(model, every=every, lr_decay=schedule_decay)
        else:
            below = list(model.layer_groups())[:-1]
            named = {g for gs in plan.values() if gs for g in gs}
            at = {
                e: (gs if gs is not None else [g for g in reversed(below) if g not in named])
                for e, gs in plan.items()
            }
            sched = GradualUnfreeze(model, at={e: g for e, g in at.items() if g}, lr_decay=schedule_decay)
        desc = "head only, then thaw " + ", ".join(
            f"{'+'.join(g)}@{e}" for e, g in sorted(sched.plan.items())
        )
        return sched, f"{desc} (lr x{schedule_decay} per level)", None
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


def _make_lr_schedule(cfg: dict[str, Any], optimizer: Any, steps_per_epoch: int) -> Any:
    from transferkit.schedule import LRSchedule

    total = cfg["epochs"] * steps_per_epoch
    kind = cfg["scheduler"]
    kwargs: dict[str, Any] = {}
    if kind == "step":
        kwargs["step_size"] = max(1, cfg["epochs"] // 3) * steps_per_epoch
    warm = cfg["warmup_epochs"] * steps_per_epoch
    return LRSchedule(optimizer, kind, total_steps=total, warmup_steps=warm, **kwargs)


def _prepare_run_dir(cfg: dict[str, Any], resume_path: Path | None) -> Path:
    """Decide the run folder (validating, creating nothing)."""
    if cfg["output"]:
        run_dir = Path(cfg["output"])
    elif resume_path is not None:
        run_dir = resume_path.parent
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{stamp}-{_safe_name(cfg['backbone'])}"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--output {run_dir} is a file; give a folder")
    occupied = run_dir.is_dir() and any(run_dir.iterdir())
    if occupied and not (cfg["overwrite"] or resume_path is not None):
        raise ConfigError(
            f"run folder {run_dir} already exists and is not empty; use --resume to continue it, "
            "--overwrite to replace it, or another --output"
        )
    return run_dir


def _broadcast(obj: Any, dist_ctx: Any) -> Any:
    """Rank 0's value on every rank (run folder names hold a timestamp; errors must agree)."""
    if not dist_ctx.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _finetune(ns: argparse.Namespace) -> int:
    explicit = {k: v for k, v in vars(ns).items() if k not in ("func", "command", "argv")}
    cfg = resolve_config(explicit)
    resume_path = None
    if cfg["resume"]:
        resume_path = _resume_source(cfg)
        # the run's own args.yaml is the base; this command line (and --config) override it
        cfg = resolve_config(explicit, _saved_args(resume_path.parent))
    _validate(cfg)

    from transferkit.train import cleanup_distributed, init_distributed

    dist_ctx, device = init_distributed(cfg["device"])
    log_handler, undo_logging = _setup_logging(cfg["quiet"], dist_ctx.rank)
    bars = dist_ctx.is_main and not cfg["quiet"] and sys.stderr.isatty()
    console = _Console(dist_ctx.rank, bars, log_handler)
    try:
        return _run(cfg, dist_ctx, device, console, resume_path, list(ns.argv))
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
    augment: bool
    use_cache: bool
    freeze_schedule: Any = None
    freeze_desc: str = ""
    optimizer: Any = None
    lr_schedule: Any = None
    init_report: Any = None
    resume_path: Path | None = None
    resume_ckpt: Any = None
    run_dir: Path | None = None
    argv: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


def _run(
    cfg: dict[str, Any],
    dist_ctx: Any,
    device: Any,
    console: _Console,
    resume_path: Path | None,
    argv: list[str],
) -> int:
    job = _prepare(cfg, dist_ctx, device, resume_path)
    job.argv = argv
    console.validated()
    if not job.pretrained and job.weights_requested is not None and not cfg["eval_only"]:
        console.warn(
            "=" * 78 + f"\nWARNING: no pretrained weights for {cfg['backbone']} could be loaded (--weights "
            f"{cfg['weights']}; offline and not cached?).\nTraining from RANDOM initialisation: every layer "
            "trains. Pass --weights PATH to use a local file.\n" + "=" * 78
        )
    if job.init_report is not None:
        logger.info("init checkpoint %s:\n%s", cfg["init_checkpoint"], job.init_report)
    job.model.to(device)
    if cfg["eval_only"]:
        return _eval_only(job, console)
    trainer = _train(job, console)
    return _finish(job, trainer, console)


def _prepare(cfg: dict[str, Any], dist_ctx: Any, device: Any, resume_path: Path | None) -> _Job:
    """Validate every input and build model, data, schedules; decide the run folder. Writes nothing."""
    from transferkit.backbones import create_model
    from transferkit.rename import parse_rule
    from transferkit.train import seed_everything

    seed_everything(cfg["seed"])
    rules = [parse_rule(r) for r in cfg["rule"]]
    split, class_names = _build_data(cfg)
    if cfg["classes"] is not None and cfg["classes"] != len(class_names):
        shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
        raise ConfigError(
            f"--classes {cfg['classes']} does not match the data: {cfg['data'] or 'the embedded digits'} has "
            f"{len(class_names)} classes ({shown}); drop --classes or fix it"
        )
    weights = None if str(cfg["weights"]).lower() in ("none", "null", "random") else cfg["weights"]
    model = create_model(cfg["backbone"], len(class_names), weights=weights, class_names=class_names)
    pretrained = bool(getattr(model, "pretrained", False))
    init_report = None
    if cfg["init_checkpoint"]:
        from transferkit.partial import load_partial

        init_report = load_partial(model, cfg["init_checkpoint"], rules=rules, key=cfg["key"])
        pretrained = True
    elif rules:
        raise ConfigError("--rule applies to --init-checkpoint; give --init-checkpoint PATH or drop --rule")
    augment = cfg["augment"] if cfg["augment"] is not None else not cfg["linear_probe"]
    freeze_sched, freeze_desc, opt_lr_decay = _setup_freeze(cfg, model, pretrained)
    bundle = _load_bundle(cfg, split, model, augment)
    head = set(model.head_parameter_names())
    backbone_frozen = freeze_sched is None and not any(
        p.requires_grad for n, p in model.named_parameters() if n not in head
    )
    use_cache = (
        cfg["feature_cache"] if cfg["feature_cache"] is not None else (backbone_frozen and not augment)
    )
    if use_cache and not backbone_frozen:
        raise ConfigError(
            "--feature-cache needs the whole backbone frozen for the whole run (--linear-probe)"
        )
    job = _Job(cfg, dist_ctx, device, model, bundle, class_names, pretrained, weights, augment, use_cache,
               freeze_sched, freeze_desc, init_report=init_report, resume_path=resume_path)  # fmt: skip
    if cfg["eval_only"]:
        if resume_path is not None:
            from transferkit.checkpoint import restore_checkpoint

            restore_checkpoint(resume_path, model=model, restore_rng=False)
        return job
    job.resume_ckpt = _load_resume(resume_path) if resume_path is not None else None
    _build_optimizer(job, opt_lr_decay)
    decided = None
    if dist_ctx.is_main:
        try:
            decided = _prepare_run_dir(cfg, resume_path)
        except ConfigError as exc:
            decided = exc
    decided = _broadcast(decided, dist_ctx)  # rank 0 decides (the folder name holds a timestamp)
    if isinstance(decided, ConfigError):
        raise decided
    job.run_dir = decided
    return job


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
        job.model, cfg["optimizer"], lr=cfg["lr"], weight_decay=cfg["weight_decay"], lr_decay=lr_decay
    )
    job.lr_schedule = _make_lr_schedule(cfg, job.optimizer, len(probe))


def _train(job: _Job, console: _Console) -> Any:
    """Feature cache, loaders, run folder, the epochs (Trainer.fit)."""
    from transferkit.data import cache_features, make_loaders
    from transferkit.report import RUN_FILES, format_epoch, plot_curves, write_metrics_csv, write_yaml
    from transferkit.train import Trainer, amp_dtype_for

    cfg, model, device, dist_ctx, run_dir = job.cfg, job.model, job.device, job.dist, job.run_dir
    if job.use_cache:
        amp_dtype = amp_dtype_for(device) if cfg["amp"] else None
        job.bundle = cache_features(model, job.bundle, cfg["batch_size"], device, amp_dtype=amp_dtype,
                                    channels_last=cfg["channels_last"], workers=_workers(cfg, job.bundle))  # fmt: skip
    train_loader, val_loader = make_loaders(
        job.bundle, cfg["batch_size"], workers=0 if job.use_cache else _workers(cfg, job.bundle), seed=cfg["seed"],
        rank=dist_ctx.rank, world_size=dist_ctx.world_size, pin_memory=device.type == "cuda",
    )  # fmt: skip
    job.facts = _resolved_facts(job, train_loader)
    if dist_ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg["overwrite"]:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
        args_out = {k: v for k, v in cfg.items() if k != "config"}
        write_yaml(run_dir / "args.yaml", {"args": args_out, "resolved": job.facts})
    job.best_state = {}

    def on_epoch_end(trainer: Trainer, row: dict[str, Any], result: Any) -> None:
        if trainer.best_epoch == row["epoch"]:  # keep the best weights for the export, on every rank
            job.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        console.out(format_epoch(row, cfg["epochs"]))
        if dist_ctx.is_main:
            write_metrics_csv(run_dir / "metrics.csv", trainer.history)
            plot_curves(trainer.history, run_dir)

    trainer = Trainer(
        model, job.optimizer, train_loader, val_loader, epochs=cfg["epochs"], num_classes=len(job.class_names),
        device=device, lr_schedule=job.lr_schedule, freeze_schedule=job.freeze_schedule, amp=cfg["amp"],
        channels_last=cfg["channels_last"], compile=cfg["compile"], dist=dist_ctx,
        inputs="features" if job.use_cache else "images", frozen_backbone=cfg["linear_probe"], run_dir=run_dir,
        meta={**getattr(model, "meta", {}), "img_size": job.bundle.img_size, "run": str(run_dir)},
        seed=cfg["seed"], label_smoothing=cfg["label_smoothing"], progress=console.progress,
        on_epoch_end=on_epoch_end,
    )  # fmt: skip
    if job.resume_ckpt is not None:
        start = trainer.resume(job.resume_ckpt)
        console.out(f"resumed {job.resume_path} at epoch {start + 1}/{cfg['epochs']}")
    for line in _header(cfg, job.facts):
        console.out(line)
    trainer.fit()
    return trainer


def _finish(job: _Job, trainer: Any, console: _Console) -> int:
    """Best weights -> confusion matrix, model.safetensors + labels.json; the last line."""
    from transferkit.report import export_model, plot_confusion_matrix, plot_curves, write_metrics_csv

    cfg, model, run_dir = job.cfg, job.model, job.run_dir
    if not job.best_state:  # resumed, and no epoch since beat the best: read it back
        from transferkit.checkpoint import load_checkpoint

        _barrier(job.dist)
        job.best_state = load_checkpoint(run_dir / "best.pt")["models"]["model"]
    model.load_state_dict(job.best_state)
    final = trainer.evaluate()
    if job.dist.is_main:
        write_metrics_csv(run_dir / "metrics.csv", trainer.history)
        plot_curves(trainer.history, run_dir)
        plot_confusion_matrix(final.confusion, job.class_names, run_dir / "confusion_matrix.png")
        info = {
            "backbone": cfg["backbone"],
            "img_size": job.bundle.img_size,
            "mean": list(model.data_config["mean"]),
            "std": list(model.data_config["std"]),
            "in_chans": getattr(model, "in_chans", 3),
            "epoch": trainer.best_epoch + 1,
            "val_acc": final.acc,
            "data": job.facts["data"],
        }
        # the network's own key layout (no "backbone." prefix): the file loads into the plain torchvision/timm
        # network and into create_model(..., weights="model.safetensors")
        native = {k.removeprefix("backbone."): v for k, v in job.best_state.items()}
        info["layout"] = (
            "native: load into the plain network, or create_model(backbone, num_classes, weights=file)"
        )
        export_model(run_dir, native, job.class_names, info)
    minutes = (time.perf_counter() - job.started) / 60
    console.out(
        f"best val accuracy {trainer.best_acc:.2%} (epoch {trainer.best_epoch + 1}/{cfg['epochs']}, "
        f"{minutes:.1f} min); run folder: {run_dir}"
    )
    return 0


def _barrier(dist_ctx: Any) -> None:
    if dist_ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def _workers(cfg: dict[str, Any], bundle: Any) -> int:
    if cfg["workers"] is not None:
        return cfg["workers"]
    if bundle.source == "digits":
        return 0  # in-memory tensors: worker processes would only add start-up and copying
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _load_bundle(cfg: dict[str, Any], split: Any, model: Any, augment: bool) -> Any:
    from transferkit.data import DataBundle, limit_dataset, load_digits_data, load_image_folder

    config = model.data_config
    if split is None:
        bundle = load_digits_data(
            cfg["img_size"] or DIGITS_IMG_SIZE, config["mean"], config["std"], augment=augment
        )
    else:
        bundle = load_image_folder(
            split, config, img_size=cfg["img_size"], augment=augment, in_chans=getattr(model, "in_chans", 3)
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


def _load_resume(path: Path) -> Any:
    from transferkit.checkpoint import load_checkpoint
    from transferkit.errors import CheckpointError

    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "models" not in ckpt or ckpt.get("epoch") is None:
        raise CheckpointError(
            f"--resume {path}: not a transferkit training checkpoint (last.pt/best.pt of a run)"
        )
    return ckpt


def _resolved_facts(job: _Job, train_loader: Any) -> dict[str, Any]:
    """What the run really used, for args.yaml's ``resolved`` section."""
    import torch

    import transferkit

    model, bundle = job.model, job.bundle
    return {
        "command": " ".join(["transferkit", "finetune", *job.argv]),
        "backbone": job.cfg["backbone"],
        "pretrained_weights_used": job.pretrained,
        "weights_source": str(getattr(model, "weights", "random")),
        "init_checkpoint_tensors": len(job.init_report.loaded) if job.init_report is not None else None,
        "num_classes": len(bundle.class_names),
        "class_names": list(bundle.class_names),
        "data": bundle.source,
        "train_images": len(bundle.train),
        "val_images": len(bundle.val),
        "unreadable_images_skipped": len(bundle.skipped),
        "img_size": bundle.img_size,
        "mean": list(model.data_config["mean"]),
        "std": list(model.data_config["std"]),
        "augment": bool(job.augment) and not job.use_cache,
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


def _header(cfg: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    weights = "pretrained" if facts["pretrained_weights_used"] else "random init"
    return [
        f"{facts['backbone']} ({weights}), {facts['num_classes']} classes, data {facts['data']}: "
        f"{facts['train_images']} train / {facts['val_images']} val images at {facts['img_size']} px",
        f"{facts['freeze']}; {cfg['optimizer']} lr {cfg['lr']:g}, {cfg['scheduler']} schedule, {cfg['epochs']} "
        f"epochs x {facts['steps_per_epoch']} steps on {facts['device']}"
        + (f" x {facts['world_size']} processes" if facts["world_size"] > 1 else "")
        + (", cached features" if facts["feature_cache"] else ""),
    ]


def _eval_only(job: _Job, console: _Console) -> int:
    """Evaluate the weights (pretrained, --init-checkpoint or --resume) on the validation set; write nothing."""
    import torch

    from transferkit.data import make_loaders
    from transferkit.train import Trainer

    cfg, bundle = job.cfg, job.bundle
    if job.resume_path is None and not job.pretrained:
        console.warn(
            "WARNING: --eval-only with random weights; give --resume RUN, --init-checkpoint or --weights"
        )
    _, val_loader = make_loaders(bundle, cfg["batch_size"], workers=_workers(cfg, bundle), rank=job.dist.rank,
                                 world_size=job.dist.world_size, pin_memory=job.device.type == "cuda")  # fmt: skip
    no_training = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    trainer = Trainer(job.model, no_training, val_loader, val_loader, epochs=1, num_classes=bundle.num_classes,
                      device=job.device, amp=cfg["amp"], channels_last=cfg["channels_last"], dist=job.dist)  # fmt: skip
    result = trainer.evaluate()
    console.out(
        f"val loss {result.loss:.4f}, val accuracy {result.acc:.2%} on {result.count} images ({bundle.source})"
    )
    return 0


# ----------------------------------------------------------------------------------------------------------
# inspect


def _inspect(ns: argparse.Namespace) -> int:
    from transferkit.inspect import inspect_checkpoint

    if ns.model and ns.against:
        raise ConfigError("give --model (with --classes) or --against, not both")
    if ns.model and ns.classes is None:
        raise ConfigError("--model needs --classes N (the number of classes of the model to load into)")
    if ns.classes is not None and ns.classes < 1:
        raise ConfigError(f"--classes must be an integer >= 1, got {ns.classes}")
    if not Path(ns.checkpoint).is_file():
        raise ConfigError(f"checkpoint {ns.checkpoint} does not exist")
    handler, undo_logging = _setup_logging(quiet=True, rank=0)
    handler.show_pending()
    try:
        text = inspect_checkpoint(
            ns.checkpoint,
            model=ns.model,
            num_classes=ns.classes,
            against=ns.against,
            rules=list(ns.rule),
            salvage=ns.salvage,
            key=ns.key,
        )
    finally:
        undo_logging()
    print(text)
    return 0


# ----------------------------------------------------------------------------------------------------------
# entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input or a TransferkitError, 130 interrupted).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = build_parser().parse_args(args)
        ns.argv = args[1:]
        return int(ns.func(ns) or 0)
    except TransferkitError as exc:
        rank = int(os.environ.get("RANK", "0"))
        if rank == 0:
            print(f"error: {_one_line(str(exc))}", file=sys.stderr, flush=True)
        return 2
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
