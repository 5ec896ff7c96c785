"""The checkpoint head's fate in ``create_model``: kept, fresh, or head surgery by label.

:func:`decide_head` is the policy (see :mod:`.create`); :func:`init_head_for_finetuning` starts a fresh
head near zero, :func:`copy_head_rows` does the surgery, and :func:`fit_head` makes sure the built
network's head has ``num_classes`` outputs before anything loads.

Example:
    >>> decide_head(True, None, None)[0], decide_head(True, None, None, policy="keep")[0]
    ('fresh', 'keep')
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from transferkit.backbones.head_surgery import copy_rows, match_labels, replace_with_info
from transferkit.backbones.heads import HeadInfo, find_heads, get_module

__all__ = ["decide_head", "init_head_for_finetuning", "fit_head", "head_tensor_keys", "copy_head_rows"]


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


def fit_head(net: nn.Module, num_classes: int, head_name: str | None) -> HeadInfo:
    info = find_heads(net, head_name)
    head = get_module(net, info.main)
    out = getattr(head, "out_features", None) or getattr(head, "out_channels", None)
    if out != num_classes:  # user factories that do not take num_classes
        replace_with_info(net, info, num_classes)
        info = find_heads(net, head_name)
    return info


def head_tensor_keys(info: HeadInfo) -> set[str]:
    return {f"{p}.{t}" for p in (info.main, *info.aux) for t in ("weight", "bias")}


def copy_head_rows(
    net: nn.Module, info: HeadInfo, state: dict[str, Tensor], head_src: dict[str, str], rows: dict
) -> None:
    for path in (info.main, *info.aux):
        src_w = head_src.get(f"{path}.weight")
        if src_w is None:
            continue
        src_b = head_src.get(f"{path}.bias")
        copy_rows(get_module(net, path), state[src_w], state[src_b] if src_b else None, rows)
