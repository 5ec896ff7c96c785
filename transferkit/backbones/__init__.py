"""Backbone adapters: every torchvision and timm classifier (and your own) with a new head.

Modules: :mod:`.registry` (names -> builders), :mod:`.heads` (where each family keeps its classifier;
head surgery by label), :mod:`.adapter` (the :class:`Adapter` module), :mod:`.weights` (``weights=``:
caches, hash checks, offline policy), :mod:`.create` (``create_model``), :mod:`.meta` (meta-device
construction and initialising only what a checkpoint lacks),
:mod:`.groups` (layer groups), :mod:`.channels` (input-channel adaptation), :mod:`.preprocess`
(data config and transforms).

Example:
    >>> from transferkit.backbones import create_model
    >>> model = create_model("resnet18", num_classes=10, weights=None)
    >>> list(model.layer_groups())[:2]
    ['stem', 'layer1']
"""

from __future__ import annotations

from transferkit.backbones.adapter import Adapter
from transferkit.backbones.create import create_model
from transferkit.backbones.head_policy import decide_head
from transferkit.backbones.head_surgery import match_labels, replace_head
from transferkit.backbones.registry import list_backbones, resolve_backbone
from transferkit.backbones.weight_cache import verify_hash
from transferkit.backbones.weights import resolve_weights

__all__ = [
    "Adapter",
    "create_model",
    "decide_head",
    "list_backbones",
    "match_labels",
    "replace_head",
    "resolve_backbone",
    "resolve_weights",
    "verify_hash",
]
