"""Layer groups: a network cut into ordered groups of parameters, from input to output.

Freezing schedules and layer-wise learning rates build on these groups. Rules, by family:

* torchvision ResNet (and ResNeXt, Wide ResNet): ``stem`` (conv1, bn1), ``layer1`` .. ``layer4``;
* torchvision ViT: ``embed`` (patch projection, class token, position embedding), ``blocks.0`` ..
  ``blocks.N-1``, ``norm`` (the final LayerNorm);
* timm models: their own ``group_matcher(coarse=True)`` (the groups timm uses for layer decay), named
  after the matcher's keys (``stem``, ``blocks.0``, ...);
* anything else: *stages*. The network's top-level children in registration order, with top-level
  containers (``Sequential``, ``ModuleList``) opened one level (``features.0``, ``features.1``, ...),
  are merged into stages that end where the resolution falls: a unit holding a strided convolution or
  pooling starts a new stage. A CIFAR ResNet-20 (``conv1``, ``bn1``, ``layer1.0`` .. ``layer3.2``) gets
  ``conv1+bn1+layer1``, ``layer2``, ``layer3``; a stage inside one container is named by its range
  (``features.3-5``). A network without downsampling keeps its units as groups.

Parameters no rule claims land in ``neck`` and the classifier's parameters (main and auxiliary heads)
always form the last group, ``head``. Every parameter is in exactly one group.

Example:
    >>> import torchvision
    >>> net = torchvision.models.resnet18(num_classes=3)
    >>> list(network_groups(net, ["fc"]))
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4', 'head']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import nn

from transferkit.rename import is_under

__all__ = ["network_groups", "GROUPERS"]

Grouper = Callable[[nn.Module, list[str]], list[tuple[str, str]]]


def _resnet(net: nn.Module, names: list[str]) -> list[tuple[str, str]]:
    rules = [("stem", "conv1"), ("stem", "bn1")] + [(f"layer{i}", f"layer{i}") for i in range(1, 5)]
    return _by_prefix(names, rules)


def _vit(net: nn.Module, names: list[str]) -> list[tuple[str, str]]:
    rules = [("embed", "conv_proj"), ("embed", "class_token"), ("embed", "encoder.pos_embedding")]
    rules += [
        (f"blocks.{i}", f"encoder.layers.{n}") for i, (n, _) in enumerate(net.encoder.layers.named_children())
    ]
    rules.append(("norm", "encoder.ln"))
    return _by_prefix(names, rules)


def _by_prefix(names: list[str], rules: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for name in names:
        group = next((g for g, prefix in rules if is_under(name, prefix)), None)
        if group is not None:
            out.append((name, group))
    return out


def _default(net: nn.Module, names: list[str]) -> list[tuple[str, str]]:
    units: list[tuple[str, str, nn.Module]] = []  # (top-level child, unit name, module)
    containers = nn.Sequential | nn.ModuleList | nn.ModuleDict
    for child_name, child in net.named_children():
        if isinstance(child, containers) and len(child) > 1:
            units += [(child_name, f"{child_name}.{n}", m) for n, m in child.named_children()]
        else:
            units.append((child_name, child_name, child))
    direct = {n for n, _ in net.named_parameters(recurse=False)}
    # parameters held by the network itself (tokens, embeddings) come before everything else
    embed = [(n, "embed") for n in names if n in direct]
    stages = _stages(units)
    if len(stages) < 2:  # no downsampling to cut at: each unit is its own group
        return embed + _by_prefix(names, [(u, u) for _, u, _ in units])
    # a stage is named after the units whose parameters it holds (not the head's, not a parameter-free pool)
    held = [(c, u, m) for c, u, m in units if any(is_under(n, u) for n in names)]
    rules = [
        (_stage_name([x for x in stage if x in held], held), unit) for stage in stages for _, unit, _ in stage
    ]
    return embed + _by_prefix(names, rules)


def _downsamples(module: nn.Module) -> bool:
    """Whether a module lowers the spatial resolution (a strided conv or pooling; not a global pool)."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and max(_tuple(m.stride)) > 1:
            return True
        pool = isinstance(m, nn.MaxPool2d | nn.AvgPool2d | nn.MaxPool1d | nn.AvgPool1d)
        if pool and max(_tuple(m.stride or m.kernel_size)) > 1:
            return True
    return False


def _tuple(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,)


def _stages(units: list[tuple[str, str, nn.Module]]) -> list[list[tuple[str, str, nn.Module]]]:
    """Units cut into stages at every unit that downsamples; stages without parameters are dropped."""
    stages: list[list[tuple[str, str, nn.Module]]] = []
    for unit in units:
        if not stages or (_downsamples(unit[2]) and _has_parameters(stages[-1])):
            stages.append([])
        stages[-1].append(unit)
    return [s for s in stages if _has_parameters(s)]


def _has_parameters(stage: list[tuple[str, str, nn.Module]]) -> bool:
    return any(next(m.parameters(), None) is not None for _, _, m in stage)


def _stage_name(stage: list[tuple[str, str, nn.Module]], units: list[tuple[str, str, nn.Module]]) -> str:
    """``layer2`` for a whole child, ``features.3-5`` for part of a container, joined by ``+``."""
    parts = []
    for child in dict.fromkeys(c for c, _, _ in stage):
        mine = [u for c, u, _ in stage if c == child]
        if not mine:
            continue
        every = [u for c, u, _ in units if c == child]
        if mine == every:
            parts.append(child)
        else:
            first, last = mine[0].rsplit(".", 1)[1], mine[-1].rsplit(".", 1)[1]
            parts.append(f"{child}.{first}" if first == last else f"{child}.{first}-{last}")
    return "+".join(parts)


def _timm(net: nn.Module, names: list[str]) -> list[tuple[str, str]]:
    matcher = net.group_matcher(coarse=True)
    if not isinstance(matcher, dict):
        from timm.models._manipulate import group_with_matcher

        params = [(n, p) for n, p in net.named_parameters() if n in set(names)]
        grouped = group_with_matcher(params, matcher)
        return [(n, f"group.{gid}") for gid, members in sorted(grouped.items()) for n in members]
    specs = []
    for ordinal, (gname, spec) in enumerate(matcher.items()):
        if spec is None:
            continue
        for regex, suffix in spec if isinstance(spec, list | tuple) else [(spec, None)]:
            specs.append((re.compile(regex), ordinal, gname, suffix))
    keyed = []
    for name in names:
        for regex, ordinal, gname, suffix in specs:
            m = regex.match(name)
            if m:
                ids = [int(float(g)) for g in m.groups() if g is not None] + list(suffix or ())
                label = ".".join([gname, *map(str, ids)])
                keyed.append(((ordinal, *ids), name, label))
                break
    # timm orders groups by (matcher position, captured block indices): keep that order
    keyed.sort(key=lambda t: t[0])
    # timm's sentinel index (99999) places layers after every block (conv_head + bn2, a final norm); users
    # read those layers' own names instead of the index
    after: dict[str, list[str]] = {}
    for key, name, label in keyed:
        if any(i >= _TIMM_LAST for i in key[1:]):
            after.setdefault(label, [])
            top = name.split(".")[0]
            if top not in after[label]:
                after[label].append(top)
    return [(name, "+".join(after[label]) if label in after else label) for _, name, label in keyed]


_TIMM_LAST = 99999  # timm's group_matcher index for "after the last block"

#: torchvision class name -> grouping function (timm models are detected by their group_matcher)
GROUPERS: dict[str, Grouper] = {"ResNet": _resnet, "VisionTransformer": _vit}


def network_groups(net: nn.Module, head_modules: Sequence[str]) -> dict[str, list[str]]:
    """Ordered ``{group: [parameter names]}`` of a network (names relative to ``net``), ``head`` last.

    Args:
        net: the network.
        head_modules: qualified names of its classifier modules (main and auxiliary).
    """
    all_names = [n for n, _ in net.named_parameters()]
    head = [n for n in all_names if any(is_under(n, h) for h in head_modules)]
    rest = [n for n in all_names if n not in set(head)]
    grouper = GROUPERS.get(type(net).__name__) if type(net).__module__.startswith("torchvision.") else None
    if grouper is None:
        grouper = _timm if callable(getattr(net, "group_matcher", None)) else _default
    groups: dict[str, list[str]] = {}
    for name, label in grouper(net, rest):
        groups.setdefault(label, []).append(name)
    claimed = {n for members in groups.values() for n in members}
    # a family's own "head" label (a pre-logits layer, say) is not the classifier: it joins the neck
    neck = groups.pop("head", []) + [n for n in rest if n not in claimed]
    if neck:
        groups.setdefault("neck", []).extend(neck)
    groups["head"] = head
    return groups
