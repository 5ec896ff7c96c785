"""``FinetuneSpec``: every option of a fine-tuning run, typed, with its default, its check and its YAML form.

The one definition of the options: ``transferkit finetune``'s flags are generated from these fields (a
field's metadata holds its help text, its group and how argparse reads it), ``args.yaml`` is
:meth:`FinetuneSpec.to_dict`, and :meth:`FinetuneSpec.from_dict` reads it back. Help texts and errors name
options as API parameters (`` `lr` ``); the CLI shows them as flags.

Example:
    >>> spec = FinetuneSpec(backbone="resnet18", classes=10, epochs=2)
    >>> spec.lr, spec.to_dict()["epochs"]  # lr: resolved by the weights when the run starts
    (None, 2)
    >>> FinetuneSpec.from_dict(spec.to_dict()) == spec
    True
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from transferkit.errors import ConfigError
from transferkit.run.validate import check_options

__all__ = ["FinetuneSpec", "PER_INVOCATION", "GROUPS"]

# options describing one invocation, never inherited from a resumed run's args.yaml
PER_INVOCATION = ("resume", "overwrite", "eval_only", "config", "quiet", "output")

# the groups of `transferkit finetune --help`, in order
_MODEL, _DATA, _TRAINING = "model", "data", "training"
_RECIPE, _SYSTEM, _RUN = "recipe options (timm's implementations)", "system", "run folder"
GROUPS = (_MODEL, _DATA, _TRAINING, _RECIPE, _SYSTEM, _RUN)


def _opt(default: Any, help: str, group: str, **cli: Any) -> Any:  # noqa: A002
    """A field: its default (a fresh list for ``[]``), help text, group and argparse keywords in its metadata."""
    meta = {"help": help, "group": group, "cli": cli}
    if isinstance(default, list):
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FinetuneSpec:
    """Every option of a fine-tuning run (``transferkit.finetune`` / ``transferkit finetune``).

    Construct it with keywords; it checks every value that needs no model or data and raises
    :class:`~transferkit.errors.ConfigError` (with ``param``) for the first that cannot work. The
    fields' help texts are ``transferkit finetune --help``.
    """

    per_invocation: ClassVar[tuple[str, ...]] = PER_INVOCATION

    backbone: str | None = _opt(
        None, "torchvision name (resnet50), timm:NAME, or package.module:callable", group=_MODEL
    )
    classes: int | None = _opt(
        None, "number of classes; must agree with the data (default: from the data)", type=int, group=_MODEL
    )
    data: str | None = _opt(
        None,
        "image folder: DIR/train/<class> + DIR/val/<class>, or DIR/<class> split by `val_split` (default: the "
        "embedded scikit-learn digits)",
        metavar="DIR",
        group=_DATA,
    )
    val_split: float = _opt(0.2, "validation fraction of a DIR/<class> tree", type=float, group=_DATA)
    img_size: int | None = _opt(
        None, "image side in pixels (default: the backbone's; 32 for the digits)", type=int, group=_DATA
    )
    strict_data: bool = _opt(
        False, "fail on an unreadable image instead of skipping it", action="store_true", group=_DATA
    )
    aug: str | None = _opt(
        None,
        "training augmentation: light (digits: shifts; folders: random resized crop and flip), or light plus "
        "timm's RandAugment (rand-m9-mstd0.5) or torchvision's TrivialAugmentWide (default: light, none with "
        "`linear_probe`)",
        choices=["none", "light", "randaugment", "trivialaugment"],
        group=_DATA,
    )
    limit_train: int | None = _opt(
        None,
        "use a seeded random subset of N training images (quick runs and tests)",
        type=int,
        metavar="N",
        group=_DATA,
    )
    limit_val: int | None = _opt(
        None, "use a seeded random subset of N validation images", type=int, metavar="N", group=_DATA
    )
    weights: str | None = _opt(
        "auto", "auto (pretrained if available offline, else random), imagenet, PATH or none", group=_MODEL
    )
    head: str = _opt(
        "auto",
        "the checkpoint's classifier: auto keeps it only when its class names match the data's, fresh always "
        "starts a new one, keep loads one that fits even with unknown class names",
        choices=["auto", "fresh", "keep"],
        group=_MODEL,
    )
    mean: list[float] | None = _opt(
        None,
        "normalisation mean the weights were trained with, one value or one a channel (default: the weights' "
        "own: torchvision's and timm's configs, a factory's pretrained_cfg, else ImageNet's)",
        type=float,
        nargs="+",
        metavar="M",
        group=_DATA,
    )
    std: list[float] | None = _opt(
        None, "normalisation std, as `mean`", type=float, nargs="+", metavar="S", group=_DATA
    )
    init_checkpoint: str | None = _opt(
        None,
        "start from this checkpoint's weights (partial load)",
        metavar="PATH",
        group=_MODEL,
    )
    rule: list[str] = _opt(
        [],
        "rename rule for `init_checkpoint` (repeatable; 're:PATTERN=>REPL' for a regex)",
        action="append",
        metavar="OLD=>NEW",
        group=_MODEL,
    )
    key: str | None = _opt(
        None, "where the weights sit inside `init_checkpoint` (e.g. state_dict, models.model)", group=_MODEL
    )
    salvage: bool = _opt(
        False,
        "read an `init_checkpoint` that weights_only refuses with the restricted unpickler: its tensors come out, "
        "nothing from the file runs",
        action="store_true",
        group=_MODEL,
    )
    align: str = _opt(
        "auto",
        "how checkpoint tensors pair with the model's: names, structure (order, shapes and module grouping, for "
        "weights from another implementation), or auto (names; structure when no name matches) (`weights`=PATH "
        "and `init_checkpoint`)",
        choices=("auto", "names", "structure"),
        group=_MODEL,
    )
    epochs: int = _opt(10, "training epochs", type=int, group=_TRAINING)
    batch_size: int = _opt(64, "images per step and process", type=int, group=_TRAINING)
    lr: float | None = _opt(
        None,
        "base learning rate (default: 1e-2 on pretrained weights, 1e-3 on random ones): layer groups below the "
        "head train at `lr` times `lr_decay` per level, the head at `lr` times `head_lr_scale`",
        type=float,
        group=_TRAINING,
    )
    optimizer: str = _opt("adamw", "adamw, adam, sgd, rmsprop, ...", group=_TRAINING)
    weight_decay: float = _opt(
        0.05, "weight decay (not on biases and norm weights)", type=float, group=_TRAINING
    )
    lr_decay: float | None = _opt(
        None,
        "discriminative rate factor per layer group below the head (default with pretrained weights: spread so "
        "that the lowest group trains at 0.1 x `lr`; one rate otherwise)",
        type=float,
        group=_TRAINING,
    )
    head_lr_scale: float | None = _opt(
        None,
        "the head trains at X times `lr` (default with pretrained weights: 256 / the head's input features, "
        "between 1 and 3; 1 otherwise)",
        type=float,
        metavar="X",
        group=_TRAINING,
    )
    scheduler: str = _opt(
        "cosine",
        "LR schedule over all steps",
        choices=["cosine", "step", "onecycle", "none"],
        group=_TRAINING,
    )
    warmup_epochs: int = _opt(0, "linear LR warmup", type=int, group=_TRAINING)
    freeze: str = _opt(
        "auto",
        "what starts frozen: auto (nothing: every layer trains from the start, pretrained layers at "
        "discriminative rates), none, backbone, or comma-separated layer groups",
        metavar="none|backbone|GROUPS",
        group=_TRAINING,
    )
    unfreeze_at: list[str] = _opt(
        [],
        "thaw layer groups after EPOCH epochs, e.g. 2:layer4,4:layer3 (layer4 trains from epoch 3 on; "
        "repeatable); a bare EPOCH thaws every remaining group",
        action="append",
        metavar="EPOCH[:GROUP,...]",
        group=_TRAINING,
    )
    unfreeze_every: int | None = _opt(
        None, "thaw one more layer group every K epochs", type=int, metavar="K", group=_TRAINING
    )
    linear_probe: bool = _opt(
        False,
        "train only the head on a frozen backbone, with cached features when augmentation is off",
        action="store_true",
        group=_TRAINING,
    )
    feature_cache: bool | None = _opt(
        None,
        "cache the frozen backbone's features (default: whenever the whole backbone is frozen and augmentation "
        "is off)",
        action=argparse.BooleanOptionalAction,
        group=_TRAINING,
    )
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing", type=float, group=_TRAINING)
    mixup: float = _opt(
        0.0,
        "mixup with Beta(ALPHA, ALPHA), e.g. 0.2 (soft-target loss)",
        type=float,
        metavar="ALPHA",
        group=_RECIPE,
    )
    cutmix: float = _opt(
        0.0,
        "CutMix with Beta(ALPHA, ALPHA), e.g. 1.0; with `mixup` each batch uses one of the two",
        type=float,
        metavar="ALPHA",
        group=_RECIPE,
    )
    mixup_prob: float = _opt(
        1.0, "probability that a batch is mixed (`mixup`/`cutmix`)", type=float, metavar="P", group=_RECIPE
    )
    model_ema: float | None = _opt(
        None,
        "keep an EMA of the weights (decay 0.999 when no DECAY is given, with timm's warmup), validate it every "
        "epoch, and export it when it validates better",
        type=float,
        nargs="?",
        const=0.999,  # transferkit.recipes.DEFAULT_EMA_DECAY (not imported: the parser stays torch-free)
        metavar="DECAY",
        group=_RECIPE,
    )
    drop_path: float | None = _opt(
        None,
        "stochastic depth for timm backbones, e.g. 0.1",
        type=float,
        metavar="RATE",
        group=_RECIPE,
    )
    layer_decay: float | None = _opt(
        None,
        "layer-wise LR decay instead of `lr_decay`: each layer (a timm block, else a layer group) trains at the "
        "rate of the one above times FACTOR, e.g. 0.75",
        type=float,
        metavar="FACTOR",
        group=_RECIPE,
    )
    amp: bool = _opt(
        False, "mixed precision (bfloat16 on CPU and recent GPUs)", action="store_true", group=_SYSTEM
    )
    channels_last: bool = _opt(False, "NHWC memory format", action="store_true", group=_SYSTEM)
    compile: bool = _opt(False, "torch.compile the model", action="store_true", group=_SYSTEM)
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N", group=_SYSTEM)
    workers: int | None = _opt(
        None,
        "DataLoader worker processes (default: 0 for the in-memory digits, up to 4 for image folders)",
        type=int,
        group=_DATA,
    )
    seed: int = _opt(0, "random seed", type=int, group=_SYSTEM)
    output: str | None = _opt(
        None, "run folder (default: runs/<YYYYmmdd-HHMMSS>-<backbone>/)", metavar="DIR", group=_RUN
    )
    resume: str | None = _opt(
        None,
        "continue a run: a run folder or its last.pt (no PATH: `output`'s, else the newest run of this backbone)",
        nargs="?",
        const="auto",
        metavar="PATH",
        group=_RUN,
    )
    overwrite: bool = _opt(False, "replace an existing run folder's files", action="store_true", group=_RUN)
    eval_only: bool = _opt(
        False,
        "evaluate the weights on the validation set; write nothing",
        action="store_true",
        group=_RUN,
    )
    config: str | None = _opt(
        None, "read flags from YAML; command-line flags win", metavar="FILE.yaml", group=_RUN
    )
    quiet: bool = _opt(
        False, "no progress bars or info logs; epoch lines only", action="store_true", group=_RUN
    )

    def __post_init__(self) -> None:
        for name in ("rule", "unfreeze_at"):  # a tuple or any iterable of strings: stored as a list
            object.__setattr__(self, name, [str(v) for v in (getattr(self, name) or [])])
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                object.__setattr__(self, name, [value])
            elif isinstance(value, tuple):
                object.__setattr__(self, name, list(value))
        check_options(self.to_dict())

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{option: default}`` in field order (fresh lists)."""
        return {f.name: ([] if f.default_factory is list else f.default) for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        """The options as plain values in field order: what ``args.yaml`` holds under ``args``."""
        return {f.name: _copy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneSpec:
        """The spec of ``values`` (e.g. ``args.yaml``'s ``args``; ``batch-size`` and ``batch_size`` both work).

        Raises:
            ConfigError: an unknown option (with close matches) or a value that cannot work.
        """
        names = [f.name for f in fields(cls)]
        given = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = [k for k in given if k not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown fine-tuning option {unknown[0]!r}{hint}", param=unknown[0])
        return cls(**given)

    def replace(self, **changes: Any) -> FinetuneSpec:
        """A copy with ``changes`` applied (and checked, an unknown option included)."""
        return type(self).from_dict({**self.to_dict(), **changes})


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value
