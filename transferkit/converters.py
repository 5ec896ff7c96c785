"""Named converters between implementations that store the same weights differently, and verification.

Structural alignment (:mod:`transferkit.align`) pairs tensors that differ only in name. Some
implementations also differ in *form*: torchvision's ViT keeps its attention projection as
``in_proj_weight`` inside ``nn.MultiheadAttention`` and numbers its MLP layers ``mlp.0``/``mlp.3`` where
timm has ``attn.qkv`` and ``mlp.fc1``/``mlp.fc2``; others split a fused ``qkv`` or store a conv kernel
transposed. A :class:`Converter` is a named function from one layout's state dict to another's, registered
with :func:`register_converter`; each is proven by logits parity in ``tests/test_align.py``.

:func:`verify_outputs` runs a converted model and a reference (the source implementation, loaded with the
original weights) on one probe batch and returns the largest output difference; above ``tolerance`` it
raises. ``transferkit convert --verify`` and ``load_partial(..., verify=)`` use it.

Example:
    >>> sorted(list_converters())[:2]
    ['timm:resnet50->torchvision:resnet50', 'timm:vit_base_patch16_224->torchvision:vit_b_16']
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from transferkit.errors import ConfigError, LoadError

__all__ = [
    "Converter",
    "register_converter",
    "get_converter",
    "list_converters",
    "find_converter",
    "verify_outputs",
]

logger = logging.getLogger(__name__)

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class Converter:
    """A named conversion of a state dict from the ``source`` layout to the ``target`` model's.

    Attributes:
        source: the layout it reads (``"torchvision:vit_b_16"``).
        target: the model whose layout it writes, as ``create_model`` names it
            (``"timm:vit_base_patch16_224"``).
        convert: ``state dict -> state dict``; raises :class:`~transferkit.errors.LoadError` when the input
            is not in the ``source`` layout.
        marker: a key every state dict in the ``source`` layout has (how a layout is recognised).
    """

    source: str
    target: str
    convert: Callable[[Mapping[str, Tensor]], StateDict]
    marker: str

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"

    def accepts(self, state: Mapping[str, Any]) -> bool:
        """True when ``state`` looks like the source layout (it has the marker key)."""
        return self.marker in state

    def __call__(self, state: Mapping[str, Tensor]) -> StateDict:
        if not self.accepts(state):
            raise LoadError(
                f"converter {self.name!r} expects a state dict in the {self.source} layout (with "
                f"{self.marker!r}); this one starts with {list(state)[:3]}. Pick the converter of the "
                "checkpoint's own layout (transferkit.converters.list_converters()), or none"
            )
        return self.convert(state)


_REGISTRY: dict[str, Converter] = {}


def register_converter(source: str, target: str, *, marker: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(state) -> state`` as the converter ``"SOURCE->TARGET"``.

    Raises:
        ValueError: a converter of that name is registered already.
    """

    def wrap(fn: Callable[[Mapping[str, Tensor]], StateDict]) -> Callable:
        converter = Converter(source, target, fn, marker)
        if converter.name in _REGISTRY:
            raise ValueError(f"a converter named {converter.name!r} is registered already")
        _REGISTRY[converter.name] = converter
        return fn

    return wrap


def list_converters() -> list[str]:
    """Names of the registered converters, ``"SOURCE->TARGET"``."""
    return list(_REGISTRY)


def get_converter(name: str) -> Converter:
    """The converter called ``name`` (``"torchvision:vit_b_16->timm:vit_base_patch16_224"``).

    Raises:
        ConfigError: no such converter (the message lists them).
    """
    if name not in _REGISTRY:
        raise ConfigError(
            f"no converter named {name!r}; registered: {', '.join(_REGISTRY)}. Converters are named "
            "SOURCE->TARGET; without one, a checkpoint is paired by name or structure"
        )
    return _REGISTRY[name]


def find_converter(state: Mapping[str, Any], target: str) -> Converter | None:
    """The one registered converter into ``target`` (a ``create_model`` name) whose source layout ``state``
    is in, if any.

    Example:
        >>> find_converter({"class_token": torch.zeros(1)}, "timm:vit_base_patch16_224").source
        'torchvision:vit_b_16'
    """
    full = target if ":" in target else f"torchvision:{target}"  # create_model's bare names are torchvision's
    found = [c for c in _REGISTRY.values() if c.target == full and c.accepts(state)]
    return found[0] if len(found) == 1 else None


# --------------------------------------------------------------------------------------- ViT: torchvision


_TV_VIT_BLOCK = {
    "ln_1": "norm1",
    "self_attention.in_proj_": "attn.qkv.",  # one [3*dim, dim] matrix, q, k, v stacked as timm's qkv
    "self_attention.out_proj": "attn.proj",
    "ln_2": "norm2",
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
}
_TV_VIT_TOP = {
    "class_token": "cls_token",
    "conv_proj": "patch_embed.proj",
    "encoder.pos_embedding": "pos_embed",
    "encoder.ln": "norm",
    "heads.head": "head",
}
_TV_BLOCK_KEY = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
_TIMM_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _swap(key: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if key == old or key.startswith(old + ".") or (old.endswith("_") and key.startswith(old)):
            return new + key[len(old) :].lstrip("." if old.endswith("_") else "")
    return None


def _renamed(state: Mapping[str, Tensor], rename: Callable[[str], str | None], what: str) -> StateDict:
    out: StateDict = {}
    for key, value in state.items():
        new = rename(key)
        if new is None:
            raise LoadError(f"{what}: no place for checkpoint key {key!r}; is the checkpoint in this layout?")
        out[new] = value
    return out


@register_converter("torchvision:vit_b_16", "timm:vit_base_patch16_224", marker="class_token")
def tv_vit_to_timm(state: Mapping[str, Tensor]) -> StateDict:
    """torchvision ``VisionTransformer`` -> timm ``VisionTransformer`` (class token, no pre-norm).

    Example:
        >>> out = tv_vit_to_timm({"encoder.layers.encoder_layer_3.mlp.3.bias": torch.zeros(2)})
        >>> list(out)
        ['blocks.3.mlp.fc2.bias']
    """

    def rename(key: str) -> str | None:
        block = _TV_BLOCK_KEY.match(key)
        if block:
            inner = _swap(block.group(2), _TV_VIT_BLOCK)
            return None if inner is None else f"blocks.{block.group(1)}.{inner}"
        return _swap(key, _TV_VIT_TOP)

    return _renamed(state, rename, "torchvision ViT -> timm")


@register_converter("timm:vit_base_patch16_224", "torchvision:vit_b_16", marker="cls_token")
def timm_vit_to_tv(state: Mapping[str, Tensor]) -> StateDict:
    """timm ``VisionTransformer`` -> torchvision's layout: the inverse of :func:`tv_vit_to_timm`."""
    block_back = {v: k for k, v in _TV_VIT_BLOCK.items()}
    block_back["attn.qkv."] = "self_attention.in_proj_"
    top_back = {v: k for k, v in _TV_VIT_TOP.items()}

    def rename(key: str) -> str | None:
        block = _TIMM_BLOCK_KEY.match(key)
        if block:
            rest = block.group(2)
            if rest.startswith("attn.qkv."):
                inner: str | None = "self_attention.in_proj_" + rest[len("attn.qkv.") :]
            else:
                inner = _swap(rest, {k: v for k, v in block_back.items() if k != "attn.qkv."})
            return None if inner is None else f"encoder.layers.encoder_layer_{block.group(1)}.{inner}"
        return _swap(key, top_back)

    return _renamed(state, rename, "timm ViT -> torchvision")


# ------------------------------------------------------------------------------------------------ ResNet


def _resnet_same_names(state: Mapping[str, Tensor]) -> StateDict:
    """torchvision and timm ResNets (v1.5: stride on the 3x3 conv) name and shape every tensor alike."""
    return dict(state)


register_converter("torchvision:resnet50", "timm:resnet50", marker="layer1.0.downsample.0.weight")(
    _resnet_same_names
)
register_converter("timm:resnet50", "torchvision:resnet50", marker="layer1.0.downsample.0.weight")(
    _resnet_same_names
)


# ------------------------------------------------------------------------------------------ verification


def verify_outputs(
    model: nn.Module,
    reference: nn.Module,
    *,
    probe: Tensor | None = None,
    input_size: tuple[int, int, int] = (3, 224, 224),
    tolerance: float = 1e-4,
) -> float:
    """Run ``model`` and ``reference`` (in eval mode) on one probe batch; return the largest difference.

    Args:
        model: the converted model.
        reference: the source implementation holding the original weights.
        probe: the input batch (default: 2 seeded random images of ``input_size``).
        tolerance: the largest absolute difference accepted.

    Returns:
        The largest absolute difference between the two outputs.

    Raises:
        LoadError: the difference exceeds ``tolerance`` (the message gives both), or the outputs differ in
            shape.

    Example:
        >>> a = nn.Linear(3, 2)
        >>> verify_outputs(a, a, input_size=(3,))
        0.0
    """
    if probe is None:
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(2, *input_size, generator=generator)
    modes = [(m, m.training) for m in (model, reference)]
    try:
        with torch.no_grad():
            model.eval(), reference.eval()
            device = next(iter(model.parameters()), probe).device
            ours = model(probe.to(device)).float().cpu()
            ref_device = next(iter(reference.parameters()), probe).device
            theirs = reference(probe.to(ref_device)).float().cpu()
    finally:
        for module, training in modes:
            module.train(training)
    if ours.shape != theirs.shape:
        raise LoadError(
            f"verify: the outputs differ in shape ({list(ours.shape)} vs the reference's "
            f"{list(theirs.shape)}); give the reference and the model the same number of classes"
        )
    diff = float((ours - theirs).abs().max()) if ours.numel() else 0.0
    if not diff <= tolerance:  # NaN fails too
        raise LoadError(
            f"verify: the converted model's outputs differ from the reference's by up to {diff:.3g} on a "
            f"probe batch {list(probe.shape)}, above the tolerance {tolerance:g}: the conversion is wrong "
            "for this pair (another architecture variant, preprocessing inside the model?)"
        )
    logger.info("verified against %s: largest output difference %.3g", type(reference).__name__, diff)
    return diff
