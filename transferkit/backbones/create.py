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

Example:
    >>> m = create_model("resnet18", num_classes=4, weights=None)
    >>> m.head.out_features, m.pretrained
    (4, False)
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from transferkit.align import align_by_structure, check_align_mode
from transferkit.backbones.adapter import Adapter
from transferkit.backbones.channels import adapt_input_channels
from transferkit.backbones.heads import (
    HeadInfo,
    copy_rows,
    find_heads,
    get_module,
    match_labels,
    replace_with_info,
    validate_class_names,
)
from transferkit.backbones.meta import build_on_meta, materialize_defaults, meta_safe, replay_init
from transferkit.backbones.preprocess import (
    adapt_data_config,
    data_config_for_timm,
    data_config_for_torchvision,
    default_data_config,
)
from transferkit.backbones.registry import BackboneSpec, resolve_backbone
from transferkit.backbones.weights import TORCHVISION_WEIGHT_KWARGS, WeightsPlan, resolve_weights
from transferkit.errors import ConfigError, LoadError

__all__ = ["create_model", "decide_head", "init_head_for_finetuning", "SLOW_BUILD", "HEAD_POLICIES"]

logger = logging.getLogger(__name__)

HEAD_POLICIES = ("auto", "keep", "fresh")

#: name prefixes built the normal way even with weights (their constructors need real tensors)
SLOW_BUILD: tuple[str, ...] = ("regnet_",)

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
        state, ckpt_meta = _read_state(plan, key)
        request = _HeadRequest(
            class_names, pretrained_classes or ckpt_meta.get("class_names") or plan.categories, head
        )
        net, report, native_chans, action = _build_pretrained(
            spec, plan, build_kwargs, state, request, _Pairing(rules, align), head_name, fast
        )
        if action == "fresh":
            init_head_for_finetuning(net, find_heads(net, head_name))
        notes += [n for n in report.notes if n.startswith("head:")]
    else:
        net = _build(spec, build_kwargs, meta=False)
        _fit_head(net, num_classes, head_name)
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


@dataclass(frozen=True)
class _Pairing:
    """How checkpoint keys find the network's: rename rules, and the ``align`` mode of ``load_partial``."""

    rules: Any
    align: str


@dataclass(frozen=True)
class _HeadRequest:
    class_names: Sequence[str] | None
    ckpt_classes: Sequence[str] | None
    policy: str


def _build_pretrained(
    spec: BackboneSpec,
    plan: WeightsPlan,
    build_kwargs: dict[str, Any],
    state: dict[str, Tensor],
    request: _HeadRequest,
    pairing: _Pairing,
    head_name: str | None,
    fast: bool,
) -> tuple[nn.Module, Any, int | None, str]:
    """Build the network and load ``state`` into it: on the meta device when that is safe, else normally.

    Returns:
        The network, the load report, the checkpoint's first-conv channels when they differ, and the
        head's fate (``"keep"``, ``"fresh"`` or ``"surgery"``).
    """
    num_classes = build_kwargs["num_classes"]
    recording = None
    if fast and not spec.name.startswith(SLOW_BUILD):
        net, recording = build_on_meta(spec.build, build_kwargs)
        if not meta_safe(net):
            logger.debug(
                "%s computes tensors no checkpoint holds; building it the normal way", spec.full_name
            )
            recording = None
    if recording is None:
        net = _build(spec, build_kwargs, meta=False)
    state, layout_note = _native_layout(state, net)
    info = _fit_head(net, num_classes, head_name)
    native_chans = _match_checkpoint_channels(net, state, pairing)
    report, rows, head_src, action = _load(
        net, info, state, pairing, request, plan, spec, assign=recording is not None
    )
    if recording is not None:
        replayed = set(replay_init(net, spec.build, build_kwargs, recording))
        if materialize_defaults(net, info):
            report.notes[:] = [n for n in report.notes if "still on the meta device" not in n]
            fresh = [k for k in report.missing if k not in _head_keys(info)]
            if fresh:
                as_built = sum(k in replayed for k in fresh)
                report.notes.append(
                    f"initialised {len(fresh)} tensor(s) the checkpoint lacks: {as_built} as the constructor "
                    f"initialises them, {len(fresh) - as_built} with their modules' defaults"
                )
        else:
            logger.debug(
                "%s: a tensor the checkpoint lacks cannot be initialised on meta; normal build", spec.name
            )
            net = _build(spec, build_kwargs, meta=False)
            info = _fit_head(net, num_classes, head_name)
            native_chans = _match_checkpoint_channels(net, state, pairing)
            report, rows, head_src, action = _load(
                net, info, state, pairing, request, plan, spec, assign=False
            )
    if rows:
        _surgery(net, info, state, head_src, rows)
    if layout_note:
        report.notes.insert(0, layout_note)
    return net, report, native_chans, action


def _native_layout(state: dict[str, Tensor], net: nn.Module) -> tuple[dict[str, Tensor], str | None]:
    """A checkpoint of an :class:`Adapter` (``backbone.``-prefixed keys: ``save_weights(adapter)``, a run's
    ``model.safetensors`` or ``best.pt``) in the network's own layout, so it loads like any other.

    Only when every key has the prefix and the network itself has no ``backbone`` attribute, so a user
    network whose own keys start with ``backbone.`` is left alone.
    """
    prefix = "backbone."
    if not state or not all(k.startswith(prefix) for k in state):
        return state, None
    if any(k.startswith(prefix) for k in net.state_dict(keep_vars=True)):
        return state, None
    out = OrderedDict((k[len(prefix) :], v) for k, v in state.items())
    versions = getattr(state, "_metadata", None)
    if isinstance(versions, Mapping):
        out._metadata = (
            {  # type: ignore[attr-defined]
                k[len(prefix) :]: v for k, v in versions.items() if k.startswith(prefix)
            }
            | ({"": versions["backbone"]} if "backbone" in versions else {})
        )
    note = f"adapter checkpoint: stripped {prefix!r} from its {len(state)} keys (the network's own layout)"
    logger.info(note)
    return out, note


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


def _build(spec: BackboneSpec, kwargs: dict[str, Any], meta: bool) -> nn.Module:
    return build_on_meta(spec.build, kwargs)[0] if meta else spec.build(**kwargs)


def _fit_head(net: nn.Module, num_classes: int, head_name: str | None) -> HeadInfo:
    info = find_heads(net, head_name)
    head = get_module(net, info.main)
    out = getattr(head, "out_features", None) or getattr(head, "out_channels", None)
    if out != num_classes:  # user factories that do not take num_classes
        replace_with_info(net, info, num_classes)
        info = find_heads(net, head_name)
    return info


def _read_state(plan: WeightsPlan, key: str | None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from transferkit.checkpoint import extract_state_dict, load_checkpoint

    obj = load_checkpoint(plan.path, map_location="cpu")
    meta = obj.get("meta", {}) if isinstance(obj, Mapping) else {}
    if not meta:
        meta = _safetensors_meta(plan.path)
    state = extract_state_dict(obj, key)
    plain = OrderedDict(state)
    plain._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]  # module versions
    return plain, dict(meta) if isinstance(meta, Mapping) else {}


def _safetensors_meta(path: Any) -> dict[str, Any]:
    """The class names a safetensors export records in its metadata (``class_names``, JSON); else ``{}``."""
    import json

    from transferkit.checkpoint.safetensors_file import read_safetensors_metadata
    from transferkit.errors import CheckpointError

    try:
        names = json.loads(read_safetensors_metadata(path).get("class_names", "null"))
    except (CheckpointError, ValueError):  # not a safetensors file, or no readable names: nothing to add
        return {}
    ok = isinstance(names, list) and all(isinstance(n, str) for n in names)
    return {"class_names": names} if ok else {}


def decide_head(
    fits: bool,
    class_names: Sequence[str] | None,
    ckpt_classes: Sequence[str] | None,
    policy: str = "auto",
) -> tuple[str, dict[int, int], str]:
    """What to do with the checkpoint's head: ``("keep" | "fresh" | "surgery", rows, reason)``.

    Example:
        >>> decide_head(True, ["a", "b"], ["a", "b"])[0], decide_head(False, ["b", "x"], ["a", "b"])[:2]
        ('keep', ('surgery', {0: 1}))
    """
    if class_names is not None and ckpt_classes is not None:
        rows = match_labels(class_names, ckpt_classes)
        if fits and len(ckpt_classes) == len(class_names) and rows == {i: i for i in range(len(class_names))}:
            return "keep", {}, "kept: the class names match the checkpoint's"
        if rows:
            return (
                "surgery",
                rows,
                f"head surgery by label: {len(rows)} of {len(class_names)} classes found among the checkpoint's "
                f"{len(ckpt_classes)}; their rows copied (reordered), the other {len(class_names) - len(rows)} fresh",
            )
        return "fresh", {}, "fresh: no class name is shared with the checkpoint's head"
    if not fits:
        return "fresh", {}, "fresh: the checkpoint's head does not fit the new head (skipped for shape)"
    if policy == "keep":
        return "keep", {}, "kept: the checkpoint's head fits and head='keep' was asked for"
    if class_names is None and ckpt_classes is not None and policy == "auto":
        # no labels of their own: the model takes the checkpoint's (resnet50 with 1000 ImageNet classes)
        return "keep", {}, f"kept: the checkpoint's head fits and names its {len(ckpt_classes)} classes"
    if policy == "fresh":
        return "fresh", {}, "fresh: the checkpoint's head fits, but head='fresh' was asked for"
    return (
        "fresh",
        {},
        "fresh: the checkpoint's head fits, but its class names are unknown, so its outputs cannot be "
        "matched to these classes (pass head='keep' to keep it anyway)",
    )


def init_head_for_finetuning(net: nn.Module, info: HeadInfo, std: float = 0.01) -> None:
    """Start a new classifier near zero: weights ~ N(0, ``std``) truncated at 2 std, biases zero.

    Near-zero logits give a first loss of about ``ln(num_classes)`` and small first gradients into the
    pretrained backbone (MAE's and BEiT's fine-tuning heads start the same way). Not exactly zero: a conv
    head followed by a ReLU (SqueezeNet's) would never receive a gradient.

    Example:
        >>> import torchvision
        >>> from transferkit.backbones.heads import find_heads
        >>> net = torchvision.models.resnet18(num_classes=3)
        >>> init_head_for_finetuning(net, find_heads(net))
        >>> float(net.fc.bias.abs().sum()), float(net.fc.weight.std()) < 0.02
        (0.0, True)
    """
    import torch

    for path in (info.main, *info.aux):
        module = get_module(net, path)
        with torch.no_grad():
            if getattr(module, "weight", None) is not None:
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def _load(
    net: nn.Module,
    info: HeadInfo,
    state: dict[str, Tensor],
    pairing: _Pairing,
    request: _HeadRequest,
    plan: WeightsPlan,
    spec: BackboneSpec,
    *,
    assign: bool,
) -> tuple[Any, dict[int, int], dict[str, str], str]:
    """Decide the head's fate, then load; returns the report, the rows for surgery, the head's keys and
    the fate (``"keep"``, ``"fresh"`` or ``"surgery"``)."""
    from transferkit.partial import load_partial
    from transferkit.rename import normalize_rules

    if spec.source == "timm" and plan.pretrained_cfg:
        state = _timm_filter(state, net)
    rules = normalize_rules(pairing.rules)
    model_state = net.state_dict(keep_vars=True)
    head_keys = _head_keys(info)
    key_map = _key_map(net, state, pairing)
    head_src = {new: orig for new, orig in key_map.items() if new in head_keys}
    main_w = f"{info.main}.weight"
    fits = main_w in head_src and tuple(state[head_src[main_w]].shape) == tuple(model_state[main_w].shape)
    action, rows, reason = decide_head(fits, request.class_names, request.ckpt_classes, request.policy)
    logger.info("%s: head %s", spec.full_name, reason)
    # a head that does not fit is left in: load_partial skips and reports it for shape
    drop = set(head_src.values()) if fits and action != "keep" else set()
    source = {k: v for k, v in state.items() if k not in drop} if drop else state
    structural = pairing.align != "names" and not rules and not any(k in model_state for k in state)
    if drop and structural and key_map:
        # a checkpoint without its head no longer aligns as a whole: load the pairs made with it, by name
        pairs = {orig: new for new, orig in key_map.items() if orig not in drop}
        report = load_partial(net, {new: state[orig] for orig, new in pairs.items()}, assign=assign)
        report.method, report.aligned = "structure", pairs
    else:
        report = load_partial(net, source, rules=rules, assign=assign, align=pairing.align)
    # load_partial saw a state dict; the report is headed by where it came from (a file name, a weights name)
    local = plan.path is not None and plan.description == str(plan.path)
    report.source = plan.path.name if local else plan.description
    report.notes.append(f"head: {reason}")
    return report, rows, head_src, action


def _key_map(net: nn.Module, state: Mapping[str, Tensor], pairing: _Pairing) -> dict[str, str]:
    """``{model key: checkpoint key}`` after wrapper cleaning and the rename rules, or by structure where
    ``load_partial`` will align by structure (so the head is decided on the tensors that will pair)."""
    from transferkit.rename import apply_rules, clean_keys, normalize_rules

    rules = normalize_rules(pairing.rules)
    model_state = net.state_dict(keep_vars=True)
    cleaned, _ = clean_keys(list(state), model_state, rules)
    out = {}
    for orig, key in cleaned.items():
        new = apply_rules(key, rules)
        if new is not None:
            out[new] = orig
    by_name = any(k in model_state for k in out)
    if pairing.align == "structure" or (pairing.align == "auto" and not rules and not by_name):
        try:
            plan = align_by_structure(state, model_state)
        except LoadError:
            return out  # load_partial refuses it, with the reason
        return {new: orig for orig, new in {**plan.pairs, **plan.head}.items()}
    return out


def _match_checkpoint_channels(net: nn.Module, state: Mapping[str, Tensor], pairing: _Pairing) -> int | None:
    """When the checkpoint's first conv takes another channel count than the network built (a grey model
    fine-tuned earlier), give the network's conv the checkpoint's shape before loading, so those filters
    load (and are adapted to ``in_chans`` afterwards) instead of being skipped for shape.

    Returns:
        The channel count the network was built with, when its first conv was reshaped; else ``None``.
    """
    from transferkit.backbones.channels import find_first_conv

    try:
        name = find_first_conv(net)
    except ConfigError:
        return None
    conv = get_module(net, name)
    src = _key_map(net, state, pairing).get(f"{name}.weight")
    if src is None or not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        return None
    weight = state[src]
    if weight.ndim != 4 or weight.shape[1] == conv.in_channels:
        return None
    if tuple(weight.shape) != (conv.out_channels, weight.shape[1], *conv.kernel_size):
        return None
    native = conv.in_channels
    adapt_input_channels(net, int(weight.shape[1]))  # the shape only: the checkpoint's filters replace it
    return native


def _head_keys(info: HeadInfo) -> set[str]:
    return {f"{p}.{t}" for p in (info.main, *info.aux) for t in ("weight", "bias")}


def _timm_filter(state: dict[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    """Apply the model module's ``checkpoint_filter_fn`` (timm's own conversion of older layouts)."""
    fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        return dict(fn(state, net))
    except Exception as exc:  # noqa: BLE001 - a filter that cannot run leaves the keys as they are
        logger.debug("timm checkpoint_filter_fn of %s skipped: %s", type(net).__name__, exc)
        return state


def _surgery(
    net: nn.Module, info: HeadInfo, state: dict[str, Tensor], head_src: dict[str, str], rows: dict
) -> None:
    for path in (info.main, *info.aux):
        src_w = head_src.get(f"{path}.weight")
        if src_w is None:
            continue
        src_b = head_src.get(f"{path}.bias")
        copy_rows(get_module(net, path), state[src_w], state[src_b] if src_b else None, rows)


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
