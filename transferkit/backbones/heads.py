"""Where each network keeps its classifier: the :data:`HEADS` table and the rules that find a head.

:data:`HEADS` is a table keyed by the torchvision model class: the classifier's path, its auxiliary
classifiers, the initialisation torchvision gives a fresh head, and what the network does after the head
(only squeezenet does anything). timm models need no table: they expose ``get_classifier`` and
``reset_classifier``. Any other network is searched with the documented rule of :func:`find_user_head`.
Replacing a head, and head surgery by label, are in :mod:`.head_surgery`.

Example:
    >>> import torchvision
    >>> find_heads(torchvision.models.googlenet(num_classes=10, init_weights=False))
    HeadInfo(main='fc', aux=('aux1.fc2', 'aux2.fc2'), init=<...>, post=None, timm=False)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from transferkit.errors import ConfigError

__all__ = [
    "HeadInfo",
    "HEADS",
    "HEAD_NAME_PATTERN",
    "find_heads",
    "find_user_head",
    "get_module",
    "set_module",
    "canonical_path",
    "is_classifier_layer",
    "is_torchvision",
    "is_timm",
]


# ---- initialisation of a fresh head, as each torchvision family's __init__ does it ----------------------


def _init_normal(std: float) -> Callable[[nn.Module], None]:
    def init(m: nn.Module) -> None:
        nn.init.normal_(m.weight, 0.0, std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)

    return init


def _init_trunc_normal(std: float, zero_bias: bool = True) -> Callable[[nn.Module], None]:
    def init(m: nn.Module) -> None:
        if not zero_bias:
            m.reset_parameters()  # the bias keeps PyTorch's default, as torchvision leaves it
        nn.init.trunc_normal_(m.weight, mean=0.0, std=getattr(m, "stddev", std), a=-2.0, b=2.0)
        if zero_bias and m.bias is not None:
            nn.init.zeros_(m.bias)

    return init


def _init_zero_bias(m: nn.Module) -> None:
    m.reset_parameters()
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _init_efficientnet(m: nn.Module) -> None:
    bound = 1.0 / math.sqrt(m.weight.shape[0])
    nn.init.uniform_(m.weight, -bound, bound)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _init_mnasnet(m: nn.Module) -> None:
    nn.init.kaiming_uniform_(m.weight, mode="fan_out", nonlinearity="sigmoid")
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _init_zeros(m: nn.Module) -> None:
    nn.init.zeros_(m.weight)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _squeezenet_post(x: Tensor) -> Tensor:
    # squeezenet's classifier is Dropout, Conv1x1 (the head), ReLU, AdaptiveAvgPool; forward then flattens
    return torch.flatten(nn.functional.adaptive_avg_pool2d(nn.functional.relu(x), 1), 1)


@dataclass(frozen=True)
class HeadInfo:
    """Where a network keeps its classifier(s).

    Attributes:
        main: qualified path of the classifier inside the network (``"fc"``, ``"classifier.6"``);
            ``-1`` picks the last child of a Sequential.
        aux: paths of auxiliary classifiers (inception, googlenet), replaced too.
        init: initialises a freshly created head the way the family's constructor does (``None``: the
            layer's own default initialisation, as ``nn.Linear``/``nn.Conv2d`` construct it).
        post: what the network does to the head's output before returning it (identity for all but
            squeezenet); :meth:`Adapter.forward_head` applies it.
        timm: a timm model, whose head is replaced by its own ``reset_classifier``.
    """

    main: str
    aux: tuple[str, ...] = ()
    init: Callable[[nn.Module], None] | None = None
    post: Callable[[Tensor], Tensor] | None = None
    timm: bool = False


# torchvision class name (only for classes defined in torchvision) -> head layout; covers every builder in torchvision.models.list_models(module=...)
HEADS: dict[str, HeadInfo] = {
    "ResNet": HeadInfo("fc"),
    "RegNet": HeadInfo("fc", init=_init_normal(0.01)),
    "ShuffleNetV2": HeadInfo("fc"),
    "AlexNet": HeadInfo("classifier.6"),
    "VGG": HeadInfo("classifier.6", init=_init_normal(0.01)),
    "SqueezeNet": HeadInfo("classifier.1", init=_init_normal(0.01), post=_squeezenet_post),
    "Inception3": HeadInfo("fc", aux=("AuxLogits.fc",), init=_init_trunc_normal(0.1, zero_bias=False)),
    "GoogLeNet": HeadInfo("fc", aux=("aux1.fc2", "aux2.fc2"), init=_init_trunc_normal(0.01, zero_bias=False)),
    "DenseNet": HeadInfo("classifier", init=_init_zero_bias),
    "MobileNetV2": HeadInfo("classifier.-1", init=_init_normal(0.01)),
    "MobileNetV3": HeadInfo("classifier.-1", init=_init_normal(0.01)),
    "EfficientNet": HeadInfo("classifier.-1", init=_init_efficientnet),
    "MNASNet": HeadInfo("classifier.-1", init=_init_mnasnet),
    "ConvNeXt": HeadInfo("classifier.2", init=_init_trunc_normal(0.02)),
    "MaxVit": HeadInfo("classifier.-1", init=_init_normal(0.02)),
    "VisionTransformer": HeadInfo("heads.head", init=_init_zeros),
    "SwinTransformer": HeadInfo("head", init=_init_trunc_normal(0.02)),
}


#: the documented rule for user networks: a path component named like one of these words
HEAD_NAME_PATTERN = re.compile(r"^(fc|head|heads|classifier|linear|logits|last_linear)[\d_]*$")


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path; an integer component indexes a Sequential (``-1`` = last)."""
    module = model
    for part in path.split(".") if path else []:
        if re.fullmatch(r"-?\d+", part) and isinstance(module, nn.Sequential | nn.ModuleList):
            module = module[int(part)]
        else:
            module = getattr(module, part)
    return module


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at a dotted path (the path of an existing submodule)."""
    parent_path, _, last = canonical_path(model, path).rpartition(".")
    setattr(get_module(model, parent_path), last, new)


def canonical_path(model: nn.Module, path: str) -> str:
    """Replace ``-1`` indices by the real index, so the path matches ``named_modules`` names."""
    target = get_module(model, path)
    for name, module in model.named_modules(remove_duplicate=False):
        if module is target:
            return name
    raise ConfigError(f"module path {path!r} is not inside {type(model).__name__}")


def is_classifier_layer(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1))


def find_user_head(model: nn.Module) -> str:
    """The classifier of a network neither torchvision nor timm built.

    The rule: the *last* (in registration order) ``nn.Linear`` or 1x1 ``nn.Conv2d`` whose qualified name
    has a component named ``fc``, ``head``, ``heads``, ``classifier``, ``linear``, ``logits`` or
    ``last_linear`` (optionally followed by digits, e.g. ``fc2``). Pass ``head_name=`` to
    :func:`~transferkit.backbones.create_model` when the rule picks the wrong layer.

    Raises:
        ConfigError: no layer matches the rule.
    """
    found = None
    for name, m in model.named_modules():
        if name and is_classifier_layer(m) and any(HEAD_NAME_PATTERN.match(p) for p in name.split(".")):
            found = name
    if found is None:
        layers = [n for n, m in model.named_modules() if n and is_classifier_layer(m)][-5:]
        raise ConfigError(
            f"cannot find the classifier of {type(model).__name__}: expected the last nn.Linear or 1x1 "
            f"nn.Conv2d named like fc/head/classifier/linear, found none (last layers: {layers}); "
            "name it with head_name='path.to.layer'."
        )
    return found


def is_torchvision(model: nn.Module) -> bool:
    """True for networks defined in torchvision (timm reuses class names like ``ResNet``)."""
    return type(model).__module__.startswith("torchvision.")


def is_timm(model: nn.Module) -> bool:
    return callable(getattr(model, "get_classifier", None)) and callable(
        getattr(model, "reset_classifier", None)
    )


def find_heads(model: nn.Module, head_name: str | None = None) -> HeadInfo:
    """The :class:`HeadInfo` for any network, with ``-1`` paths resolved to real names.

    Args:
        model: a torchvision, timm or user network.
        head_name: the classifier's qualified name, overriding every rule.
    """
    if head_name is not None:
        if not isinstance(head_name, str) or not head_name:
            raise ConfigError(f"head_name must be a dotted module path such as 'fc', got {head_name!r}")
        try:
            head = get_module(model, head_name)
        except (AttributeError, IndexError) as exc:
            raise ConfigError(
                f"head_name {head_name!r} is not a submodule of {type(model).__name__}; "
                f"its last layers are {_last_layers(model)}"
            ) from exc
        if not is_classifier_layer(head):
            raise ConfigError(
                f"head_name {head_name!r} is a {type(head).__name__}; the head must be an nn.Linear or a 1x1 "
                f"nn.Conv2d (its last layers are {_last_layers(model)}); name that layer instead"
            )
        return HeadInfo(canonical_path(model, head_name))
    info = HEADS.get(type(model).__name__) if is_torchvision(model) else None
    if info is None and is_timm(model):
        return HeadInfo(canonical_path_of(model, model.get_classifier()), timm=True)
    if info is None:
        return HeadInfo(find_user_head(model))
    aux = tuple(canonical_path(model, p) for p in info.aux if _exists(model, p))
    return HeadInfo(canonical_path(model, info.main), aux, info.init, info.post)


def _last_layers(model: nn.Module) -> str:
    layers = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if n and not list(m.children())]
    return ", ".join(layers[-4:]) or "none"


def canonical_path_of(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ConfigError(f"{type(model).__name__}.get_classifier() returned a module that is not inside it")


def _exists(model: nn.Module, path: str) -> bool:
    try:
        return isinstance(get_module(model, path), nn.Module)
    except (AttributeError, IndexError):
        return False
