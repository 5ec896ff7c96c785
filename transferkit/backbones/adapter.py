"""The Adapter: a pretrained network with a new classifier head, and what training code needs from it.

``adapter.backbone`` is the original torchvision/timm/user network with its classifier replaced in place,
so its state dict keeps the original key layout under ``backbone.``. The adapter renames keys on load
(``fc.weight`` -> ``backbone.fc.weight``) and skips tensors whose shape does not fit, so a checkpoint of
the original model loads straight into it::

    adapter.load_state_dict(torch.load("resnet50-0676ba61.pth"))
    print(adapter.load_report)   # fc.weight / fc.bias skipped for shape, everything else loaded

A head skipped for shape is expected (that is what the adapter is for), so it does not fail a
``strict=True`` load; any other missing or unexpected key does. What happened to the head is the
report's ``head:`` note. A checkpoint head that fits is loaded, as ``nn.Module`` does; to decide by
class names or start a fresh head, use :func:`~transferkit.backbones.create_model` (``head=``,
``class_names=``) or call :func:`~transferkit.backbones.replace_head` afterwards.

Inception v3 and GoogLeNet return a namedtuple with auxiliary logits in train mode; the adapter's
``forward`` returns only the main logits tensor (the auxiliary heads are still replaced, so their
outputs have ``num_classes`` columns should you call the backbone yourself).

Example:
    >>> import torch, torchvision
    >>> a = Adapter(torchvision.models.resnet18(), num_classes=3, name="resnet18")
    >>> a(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 3])
    >>> list(a.layer_groups())[-1]
    'head'
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from transferkit.backbones.groups import network_groups
from transferkit.backbones.head_surgery import replace_with_info
from transferkit.backbones.heads import HeadInfo, find_heads, get_module, is_timm
from transferkit.backbones.preprocess import build_transforms, default_data_config
from transferkit.errors import ConfigError
from transferkit.rename import RenameOnLoadMixin

__all__ = ["Adapter", "add_backbone_prefix"]

logger = logging.getLogger(__name__)


def add_backbone_prefix(key: str) -> str:
    """Load rule: a key in the original network's layout (``fc.weight``) -> ``backbone.fc.weight``."""
    return key if key.startswith("backbone.") else f"backbone.{key}"


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the head's input is known."""


class Adapter(RenameOnLoadMixin, nn.Module):
    """A backbone network whose classifier has ``num_classes`` outputs.

    Build one with :func:`~transferkit.backbones.create_model`; wrapping a network yourself works too
    (its head is found by the rules of :func:`~transferkit.backbones.heads.find_heads` and replaced when
    its output count differs).

    Args:
        backbone: the network (torchvision, timm, or your own).
        num_classes: outputs of the head; ``None`` keeps the network's own head.
        name: the backbone's name (``"resnet50"``, ``"timm:convnext_atto"``), kept for checkpoints.
        class_names: labels of the ``num_classes`` outputs, if known.
        head_name: the classifier's qualified name inside ``backbone``, for networks the rules miss.
        data_config: ``{"mean", "std", "input_size", ...}``; ImageNet defaults when omitted.

    Attributes:
        backbone: the wrapped network.
        name, num_classes, class_names, in_chans: as built.
        in_chans_strategy: how the first conv was adapted (``"none"``, ``"sum"``, ``"repeat-scale"``).
        pretrained: ``True`` when pretrained weights were loaded.
        weights: what the weights came from (``"random"``, ``"torchvision:ResNet50_Weights.IMAGENET1K_V2"``,
            a file path).
        load_report: the :class:`~transferkit.load_report.LoadReport` of the last load, or ``None``.
        notes: what :func:`~transferkit.backbones.create_model` decided (weights fallback, head policy,
            channel adaptation), also written into ``load_report.notes``.
        data_config: the input preprocessing the network expects.
    """

    load_rules = (add_backbone_prefix,)
    on_shape_mismatch = "skip"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        *,
        name: str = "custom",
        class_names: Sequence[str] | None = None,
        head_name: str | None = None,
        data_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.name = name
        self._head_info: HeadInfo = find_heads(backbone, head_name)
        head_out = _out_features(get_module(backbone, self._head_info.main))
        if num_classes is not None and num_classes != head_out:
            replace_with_info(backbone, self._head_info, num_classes)
        self.num_classes = int(num_classes if num_classes is not None else head_out)
        if class_names is not None and len(class_names) != self.num_classes:
            raise ConfigError(
                f"class_names has {len(class_names)} labels but the head has {self.num_classes} outputs; "
                "give one label per class."
            )
        self.class_names = list(class_names) if class_names is not None else None
        self.data_config = dict(data_config or default_data_config())
        self.in_chans = int(self.data_config["input_size"][0])
        self.in_chans_strategy = "none"
        self.pretrained = False
        self.weights = "random"
        self.load_report = None
        self.notes: list[str] = []
        self._load_prefix = ""
        self.register_load_state_dict_post_hook(_tolerate_skipped_head)

    def _rename_before_load(self, state_dict: dict[str, Any], prefix: str) -> None:
        self._load_prefix = prefix  # the post-load hook needs it to match keys named from the root
        super()._rename_before_load(state_dict, prefix)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """``nn.Module.load_state_dict``, also accepting the original network's key layout.

        Besides the keys (renamed by the ``backbone.`` rule), the per-module versions torch stores in
        ``state_dict._metadata`` are moved under ``backbone.`` too, for modules whose loading depends on
        them (torchvision's MNASNet).
        """
        versions = getattr(state_dict, "_metadata", None)
        if versions is not None and not any(k == "backbone" or k.startswith("backbone.") for k in versions):
            state_dict = OrderedDict(state_dict)
            moved = {(f"backbone.{k}" if k else "backbone"): v for k, v in versions.items()}
            state_dict._metadata = {**versions, **moved}  # type: ignore[attr-defined]
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- the head --------------------------------------------------------------------------------------

    @property
    def head(self) -> nn.Module:
        """The classifier module inside ``backbone`` (replaced in place, so it is the live one)."""
        return get_module(self.backbone, self._head_info.main)

    @property
    def head_names(self) -> list[str]:
        """Qualified module names of the classifier and any auxiliary classifiers, relative to the adapter."""
        return [f"backbone.{p}" for p in (self._head_info.main, *self._head_info.aux)]

    def head_parameter_names(self) -> list[str]:
        """Names (relative to the adapter) of the parameters of the classifier and auxiliary classifiers."""
        return list(self.layer_groups()["head"])

    def _after_head_change(self, num_classes: int, class_names: Sequence[str] | None) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None

    # ---- forward ---------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, num_classes)``; for inception/googlenet in train mode only the main logits."""
        out = self.backbone(x)
        logits = getattr(out, "logits", None)
        return logits if isinstance(out, tuple) and logits is not None else out

    def forward_features(self, x: Tensor) -> Tensor:
        """The features the head consumes (pooled ``(batch, dim)`` for all but squeezenet's conv head,
        whose input is the ``(batch, 512, h, w)`` map)."""
        if self._head_info.timm and is_timm(self.backbone):
            return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        captured: list[Tensor] = []

        def grab(_module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0])
            raise _StopForward  # nothing after the head's input is needed

        handle = self.head.register_forward_pre_hook(grab)
        try:
            self.backbone(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ConfigError(
                f"the forward pass of {self.name} never called its head {self._head_info.main!r}"
            )
        return captured[0]

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits from :meth:`forward_features`' output; in eval mode
        ``forward(x) == forward_head(forward_features(x))``."""
        y = self.head(features)
        if self._head_info.post is not None:
            return self._head_info.post(y)
        return y.flatten(1) if y.ndim > 2 else y

    # ---- groups and preprocessing ----------------------------------------------------------------------

    def layer_groups(self) -> dict[str, list[str]]:
        """Ordered ``{group: [parameter names relative to the adapter]}``, input to output, ``head`` last.

        See :mod:`transferkit.backbones.groups` for the rules.
        """
        groups = network_groups(self.backbone, [self._head_info.main, *self._head_info.aux])
        return {g: [f"backbone.{n}" for n in names] for g, names in groups.items()}

    def transforms(self, train: bool = False, img_size: int | None = None) -> Any:
        """Preprocessing for this network (torchvision ``transforms.v2``; PIL images or tensors in).

        Args:
            train: add light augmentation (random resized crop with scale 0.7-1, horizontal flip).
            img_size: crop size overriding ``data_config["input_size"]``.
        """
        return build_transforms(self.data_config, train=train, img_size=img_size)

    @property
    def meta(self) -> dict[str, Any]:
        """What a checkpoint should record to rebuild this adapter."""
        return {
            "backbone": self.name,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "in_chans": self.in_chans,
            "in_chans_strategy": self.in_chans_strategy,
            "pretrained": self.pretrained,
            "weights": self.weights,
            "data_config": self.data_config,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}, pretrained={self.pretrained}"


def _tolerate_skipped_head(adapter: Adapter, incompatible: Any) -> None:
    """Post-load hook: the head skipped for shape is not a strict-load failure; note the head's fate."""
    report = adapter.load_report
    if report is None:
        return
    prefix = adapter._load_prefix
    head_keys = {f"{prefix}{m}.{t}" for m in adapter.head_names for t in ("weight", "bias")}
    skipped = sorted(k for k in report.mismatched if k in head_keys)
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k not in skipped]
    if any(n.startswith("head:") for n in report.notes):
        return
    if skipped:
        shapes = report.mismatched[next((k for k in skipped if k.endswith(".weight")), skipped[0])]
        note = (
            f"head: fresh: the checkpoint's head {list(shapes[0])} does not fit the adapter's "
            f"{list(shapes[1])} (skipped for shape); the adapter's head is unchanged"
        )
    elif any(k in head_keys for k in report.loaded):
        note = (
            "head: loaded: the checkpoint's head fits, so it was loaded (load_state_dict loads what fits; "
            "use create_model(head='fresh', class_names=...) or replace_head() to start a new head)"
        )
    else:
        note = "head: unchanged: the checkpoint has no head tensors"
    report.notes.append(note)


def _out_features(head: nn.Module) -> int:
    if isinstance(head, nn.Linear):
        return head.out_features
    if isinstance(head, nn.Conv2d):
        return head.out_channels
    raise ConfigError(f"the classifier is a {type(head).__name__}; expected nn.Linear or nn.Conv2d")
