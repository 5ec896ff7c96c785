"""``create_model``: name + classes + weights -> a ready :class:`~transferkit.backbones.adapter.Adapter`.

Steps: resolve the name (:mod:`.registry`) and the weights (:mod:`.weights`); build the network with
``num_classes`` outputs — on the ``meta`` device when weights will be loaded, so no time goes into random
initialisation that the checkpoint overwrites; decide what happens to the checkpoint's head (below); load
with :func:`~transferkit.partial.load_partial` (``assign=True`` from an mmap'd file on the fast path);
materialise only what the checkpoint did not cover (the new head, missing tensors), initialised as the
network's constructor initialises them (:mod:`.meta` replays the constructor for just those tensors);
adapt the first convolution to ``in_chans`` (from the checkpoint's own channel count, which may differ).

Head policy, each decision written into ``adapter.load_report.notes``:

* class names known on both sides (``class_names`` and ``pretrained_classes``, the checkpoint's
  ``meta["class_names"]``, or torchvision's ``weights.meta["categories"]``): the same labels in the same
  order -> the checkpoint head is **kept**; overlapping labels -> **head surgery** (those rows copied,
  reordered, the rest fresh); no overlap -> **fresh**;
* no ``class_names`` given, and a fitting head whose checkpoint names its classes (ImageNet weights at
  1000 classes): **kept**, the model takes the checkpoint's labels;
* otherwise the head is **fresh**, even when its shape happens to fit: a head whose labels are unknown
  maps the checkpoint's classes (CIFAR's, say) onto the data's arbitrarily, and fine-tuning from that is
  worse than from a new head (``benchmarks/RESULTS.md``). ``head="keep"`` keeps a fitting head anyway;
* a head that does not fit is never loaded (reported as skipped for shape).

A fresh head on a pretrained backbone starts near zero (:func:`init_head_for_finetuning`): the first
steps then see a loss of about ``ln(num_classes)`` instead of the large one a constructor's init can give
(timm's EfficientNet head starts at a loss of 10 on 10 classes), and the backbone's first gradients are
small instead of noise from random logits.

Families whose constructors cannot run on the meta device (torchvision RegNet) or that compute tensors
no checkpoint holds (non-persistent buffers, e.g. timm's relative position indices) are built the normal
way (:data:`SLOW_BUILD` and an automatic check); both paths give the same weights bit for bit.

The steps live in :mod:`.pretrained` (building and loading) and :mod:`.head_policy` (the head's fate).

Example:
    >>> m = create_model("resnet18", num_classes=4, weights=None)
    >>> m.head.out_features, m.pretrained
    (4, False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from transferkit.align import check_align_mode
from transferkit.backbones.adapter import Adapter
from transferkit.backbones.channels import adapt_input_channels
from transferkit.backbones.head_policy import fit_head, init_head_for_finetuning
from transferkit.backbones.head_surgery import validate_class_names
from transferkit.backbones.heads import find_heads, get_module
from transferkit.backbones.preprocess import (
    adapt_data_config,
    data_config_for_timm,
    data_config_for_torchvision,
    default_data_config,
)
from transferkit.backbones.pretrained import HeadRequest, Pairing, build_pretrained, read_state
from transferkit.backbones.registry import BackboneSpec, resolve_backbone
from transferkit.backbones.torchvision_weights import TORCHVISION_WEIGHT_KWARGS
from transferkit.backbones.weight_cache import WeightsPlan
from transferkit.backbones.weights import resolve_weights
from transferkit.errors import ConfigError

__all__ = ["create_model", "HEAD_POLICIES"]


HEAD_POLICIES = ("auto", "keep", "fresh")


# torchvision builder name prefix -> class whose pretrained weights need extra constructor arguments
_TV_CLASS_BY_PREFIX = {
    "vit_": "VisionTransformer",
    "maxvit": "MaxVit",
    "inception": "Inception3",
    "googlenet": "GoogLeNet",
}


def create_model(
    name: str,
    num_classes: int,
    *,
    weights: Any = "auto",
    in_chans: int | None = None,
    class_names: Sequence[str] | None = None,
    head: str = "auto",
    rules: Any = (),
    pretrained_classes: Sequence[str] | None = None,
    head_name: str | None = None,
    key: str | None = None,
    fast: bool = True,
    align: str = "auto",
    **kwargs: Any,
) -> Adapter:
    """Build an adapter: a pretrained backbone with a ``num_classes`` head.

    Args:
        name: ``"resnet50"`` (torchvision), ``"timm:convnext_atto"``, or ``"package.module:callable"``.
        num_classes: outputs of the new head.
        weights: ``"auto"``, ``"imagenet"``/``"DEFAULT"``, a torchvision weights name, a local checkpoint
            path, or ``None`` (see :mod:`transferkit.backbones.weights`). A checkpoint of an adapter
            (``backbone.``-prefixed keys: ``save_weights(adapter)``, a run's ``model.safetensors`` or
            ``best.pt``) loads too.
        in_chans: input channels; when it differs from the network's (3 for torchvision and timm) or the
            checkpoint's first convolution, that convolution is adapted from the checkpoint's filters
            (``adapter.in_chans_strategy``; a checkpoint that already has ``in_chans`` loads as is).
            ``None`` keeps the network's own count.
        class_names: labels of the new classes (enables head surgery by label).
        head: what to do with a checkpoint head that fits when labels cannot decide: ``"auto"`` (fresh,
            unless the class names match), ``"keep"`` or ``"fresh"``.
        rules: rename rules for a local checkpoint (:class:`~transferkit.rename.Prefix`, ``Regex``,
            callables, or ``"OLD=>NEW"`` strings), applied in the original network's key layout.
        pretrained_classes: labels of the checkpoint's head, when the checkpoint does not carry them.
        head_name: qualified name of the classifier in a user network the rules do not find.
        key: where the state dict sits inside a checkpoint (``"state_dict"``, ``"models.model"``).
        fast: build on the meta device when weights are loaded (set ``False`` to force the normal build).
        align: how a local checkpoint's tensors pair with the network's: ``"auto"`` (by name; by structure
            when no rules are given and no name matches, e.g. lukemelas' EfficientNet weights into
            ``timm:efficientnet_lite0``), ``"names"`` or ``"structure"`` (see :mod:`transferkit.align`).
        **kwargs: passed to the network's builder (``image_size=`` for torchvision ViT, ``img_size=`` and
            ``drop_rate=`` for timm, your factory's arguments).

    Returns:
        The :class:`~transferkit.backbones.adapter.Adapter`; ``.pretrained``, ``.weights``,
        ``.load_report`` and ``.notes`` say what was loaded.

    Raises:
        ConfigError: unknown name, bad argument, missing local file.
        LoadError: explicit pretrained weights not cached, a cache file failing its hash, nothing loaded.
        CheckpointError: the checkpoint cannot be read.
    """
    _validate(num_classes, in_chans, class_names, head)
    check_align_mode(align)
    spec = resolve_backbone(name)
    plan = resolve_weights(spec, weights)
    build_kwargs = _build_kwargs(spec, plan, num_classes, kwargs)
    notes = list(plan.notes)
    report, native_chans = None, None
    if plan.pretrained:
        state, ckpt_meta = read_state(plan, key)
        request = HeadRequest(
            class_names, pretrained_classes or ckpt_meta.get("class_names") or plan.categories, head
        )
        net, report, native_chans, action = build_pretrained(
            spec, plan, build_kwargs, state, request, Pairing(rules, align), head_name, fast
        )
        if action == "fresh":
            init_head_for_finetuning(net, find_heads(net, head_name))
        notes += [n for n in report.notes if n.startswith("head:")]
    else:
        net = spec.build(**build_kwargs)
        fit_head(net, num_classes, head_name)
    # a checkpoint with other input channels reshaped the first conv: built_chans is then the checkpoint's
    strategy, built_chans = "none", _first_conv_channels(net)
    target = in_chans if in_chans is not None else (native_chans or built_chans)
    if target != built_chans:
        strategy, conv = adapt_input_channels(net, target)
        source = "the checkpoint's " if native_chans else ""
        notes.append(
            f"input channels: first conv {conv} adapted from {source}{built_chans} to {target} ({strategy})"
        )
    elif native_chans:
        notes.append(f"input channels: the checkpoint's first conv already takes {target}; loaded as is")
    adapter = Adapter(
        net,
        num_classes,
        name=spec.full_name,
        class_names=class_names,
        head_name=head_name,
        data_config=adapt_data_config(_data_config(spec, plan, net, kwargs), target),
    )
    adapter.in_chans_strategy = strategy
    adapter.pretrained = plan.pretrained
    adapter.weights = plan.description
    adapter.notes = notes
    if report is not None:
        report.notes.extend(n for n in notes if n not in report.notes)
        adapter.load_report = report
    return adapter


def _validate(num_classes: Any, in_chans: Any, class_names: Sequence[str] | None, head: str) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    if in_chans is not None and (not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1):
        raise ConfigError(f"in_chans must be a positive int, got {in_chans!r}")
    if class_names is not None:
        validate_class_names(class_names)
        if len(class_names) != num_classes:
            raise ConfigError(f"class_names has {len(class_names)} labels but num_classes is {num_classes}")
    if head not in HEAD_POLICIES:
        raise ConfigError(f"head must be one of {HEAD_POLICIES}, got {head!r}")


def _build_kwargs(
    spec: BackboneSpec, plan: WeightsPlan, num_classes: int, user: dict[str, Any]
) -> dict[str, Any]:
    kw: dict[str, Any] = {"num_classes": num_classes}
    if spec.source == "torchvision":
        if spec.name in ("googlenet", "inception_v3"):
            kw["init_weights"] = True  # explicit: silences torchvision's FutureWarning about the default
        if plan.pretrained and plan.tv_weights is not None:
            cls = next((c for p, c in _TV_CLASS_BY_PREFIX.items() if spec.name.startswith(p)), None)
            if cls in TORCHVISION_WEIGHT_KWARGS:
                kw.update(TORCHVISION_WEIGHT_KWARGS[cls](plan.tv_weights))
    kw.update(user)
    return kw


def _first_conv_channels(net: nn.Module) -> int:
    from transferkit.backbones.channels import find_first_conv

    try:
        return get_module(net, find_first_conv(net)).in_channels
    except ConfigError:
        return 3


def _data_config(
    spec: BackboneSpec, plan: WeightsPlan, net: nn.Module, kwargs: dict[str, Any]
) -> dict[str, Any]:
    if spec.source == "torchvision":
        cfg = data_config_for_torchvision(spec.name, plan.tv_weights)
    elif spec.source == "timm":
        cfg = data_config_for_timm(net)
    else:
        cfg = default_data_config()
        # a factory states its weights' preprocessing the way timm models do: a pretrained_cfg dict
        own = getattr(net, "pretrained_cfg", None)
        if isinstance(own, Mapping):
            cfg.update({k: tuple(own[k]) for k in ("mean", "std") if own.get(k) is not None})
    size = kwargs.get("img_size") or kwargs.get("image_size")
    if isinstance(size, int):
        cfg["input_size"] = (cfg["input_size"][0], size, size)
        cfg["resize_size"] = int(size / cfg.get("crop_pct", 0.875))
    return cfg
