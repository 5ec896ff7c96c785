"""Resolving ``weights=``: caches, hash checks and the offline policy (construction is in :mod:`.meta`).

``weights`` may be:

* ``None`` / ``"none"``: random initialisation;
* ``"auto"`` (the default): the backbone's default pretrained weights *if they are in the local cache*;
  otherwise a prominent warning and random weights (``adapter.pretrained`` is ``False``);
* ``"imagenet"`` / ``"DEFAULT"``: the same weights, but a missing cache file is an error
  (:class:`~transferkit.errors.LoadError`) naming the expected path and the ``weights=PATH`` alternative;
* a torchvision weights enum name (``"IMAGENET1K_V1"`` or ``"ResNet50_Weights.IMAGENET1K_V1"``);
* a local file in any format :mod:`transferkit.checkpoint` reads.

Caches are the libraries' own: torchvision files live in ``$TORCH_HOME/hub/checkpoints/<file name of the
weights URL>`` and timm's in the Hugging Face hub cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``) or, for
URL-hosted timm weights, the torch hub folder too. A cached file whose name carries a hash prefix
(``resnet50-0676ba61.pth``) is checked against the SHA-256 of its bytes before use, as
``torch.hub``'s ``check_hash`` does; a truncated or corrupt file is an error naming the file.

Nothing here touches the network unless the environment variable ``TRANSFERKIT_ALLOW_DOWNLOAD=1`` is set;
then missing files are downloaded into those same caches. Without a network that fails fast (a 3 s
connection probe first): ``"auto"`` falls back to random weights with a warning, explicit weights raise
:class:`~transferkit.errors.LoadError`.

The caches and the download policy are in :mod:`.weight_cache`; each library's weights in
:mod:`.torchvision_weights` and :mod:`.timm_weights`.

Example:
    >>> from transferkit.backbones.registry import resolve_backbone
    >>> plan = resolve_weights(resolve_backbone("resnet18"), None)
    >>> plan.kind, plan.description
    ('none', 'random')
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from transferkit.backbones.registry import BackboneSpec
from transferkit.backbones.timm_weights import timm_plan
from transferkit.backbones.torchvision_weights import torchvision_enum, torchvision_plan
from transferkit.backbones.weight_cache import WEIGHTS_NONE, WEIGHTS_PATH, WeightsPlan
from transferkit.errors import ConfigError

__all__ = ["resolve_weights"]

# the name the weights' log lines have always had (the CLI shows it)
logger = logging.getLogger("transferkit.backbones.weights")


_KEYWORDS = {"auto", "imagenet", "default", "pretrained"}


def resolve_weights(spec: BackboneSpec, weights: Any) -> WeightsPlan:
    """Decide where weights come from, without loading them and without touching the network
    (unless ``TRANSFERKIT_ALLOW_DOWNLOAD=1``).

    Raises:
        ConfigError: an unknown weights name or a missing local file.
        LoadError: explicit pretrained weights that are not cached, or a cached file failing its hash check.
    """
    if isinstance(weights, str) and not weights.strip():
        # an empty value is a config slip (`weights: ""`, `--weights "$UNSET"`), not a choice of random weights
        raise ConfigError(
            f"`weights` {weights!r} is empty; pass 'auto', 'imagenet', a checkpoint path ({WEIGHTS_PATH}) or "
            f"{WEIGHTS_NONE} for random weights",
            param="weights",
        )
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in ("none", "random")):
        return WeightsPlan("none", requested=weights)
    if isinstance(weights, os.PathLike):
        return _local_file(Path(weights), weights)
    if not isinstance(weights, str):
        # a torchvision weights enum member passed directly
        if spec.source == "torchvision" and hasattr(weights, "url") and hasattr(weights, "meta"):
            return torchvision_plan(spec, weights, weights, explicit=True)
        raise ConfigError(
            f"weights must be a string, a path or None; got {type(weights).__name__}: {weights!r}"
        )
    text = weights.strip()
    if text.lower() in _KEYWORDS:
        explicit = text.lower() != "auto"
        if spec.source == "torchvision":
            return torchvision_plan(spec, torchvision_enum(spec, "DEFAULT"), weights, explicit)
        if spec.source == "timm":
            return timm_plan(spec, weights, explicit)
        if explicit:
            raise ConfigError(
                f"`weights` {weights!r}: {spec.name} is a user factory with no known pretrained weights; "
                f"pass {WEIGHTS_PATH} to a checkpoint of it, or {WEIGHTS_NONE} for its own initialisation",
                param="weights",
            )
        note = f"{spec.name} is a user factory with no known pretrained weights; using its own initialisation"
        logger.info(note)
        return WeightsPlan("none", requested=weights, notes=[note])
    path = Path(text).expanduser()
    if path.exists():
        return _local_file(path, weights)
    if spec.source == "torchvision" and re.fullmatch(r"([A-Za-z0-9_]+_Weights\.)?[A-Z][A-Z0-9_]*", text):
        return torchvision_plan(spec, torchvision_enum(spec, text), weights, explicit=True)
    raise ConfigError(
        f"`weights` {weights!r}: no such file ({path.resolve()}), and not one of 'auto', 'imagenet', 'DEFAULT', "
        f"a torchvision weights name (e.g. 'IMAGENET1K_V1') or {WEIGHTS_NONE} for random weights",
        param="weights",
    )


def _local_file(path: Path, requested: Any) -> WeightsPlan:
    if not path.is_file():
        raise ConfigError(
            f"`weights` {str(requested)!r}: {path} is not a file; pass the checkpoint file itself",
            param="weights",
        )
    return WeightsPlan("file", path=path, description=str(path), requested=requested)
