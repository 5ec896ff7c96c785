"""timm's pretrained weights: its pretrained config, the Hugging Face hub cache, and downloads.

:func:`timm_plan` finds the weights file a timm model's pretrained config names, in the hub cache or the
torch hub folder, downloads it only when allowed, and reads the ImageNet class names of its head.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transferkit.backbones.registry import BackboneSpec
from transferkit.backbones.weight_cache import (
    ALLOW_DOWNLOAD_ENV,
    HASH_IN_NAME,
    WEIGHTS_PATH,
    WeightsPlan,
    download_failed,
    downloads_allowed,
    hf_cache_dir,
    not_cached,
    reachable,
    torchvision_cache_path,
    verify_hash,
)
from transferkit.errors import LoadError

__all__ = ["timm_plan"]

# the name the weights' log lines have always had (the CLI shows it)
logger = logging.getLogger("transferkit.backbones.weights")


def timm_plan(spec: BackboneSpec, requested: Any, explicit: bool) -> WeightsPlan:
    plan = _timm_source(spec, requested, explicit)
    if plan.pretrained and plan.categories is None and plan.pretrained_cfg:
        plan.categories = _timm_categories(plan.pretrained_cfg)
    return plan


def _timm_source(spec: BackboneSpec, requested: Any, explicit: bool) -> WeightsPlan:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(spec.name, allow_unregistered=True)
    cfg_dict = cfg.to_dict() if cfg is not None else {}
    desc = f"timm:{spec.name}"
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        if explicit:
            raise LoadError(f"timm has no pretrained weights registered for {spec.name}; pass {WEIGHTS_PATH}")
        note = f"timm has no pretrained weights for {spec.name}; using random weights"
        logger.warning(note)
        return WeightsPlan("none", requested=requested, notes=[note], pretrained_cfg=cfg_dict)
    if cfg.file:
        return WeightsPlan(
            "file", Path(cfg.file), f"{desc} ({cfg.file})", requested=requested, pretrained_cfg=cfg_dict
        )
    candidates: list[tuple[str, Path | None]] = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@", 1)[0]
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=hf_cache_dir())
            candidates.append(
                (f"{hf_cache_dir()}/models--{repo.replace('/', '--')}/snapshots/*/{name}", None)
            )
            if isinstance(hit, str):
                return WeightsPlan(
                    "file", Path(hit), f"{desc} (hf-hub:{repo})", requested=requested, pretrained_cfg=cfg_dict
                )
    if cfg.url:
        path = torchvision_cache_path(cfg.url)
        candidates.append((str(path), path))
        if path.is_file():
            verify_hash(path)
            return WeightsPlan(
                "file", path, f"{desc} ({cfg.url})", requested=requested, pretrained_cfg=cfg_dict
            )
    if downloads_allowed():
        return _timm_download(cfg, desc, requested, cfg_dict, explicit)
    plan = not_cached(desc, " or ".join(c for c, _ in candidates), requested, explicit)
    plan.pretrained_cfg = cfg_dict
    return plan


def _timm_categories(cfg_dict: dict[str, Any]) -> list[str] | None:
    """ImageNet class names of a timm pretrained head (first synonym, as torchvision names them)."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(cfg_dict)
        if not subset:
            return None
        return [d.split(",")[0].strip() for d in ImageNetInfo(subset).label_descriptions()]
    except Exception as exc:  # noqa: BLE001 - class names are a bonus (head surgery), never a requirement
        logger.debug("no ImageNet class names for %s: %s", cfg_dict.get("architecture"), exc)
        return None


def _timm_download(
    cfg: Any, desc: str, requested: Any, cfg_dict: dict[str, Any], explicit: bool = True
) -> WeightsPlan:
    url = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co") if cfg.hf_hub_id else cfg.url
    if not reachable(url):
        plan = download_failed(desc, url, requested, explicit, "no network connection")
        plan.pretrained_cfg = cfg_dict
        return plan
    try:
        return _timm_fetch(cfg, desc, requested, cfg_dict)
    except Exception as exc:  # noqa: BLE001 - huggingface_hub and urllib raise many types; all mean "not here"
        plan = download_failed(desc, url, requested, explicit, f"{type(exc).__name__}: {exc}")
        plan.pretrained_cfg = cfg_dict
        return plan


def _timm_fetch(cfg: Any, desc: str, requested: Any, cfg_dict: dict[str, Any]) -> WeightsPlan:
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        repo = cfg.hf_hub_id.split("@", 1)[0]
        logger.info("downloading %s from the Hugging Face hub (%s=1)", repo, ALLOW_DOWNLOAD_ENV)
        try:
            path = hf_hub_download(repo, cfg.hf_hub_filename or "model.safetensors", cache_dir=hf_cache_dir())
        except Exception:  # noqa: BLE001 - older repos only have the .bin file
            path = hf_hub_download(repo, "pytorch_model.bin", cache_dir=hf_cache_dir())
        return WeightsPlan(
            "file", Path(path), f"{desc} (hf-hub:{repo})", requested=requested, pretrained_cfg=cfg_dict
        )
    import torch.hub

    path = torchvision_cache_path(cfg.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    match = HASH_IN_NAME.search(path.name)
    torch.hub.download_url_to_file(cfg.url, str(path), match.group(1) if match else None)
    return WeightsPlan("file", path, f"{desc} ({cfg.url})", requested=requested, pretrained_cfg=cfg_dict)
