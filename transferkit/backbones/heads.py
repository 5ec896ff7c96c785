"""Where each network keeps its classifier, how to replace it, and head surgery by label.

:data:`HEADS` is a table keyed by the torchvision model class: the classifier's path, its auxiliary
classifiers, the initialisation torchvision gives a fresh head, and what the network does after the head
(only squeezenet does anything). timm models need no table: they expose ``get_classifier`` and
``reset_classifier``. Any other network is searched with the documented rule of :func:`find_user_head`.

Example:
    >>> import torchvision
    >>> net = torchvision.models.resnet18(num_classes=1000)
    >>> replace_head(net, 4)
    {}
    >>> net.fc.out_features
    4
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from transferkit.errors import ConfigError

__all__ = [
    "HeadInfo",
    "HEADS",
    "find_heads",
    "find_user_head",
    "get_module",
    "set_module",
    "new_head_like",
    "replace_head",
    "replace_with_info",
    "match_labels",
    "copy_rows",
    "HEAD_NAME_PATTERN",
]

logger = logging.getLogger(__name__)


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


def _is_classifier_layer(m: nn.Module) -> bool:
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
        if name and _is_classifier_layer(m) and any(HEAD_NAME_PATTERN.match(p) for p in name.split(".")):
            found = name
    if found is None:
        layers = [n for n, m in model.named_modules() if n and _is_classifier_layer(m)][-5:]
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
        if not _is_classifier_layer(head):
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


def validate_class_names(class_names: Any) -> None:
    """Refuse labels that cannot name one class each: a bare string, a non-sequence, duplicates.

    Raises:
        ConfigError: naming the problem (the duplicated labels, say).
    """
    if isinstance(class_names, str | bytes) or not isinstance(class_names, Sequence):
        raise ConfigError(
            f"class_names must be a list of labels, one per class, e.g. ['cat', 'dog']; got "
            f"{type(class_names).__name__}: {class_names!r:.100}"
        )
    counts: dict[Any, int] = {}
    for label in class_names:
        if not isinstance(label, str | int) or isinstance(label, bool):
            raise ConfigError(
                f"class_names must be strings (or ints); got {label!r} ({type(label).__name__})"
            )
        counts[label] = counts.get(label, 0) + 1
    dupes = [label for label, n in counts.items() if n > 1]
    if dupes:
        raise ConfigError(
            f"class_names has duplicate labels {dupes[:5]!r}; each output of the head needs its own label"
        )


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


def new_head_like(
    old: nn.Module,
    num_classes: int,
    init: Callable[[nn.Module], None] | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """A fresh Linear or 1x1 Conv2d with ``num_classes`` outputs, like ``old`` (dtype, bias, device).

    Args:
        old: the head it replaces.
        num_classes: outputs of the new head.
        init: initialisation applied to the new head (skipped on the meta device).
        device: where to create it (default: the old head's device).

    Raises:
        ConfigError: the old head is neither a Linear nor a Conv2d.
    """
    w = old.weight
    bias = getattr(old, "bias", None) is not None
    kw = {"device": torch.device(device) if device is not None else w.device, "dtype": w.dtype}
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=bias, **kw)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(
            old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, bias=bias, **kw
        )
    else:
        raise ConfigError(
            f"cannot replace a classifier of type {type(old).__name__}: expected nn.Linear or nn.Conv2d; "
            "name the right layer with head_name=."
        )
    if hasattr(old, "stddev"):  # inception's per-layer init scale
        new.stddev = old.stddev
    if init is not None and new.weight.device.type != "meta":
        init(new)
    return new


def match_labels(class_names: Sequence[str], pretrained_classes: Sequence[str]) -> dict[int, int]:
    """``{new_index: old_index}`` for every new class whose label the old head also had.

    Labels compare case-insensitively, with ``_`` and ``-`` read as spaces (``"golden_retriever"`` matches
    ``"golden retriever"``).

    Example:
        >>> match_labels(["dog", "Cat", "emu"], ["cat", "dog", "fish"])
        {0: 1, 1: 0}
    """

    def norm(s: str) -> str:
        return " ".join(str(s).replace("_", " ").replace("-", " ").lower().split())

    old = {}
    for i, label in enumerate(pretrained_classes):
        old.setdefault(norm(label), i)
    return {i: old[norm(c)] for i, c in enumerate(class_names) if norm(c) in old}


def copy_rows(new: nn.Module, old_weight: Tensor, old_bias: Tensor | None, rows: Mapping[int, int]) -> None:
    """Copy the old head's rows into the new head: ``new[i] = old[rows[i]]``.

    Raises:
        ConfigError: shapes other than the class dimension differ, or an index is out of range.
    """
    if tuple(old_weight.shape[1:]) != tuple(new.weight.shape[1:]):
        raise ConfigError(
            f"head surgery needs the same input size: old head weight {tuple(old_weight.shape)}, "
            f"new {tuple(new.weight.shape)}"
        )
    for n, o in rows.items():
        if not (0 <= n < new.weight.shape[0] and 0 <= o < old_weight.shape[0]):
            raise ConfigError(
                f"head surgery row {n} <- {o} out of range: new head has {new.weight.shape[0]} classes, "
                f"old {old_weight.shape[0]}"
            )
    if not rows:
        return
    idx_new = torch.tensor(list(rows), dtype=torch.long)
    idx_old = torch.tensor(list(rows.values()), dtype=torch.long)
    with torch.no_grad():
        new.weight[idx_new] = old_weight[idx_old].to(new.weight)
        if new.bias is not None and old_bias is not None:
            new.bias[idx_new] = old_bias[idx_old].to(new.bias)


def _keep_rows(
    num_classes: int,
    keep: Mapping[int, int] | Sequence[int | None] | None,
    class_names: Sequence[str] | None,
    pretrained_classes: Sequence[str] | None,
) -> dict[int, int]:
    if keep is not None:
        if isinstance(keep, Mapping):
            return {int(k): int(v) for k, v in keep.items()}
        if len(keep) != num_classes:
            raise ConfigError(
                f"keep= as a sequence needs one entry per new class ({num_classes}), got {len(keep)}; "
                "use None for classes that start fresh, or pass a {new_index: old_index} dict."
            )
        return {i: int(o) for i, o in enumerate(keep) if o is not None}
    if class_names is not None and pretrained_classes is not None:
        if len(class_names) != num_classes:
            raise ConfigError(f"class_names has {len(class_names)} labels but num_classes is {num_classes}")
        return match_labels(class_names, pretrained_classes)
    return {}


def replace_head(
    model: nn.Module,
    num_classes: int,
    *,
    keep: Mapping[int, int] | Sequence[int | None] | None = None,
    class_names: Sequence[str] | None = None,
    pretrained_classes: Sequence[str] | None = None,
    head_name: str | None = None,
) -> dict[int, int]:
    """Replace a network's classifier (and auxiliary classifiers) in place, optionally keeping rows.

    Head surgery by label: the new head starts fresh, except the rows of classes the old head already
    knew, which are copied from the old head (reordered to the new label order).

    Args:
        model: a torchvision, timm or user network, or an :class:`~transferkit.backbones.Adapter`.
        num_classes: the new number of classes.
        keep: which old rows to keep: ``{new_index: old_index}``, or a sequence with one old index (or
            ``None``) per new class. Default: matched by label when ``class_names`` and
            ``pretrained_classes`` are both given, else nothing is kept.
        class_names: the new classes' labels (``num_classes`` of them).
        pretrained_classes: the old head's labels, e.g. torchvision ``weights.meta["categories"]``.
        head_name: the classifier's path, for networks the rules do not cover.

    Returns:
        ``{new_index: old_index}`` of the rows copied into the main head (aux heads get the same rows).

    Raises:
        ConfigError: the classifier cannot be found, or ``keep`` does not fit.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> replace_head(net, 2, keep=[2, None], head_name="1")
        {0: 2}
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"replace_head takes the network (an nn.Module), got {type(model).__name__}")
    if class_names is not None:
        validate_class_names(class_names)
    adapter = model if hasattr(model, "backbone") and hasattr(model, "_head_info") else None
    net = adapter.backbone if adapter is not None else model
    if adapter is not None and head_name is None:
        info = adapter._head_info
    else:
        info = find_heads(net, head_name)
    rows = _keep_rows(num_classes, keep, class_names, pretrained_classes)
    replace_with_info(net, info, num_classes, rows)
    if adapter is not None:
        adapter._after_head_change(num_classes, class_names)
    return rows


def replace_with_info(
    net: nn.Module, info: HeadInfo, num_classes: int, rows: Mapping[int, int] | None = None
) -> None:
    """Replace the heads :func:`find_heads` located, copying ``rows`` (``{new: old}``) from the old heads."""
    rows = dict(rows or {})
    old = get_module(net, info.main)
    old_w = old.weight.detach().clone() if rows else None
    old_b = old.bias.detach().clone() if rows and getattr(old, "bias", None) is not None else None
    if info.timm:
        net.reset_classifier(num_classes)
        new = net.get_classifier()
    else:
        new = new_head_like(old, num_classes, info.init)
        set_module(net, info.main, new)
    if rows:
        copy_rows(new, old_w, old_b, rows)
    for path in info.aux:
        old_aux = get_module(net, path)
        aux = new_head_like(old_aux, num_classes, info.init)
        if rows:
            aux_bias = old_aux.bias.detach() if getattr(old_aux, "bias", None) is not None else None
            copy_rows(aux, old_aux.weight.detach(), aux_bias, rows)
        set_module(net, path, aux)
    logger.info(
        "replaced %s.%s: %d classes, %d rows kept", type(net).__name__, info.main, num_classes, len(rows)
    )
