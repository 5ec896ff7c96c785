"""torchvision's pretrained weights: the weights enum, its cache file, and the builder arguments it needs.

Example:
    >>> from transferkit.backbones.registry import resolve_backbone
    >>> torchvision_enum(resolve_backbone("resnet18"), "IMAGENET1K_V1").name
    'IMAGENET1K_V1'
"""

from __future__ import annotations

import logging
from typing import Any

from transferkit.backbones.registry import BackboneSpec
from transferkit.backbones.weight_cache import (
    ALLOW_DOWNLOAD_ENV,
    HASH_IN_NAME,
    WEIGHTS_PATH,
    WeightsPlan,
    download_failed,
    downloads_allowed,
    not_cached,
    reachable,
    torchvision_cache_path,
    verify_hash,
)
from transferkit.errors import ConfigError

__all__ = ["TORCHVISION_WEIGHT_KWARGS", "torchvision_enum", "torchvision_plan"]

# the name the weights' log lines have always had (the CLI shows it)
logger = logging.getLogger("transferkit.backbones.weights")


def _vit_kwargs(w: Any) -> dict[str, Any]:
    return {"image_size": w.meta["min_size"][0]}


def _maxvit_kwargs(w: Any) -> dict[str, Any]:
    return {"input_size": w.meta["min_size"]}


def _transform_input(w: Any) -> dict[str, Any]:
    # these weights were trained on inputs normalised differently; torchvision's builder sets this too
    return {"transform_input": True}


#: torchvision builder -> constructor arguments its pretrained weights need (what the builder itself sets)
TORCHVISION_WEIGHT_KWARGS = {
    "VisionTransformer": _vit_kwargs,
    "MaxVit": _maxvit_kwargs,
    "Inception3": _transform_input,
    "GoogLeNet": _transform_input,
}


def torchvision_enum(spec: BackboneSpec, name: str) -> Any:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(spec.name)
    except ValueError as exc:
        raise ConfigError(
            f"torchvision has no pretrained weights for {spec.name}; pass {WEIGHTS_PATH}"
        ) from exc
    short = name.rsplit(".", 1)[-1]
    if "." in name and name.split(".", 1)[0] != enum.__name__:
        raise ConfigError(f"weights={name!r} belong to another model; {spec.name} takes {enum.__name__}.*")
    try:
        return enum.DEFAULT if short.upper() == "DEFAULT" else enum[short]
    except KeyError:
        names = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ConfigError(
            f"weights={name!r} is not a weights name of {spec.name}; expected one of: {names}"
        ) from None


def torchvision_plan(spec: BackboneSpec, member: Any, requested: Any, explicit: bool) -> WeightsPlan:
    desc = f"torchvision:{type(member).__name__}.{member.name}"
    path = torchvision_cache_path(member.url)
    categories = list(member.meta.get("categories") or []) or None
    if not path.is_file():
        if not downloads_allowed():
            plan = not_cached(desc, str(path), requested, explicit)
            plan.tv_weights = member
            return plan
        import torch.hub

        if not reachable(member.url):
            plan = download_failed(desc, member.url, requested, explicit, "no network connection")
            plan.tv_weights = member
            return plan
        logger.info("downloading %s to %s (%s=1)", member.url, path, ALLOW_DOWNLOAD_ENV)
        path.parent.mkdir(parents=True, exist_ok=True)
        match = HASH_IN_NAME.search(path.name)
        try:
            torch.hub.download_url_to_file(member.url, str(path), match.group(1) if match else None)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; a hash mismatch a RuntimeError
            plan = download_failed(desc, member.url, requested, explicit, f"{type(exc).__name__}: {exc}")
            plan.tv_weights = member
            return plan
    verify_hash(path)
    return WeightsPlan("file", path, desc, categories, tv_weights=member, requested=requested)
