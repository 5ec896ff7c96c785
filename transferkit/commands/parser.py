"""The argparse definitions of ``transferkit finetune``, ``transferkit inspect`` and ``transferkit convert``.

Every ``finetune`` flag uses ``argparse.SUPPRESS`` as its default, so the parsed namespace holds only the
flags given on the command line: :func:`transferkit.commands.config.resolve_config` layers them over
:data:`DEFAULTS`, a resumed run's ``args.yaml`` and ``--config``. Parse errors raise
:class:`~transferkit.errors.ConfigError` (one line, exit 2) instead of argparse's own exit.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from transferkit.errors import ConfigError

__all__ = ["DEFAULTS", "build_parser", "finetune_actions"]

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
    "aug": None,
    "limit_train": None,
    "limit_val": None,
    "weights": "auto",
    "head": "auto",
    "mean": None,
    "std": None,
    "init_checkpoint": None,
    "rule": [],
    "key": None,
    "salvage": False,
    "align": "auto",
    "epochs": 10,
    "batch_size": 64,
    "lr": None,
    "optimizer": "adamw",
    "weight_decay": 0.05,
    "lr_decay": None,
    "head_lr_scale": None,
    "scheduler": "cosine",
    "warmup_epochs": 0,
    "freeze": "auto",
    "unfreeze_at": [],
    "unfreeze_every": None,
    "linear_probe": False,
    "feature_cache": None,
    "label_smoothing": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "mixup_prob": 1.0,
    "model_ema": None,
    "drop_path": None,
    "layer_decay": None,
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


ALIGN_CHOICES = ("auto", "names", "structure")  # transferkit.align.ALIGN_MODES, without importing torch
ALIGN_HELP = (
    "how checkpoint tensors pair with the model's: names, structure (order, shapes and module grouping, "
    "for weights from another implementation), or auto (names; structure when no name matches)"
)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become ConfigError: one line, exit 2, through the same path as every error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse (before Python 3.13) takes "-1e-3" for an option, so `--lr -1e-3` failed to parse while
        # `--lr=-1e-3` worked: accept every negative number as a value, as Python 3.13's argparse does
        self._negative_number_matcher = re.compile(r"^-\.?\d")

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
    add(
        g,
        "--head",
        choices=["auto", "fresh", "keep"],
        help="the checkpoint's classifier: auto keeps it only when its class names match the data's, "
        "fresh always starts a new one, keep loads one that fits even with unknown class names",
    )
    add(g, "--init-checkpoint", metavar="PATH", help="start from this checkpoint's weights (partial load)")
    add(
        g,
        "--rule",
        action="append",
        metavar="OLD=>NEW",
        help="rename rule for --init-checkpoint (repeatable; 're:PATTERN=>REPL' for a regex)",
    )
    add(g, "--key", help="where the weights sit inside --init-checkpoint (e.g. state_dict, models.model)")
    add(g, "--align", choices=ALIGN_CHOICES, help=ALIGN_HELP + " (--weights PATH and --init-checkpoint)")
    add(
        g,
        "--salvage",
        action="store_true",
        help="read an --init-checkpoint that weights_only refuses with the restricted unpickler: its "
        "tensors come out, nothing from the file runs",
    )

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
    add(
        g,
        "--mean",
        type=float,
        nargs="+",
        metavar="M",
        help="normalisation mean the weights were trained with, one value or one a channel (default: the "
        "weights' own: torchvision's and timm's configs, a factory's pretrained_cfg, else ImageNet's)",
    )
    add(g, "--std", type=float, nargs="+", metavar="S", help="normalisation std, as --mean")
    add(g, "--strict-data", action="store_true", help="fail on an unreadable image instead of skipping it")
    add(
        g,
        "--aug",
        choices=["none", "light", "randaugment", "trivialaugment"],
        help="training augmentation: light (digits: shifts; folders: random resized crop and flip), or light "
        "plus timm's RandAugment (rand-m9-mstd0.5) or torchvision's TrivialAugmentWide "
        "(default: light, none with --linear-probe)",
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
    add(
        g,
        "--lr",
        type=float,
        help="base learning rate (default: 1e-2 on pretrained weights, 1e-3 on random ones): layer groups "
        "below the head train at --lr times --lr-decay per level, the head at --lr times --head-lr-scale",
    )
    add(g, "--optimizer", help="adamw, adam, sgd, rmsprop, ...")
    add(g, "--weight-decay", type=float, help="weight decay (not on biases and norm weights)")
    add(
        g,
        "--lr-decay",
        type=float,
        help="discriminative rate factor per layer group below the head (default with pretrained weights: "
        "spread so that the lowest group trains at 0.1 x --lr; one rate otherwise)",
    )
    add(
        g,
        "--head-lr-scale",
        type=float,
        metavar="X",
        help="the head trains at X times --lr (default with pretrained weights: 256 / the head's input "
        "features, between 1 and 3; 1 otherwise)",
    )
    add(g, "--scheduler", choices=["cosine", "step", "onecycle", "none"], help="LR schedule over all steps")
    add(g, "--warmup-epochs", type=int, help="linear LR warmup")
    add(g, "--label-smoothing", type=float, help="cross-entropy label smoothing")
    add(
        g,
        "--freeze",
        metavar="none|backbone|GROUPS",
        help="what starts frozen: auto (nothing: every layer trains from the start, pretrained layers at "
        "discriminative rates), none, backbone, or comma-separated layer groups",
    )
    add(
        g,
        "--unfreeze-at",
        action="append",
        metavar="EPOCH[:GROUP,...]",
        help="thaw layer groups after "
        "EPOCH epochs, e.g. 2:layer4,4:layer3 (layer4 trains from epoch 3 on; repeatable); a bare EPOCH "
        "thaws every remaining group",
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

    g = p.add_argument_group("recipe options (timm's implementations)")
    add(
        g,
        "--mixup",
        type=float,
        metavar="ALPHA",
        help="mixup with Beta(ALPHA, ALPHA), e.g. 0.2 (soft-target loss)",
    )
    add(
        g,
        "--cutmix",
        type=float,
        metavar="ALPHA",
        help="CutMix with Beta(ALPHA, ALPHA), e.g. 1.0; with --mixup each batch uses one of the two",
    )
    add(
        g,
        "--mixup-prob",
        type=float,
        metavar="P",
        help="probability that a batch is mixed (--mixup/--cutmix)",
    )
    add(
        g,
        "--model-ema",
        type=float,
        nargs="?",
        const=0.999,  # transferkit.recipes.DEFAULT_EMA_DECAY (not imported: the parser stays torch-free)
        metavar="DECAY",
        help="keep an EMA of the weights (decay 0.999 when no DECAY is given, with timm's warmup), validate it "
        "every epoch, and export it when it validates better",
    )
    add(g, "--drop-path", type=float, metavar="RATE", help="stochastic depth for timm backbones, e.g. 0.1")
    add(
        g,
        "--layer-decay",
        type=float,
        metavar="FACTOR",
        help="layer-wise LR decay instead of --lr-decay: each layer (a timm block, else a layer group) trains "
        "at the rate of the one above times FACTOR, e.g. 0.75",
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
    p.add_argument("--align", choices=ALIGN_CHOICES, default="auto", help=ALIGN_HELP + " (default: auto)")


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="rewrite a checkpoint from another implementation in a model's own layout (.safetensors)",
        description="Load CKPT into --model (by name, by structure, or through a registered converter) and "
        "write the tensors that loaded, under the model's own names, to --out (.safetensors, with the "
        "source's name, SHA-256 and the pairing method in its metadata). Later loads match by name.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="the checkpoint file")
    p.add_argument("--model", required=True, help="backbone whose layout to write (resnet50, timm:NAME)")
    p.add_argument("--classes", type=int, help="classes of --model (default: the checkpoint's head)")
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="the file to write")
    p.add_argument("--align", choices=ALIGN_CHOICES, default="auto", help=ALIGN_HELP + " (default: auto)")
    p.add_argument(
        "--converter",
        metavar="SOURCE->TARGET",
        help="a registered converter (default: the one whose source layout CKPT is in, if any)",
    )
    p.add_argument("--rule", action="append", default=[], metavar="OLD=>NEW", help="rename rule (repeatable)")
    p.add_argument("--key", help="where the weights sit inside the checkpoint (e.g. state_dict)")
    p.add_argument(
        "--verify",
        metavar="REFERENCE",
        help="backbone name of the source implementation: load CKPT into it by name and compare outputs",
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest output difference --verify accepts")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _add_scan(sub: Any) -> None:
    p = sub.add_parser(
        "scan",
        help="check checkpoints for CI: one line per file, exit 1 if any is refused or dangerous",
        description="Scan checkpoint files statically (nothing is executed): exit 0 when every file loads "
        "with the safe default reader, 1 when any would be refused or names dangerous globals.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint files or folders")


def build_parser() -> argparse.ArgumentParser:
    """The ``transferkit`` argument parser (subcommands ``finetune``, ``inspect`` and ``convert``)."""
    from transferkit import __version__

    parser = _Parser(prog="transferkit", description="Transfer learning on PyTorch.")
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_finetune(sub)
    _add_inspect(sub)
    _add_convert(sub)
    _add_scan(sub)
    return parser


def finetune_actions() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["finetune"]._actions if a.dest not in ("help",)}
