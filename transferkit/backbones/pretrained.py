"""Pretrained weights into a freshly built network: the fast meta-device path, or the normal build.

:func:`build_pretrained` builds the network on the ``meta`` device when that is safe (its constructor's
init then runs only for what the checkpoint lacks, :mod:`.meta`), decides the head's fate
(:mod:`.head_policy`), loads with :func:`~transferkit.partial.load_partial` and falls back to the normal
build where a tensor cannot be initialised on meta. A checkpoint saved from an Adapter, or whose first
convolution takes another channel count, is brought to the network's own layout first.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from transferkit.align import align_by_structure
from transferkit.backbones.channels import adapt_input_channels
from transferkit.backbones.head_policy import copy_head_rows, decide_head, fit_head, head_tensor_keys
from transferkit.backbones.heads import HeadInfo, get_module
from transferkit.backbones.meta import build_on_meta, materialize_defaults, meta_safe, replay_init
from transferkit.backbones.registry import BackboneSpec
from transferkit.backbones.weight_cache import WeightsPlan
from transferkit.errors import ConfigError, LoadError

__all__ = ["SLOW_BUILD", "Pairing", "HeadRequest", "build_pretrained", "read_state"]

# the name create_model's log lines have always had (the CLI shows it)
logger = logging.getLogger("transferkit.backbones.create")


#: name prefixes built the normal way even with weights (their constructors need real tensors)
SLOW_BUILD: tuple[str, ...] = ("regnet_",)


@dataclass(frozen=True)
class Pairing:
    """How checkpoint keys find the network's: rename rules, and the ``align`` mode of ``load_partial``."""

    rules: Any
    align: str


@dataclass(frozen=True)
class HeadRequest:
    """What decides the head's fate: the new labels, the checkpoint's labels, and the ``head=`` policy."""

    class_names: Sequence[str] | None
    ckpt_classes: Sequence[str] | None
    policy: str


def build_pretrained(
    spec: BackboneSpec,
    plan: WeightsPlan,
    build_kwargs: dict[str, Any],
    state: dict[str, Tensor],
    request: HeadRequest,
    pairing: Pairing,
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
        net = spec.build(**build_kwargs)
    state, layout_note = _native_layout(state, net)
    info = fit_head(net, num_classes, head_name)
    native_chans = _match_checkpoint_channels(net, state, pairing)
    report, rows, head_src, action = _load_deciding_head(
        net, info, state, pairing, request, plan, spec, assign=recording is not None
    )
    if recording is not None:
        replayed = set(replay_init(net, spec.build, build_kwargs, recording))
        if materialize_defaults(net, info):
            report.notes[:] = [n for n in report.notes if "still on the meta device" not in n]
            fresh = [k for k in report.missing if k not in head_tensor_keys(info)]
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
            net = spec.build(**build_kwargs)
            info = fit_head(net, num_classes, head_name)
            native_chans = _match_checkpoint_channels(net, state, pairing)
            report, rows, head_src, action = _load_deciding_head(
                net, info, state, pairing, request, plan, spec, assign=False
            )
    if rows:
        copy_head_rows(net, info, state, head_src, rows)
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


def read_state(plan: WeightsPlan, key: str | None) -> tuple[dict[str, Tensor], dict[str, Any]]:
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


def _load_deciding_head(
    net: nn.Module,
    info: HeadInfo,
    state: dict[str, Tensor],
    pairing: Pairing,
    request: HeadRequest,
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
    head_keys = head_tensor_keys(info)
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


def _key_map(net: nn.Module, state: Mapping[str, Tensor], pairing: Pairing) -> dict[str, str]:
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


def _match_checkpoint_channels(net: nn.Module, state: Mapping[str, Tensor], pairing: Pairing) -> int | None:
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
