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

Example:
    >>> from transferkit.backbones.registry import resolve_backbone
    >>> plan = resolve_weights(resolve_backbone("resnet18"), None)
    >>> plan.kind, plan.description
    ('none', 'random')
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from transferkit.backbones.registry import BackboneSpec
from transferkit.errors import ConfigError, LoadError

__all__ = [
    "WeightsPlan",
    "resolve_weights",
    "torchvision_cache_path",
    "verify_hash",
    "downloads_allowed",
    "ALLOW_DOWNLOAD_ENV",
    "TORCHVISION_WEIGHT_KWARGS",
]

logger = logging.getLogger(__name__)

ALLOW_DOWNLOAD_ENV = "TRANSFERKIT_ALLOW_DOWNLOAD"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's HASH_REGEX
# marked parameters (transferkit.errors): the CLI shows them as --weights=PATH and --weights=None
_PATH = "`weights`=PATH"
_NONE = "`weights`=None"
_KEYWORDS = {"auto", "imagenet", "default", "pretrained"}
_verified: dict[tuple[str, int, int], bool] = {}


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


@dataclass
class WeightsPlan:
    """Where the weights for a backbone come from.

    Attributes:
        kind: ``"none"`` (random), ``"file"`` (a local or cached file to load).
        path: the file to load.
        description: for logs, reports and ``adapter.weights`` (``"random"``,
            ``"torchvision:ResNet50_Weights.IMAGENET1K_V2"``, ``"timm:hf-hub:timm/..."``, a path).
        categories: the class names of the file's head, when known.
        tv_weights: the torchvision weights enum member, if any (for transforms and builder arguments).
        pretrained_cfg: timm's pretrained config, if any.
        requested: the ``weights=`` value the user gave.
        notes: lines for the load report (e.g. why random weights were used).
    """

    kind: str
    path: Path | None = None
    description: str = "random"
    categories: list[str] | None = None
    tv_weights: Any = None
    pretrained_cfg: dict[str, Any] | None = None
    requested: Any = None
    notes: list[str] = field(default_factory=list)

    @property
    def pretrained(self) -> bool:
        return self.kind == "file"


def downloads_allowed() -> bool:
    """``True`` when ``TRANSFERKIT_ALLOW_DOWNLOAD=1`` lets missing weights be downloaded."""
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


def torchvision_cache_path(url: str) -> Path:
    """``$TORCH_HOME/hub/checkpoints/<file name of url>`` (torch.hub's cache, read at call time)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def verify_hash(path: Path) -> str | None:
    """Check a cached file against the SHA-256 prefix in its name (``name-<hex>.pth``).

    Returns:
        The prefix checked, or ``None`` when the name carries none.

    Raises:
        LoadError: the file's hash does not start with the prefix (truncated or corrupt download).
    """
    match = _HASH_IN_NAME.search(path.name)
    if not match or not match.group(1):
        return None
    prefix = match.group(1)
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _verified[key] = digest.hexdigest().startswith(prefix)
    if not _verified[key]:
        raise LoadError(
            f"cached weights {path} fail their hash check: the file name promises a SHA-256 starting with "
            f"{prefix!r} but the {stat.st_size}-byte file does not match (a truncated or corrupt download). "
            f"Delete the file and download it again, or pass {_PATH} to a good copy."
        )
    return prefix


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
            f"weights={weights!r} is empty; pass 'auto', 'imagenet', a checkpoint path ({_PATH}) or {_NONE} "
            "for random weights"
        )
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in ("none", "random")):
        return WeightsPlan("none", requested=weights)
    if isinstance(weights, os.PathLike):
        return _local_file(Path(weights), weights)
    if not isinstance(weights, str):
        # a torchvision weights enum member passed directly
        if spec.source == "torchvision" and hasattr(weights, "url") and hasattr(weights, "meta"):
            return _torchvision_plan(spec, weights, weights, explicit=True)
        raise ConfigError(
            f"weights must be a string, a path or None; got {type(weights).__name__}: {weights!r}"
        )
    text = weights.strip()
    if text.lower() in _KEYWORDS:
        explicit = text.lower() != "auto"
        if spec.source == "torchvision":
            return _torchvision_plan(spec, _tv_enum(spec, "DEFAULT"), weights, explicit)
        if spec.source == "timm":
            return _timm_plan(spec, weights, explicit)
        if explicit:
            raise ConfigError(
                f"weights={weights!r}: {spec.name} is a user factory with no known pretrained weights; "
                f"pass {_PATH} to a checkpoint of it, or {_NONE} for its own initialisation"
            )
        note = f"{spec.name} is a user factory with no known pretrained weights; using its own initialisation"
        logger.info(note)
        return WeightsPlan("none", requested=weights, notes=[note])
    path = Path(text).expanduser()
    if path.exists():
        return _local_file(path, weights)
    if spec.source == "torchvision" and re.fullmatch(r"([A-Za-z0-9_]+_Weights\.)?[A-Z][A-Z0-9_]*", text):
        return _torchvision_plan(spec, _tv_enum(spec, text), weights, explicit=True)
    raise ConfigError(
        f"weights={weights!r}: no such file ({path.resolve()}), and not one of 'auto', 'imagenet', 'DEFAULT', "
        "a torchvision weights name (e.g. 'IMAGENET1K_V1') or None (CLI: none)."
    )


def _local_file(path: Path, requested: Any) -> WeightsPlan:
    if not path.is_file():
        raise ConfigError(
            f"weights={str(requested)!r}: {path} is not a file; pass the checkpoint file itself"
        )
    return WeightsPlan("file", path=path, description=str(path), requested=requested)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url``'s host takes a TCP connection within ``timeout`` seconds.

    Checked before a download: offline, torch.hub ends in a ``URLError`` traceback and huggingface_hub in
    ``LocalEntryNotFoundError`` after about a minute of retries. The probe runs in a daemon thread, so a
    name lookup that hangs cannot hold the caller (or the interpreter's exit) past the timeout.
    """
    import socket
    import threading

    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _random_instead(message: str, requested: Any) -> WeightsPlan:
    """``weights="auto"`` without the weights: random initialisation, said once as a warning."""
    logger.warning(message)
    return WeightsPlan("none", description="random", requested=requested, notes=[message])


def _download_failed(desc: str, url: str, requested: Any, explicit: bool, why: str) -> WeightsPlan:
    """A download that cannot happen (no network, refused): an error for explicit weights, else random."""
    host = urlparse(url).hostname or url
    if explicit:
        raise LoadError(
            f"cannot download pretrained weights {desc} from {host} ({why}), although {ALLOW_DOWNLOAD_ENV}=1 "
            f"is set; connect to the network, or pass {_PATH} to a local checkpoint."
        )
    message = (
        f"could not download {desc} from {host} ({why}); building with RANDOM weights. Pass {_PATH} to a "
        f"local checkpoint, or {_NONE} to silence this."
    )
    return _random_instead(message, requested)


def _tv_enum(spec: BackboneSpec, name: str) -> Any:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(spec.name)
    except ValueError as exc:
        raise ConfigError(f"torchvision has no pretrained weights for {spec.name}; pass {_PATH}") from exc
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


def _not_cached(desc: str, expected: str, requested: Any, explicit: bool) -> WeightsPlan:
    hint = (
        f"transferkit never downloads unless {ALLOW_DOWNLOAD_ENV}=1 is set: download the file once (set it, or "
        f"fetch it by hand to {expected}), or pass {_PATH} to a local checkpoint"
    )
    if explicit:
        raise LoadError(
            f"pretrained weights {desc} are not in the local cache (expected {expected}); {hint}."
        )
    message = (
        f"PRETRAINED WEIGHTS NOT FOUND: {desc} is not cached at {expected}; building with RANDOM weights "
        f"(adapter.pretrained=False). {hint}; pass {_NONE} to silence this."
    )
    return _random_instead(message, requested)


def _torchvision_plan(spec: BackboneSpec, member: Any, requested: Any, explicit: bool) -> WeightsPlan:
    desc = f"torchvision:{type(member).__name__}.{member.name}"
    path = torchvision_cache_path(member.url)
    categories = list(member.meta.get("categories") or []) or None
    if not path.is_file():
        if not downloads_allowed():
            plan = _not_cached(desc, str(path), requested, explicit)
            plan.tv_weights = member
            return plan
        import torch.hub

        if not _reachable(member.url):
            plan = _download_failed(desc, member.url, requested, explicit, "no network connection")
            plan.tv_weights = member
            return plan
        logger.info("downloading %s to %s (%s=1)", member.url, path, ALLOW_DOWNLOAD_ENV)
        path.parent.mkdir(parents=True, exist_ok=True)
        match = _HASH_IN_NAME.search(path.name)
        try:
            torch.hub.download_url_to_file(member.url, str(path), match.group(1) if match else None)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; a hash mismatch a RuntimeError
            plan = _download_failed(desc, member.url, requested, explicit, f"{type(exc).__name__}: {exc}")
            plan.tv_weights = member
            return plan
    verify_hash(path)
    return WeightsPlan("file", path, desc, categories, tv_weights=member, requested=requested)


def _hf_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return os.path.join(home, "hub")


def _timm_plan(spec: BackboneSpec, requested: Any, explicit: bool) -> WeightsPlan:
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
            raise LoadError(f"timm has no pretrained weights registered for {spec.name}; pass {_PATH}")
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
            hit = try_to_load_from_cache(repo, name, cache_dir=_hf_cache_dir())
            candidates.append(
                (f"{_hf_cache_dir()}/models--{repo.replace('/', '--')}/snapshots/*/{name}", None)
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
    plan = _not_cached(desc, " or ".join(c for c, _ in candidates), requested, explicit)
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
    if not _reachable(url):
        plan = _download_failed(desc, url, requested, explicit, "no network connection")
        plan.pretrained_cfg = cfg_dict
        return plan
    try:
        return _timm_fetch(cfg, desc, requested, cfg_dict)
    except Exception as exc:  # noqa: BLE001 - huggingface_hub and urllib raise many types; all mean "not here"
        plan = _download_failed(desc, url, requested, explicit, f"{type(exc).__name__}: {exc}")
        plan.pretrained_cfg = cfg_dict
        return plan


def _timm_fetch(cfg: Any, desc: str, requested: Any, cfg_dict: dict[str, Any]) -> WeightsPlan:
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        repo = cfg.hf_hub_id.split("@", 1)[0]
        logger.info("downloading %s from the Hugging Face hub (%s=1)", repo, ALLOW_DOWNLOAD_ENV)
        try:
            path = hf_hub_download(
                repo, cfg.hf_hub_filename or "model.safetensors", cache_dir=_hf_cache_dir()
            )
        except Exception:  # noqa: BLE001 - older repos only have the .bin file
            path = hf_hub_download(repo, "pytorch_model.bin", cache_dir=_hf_cache_dir())
        return WeightsPlan(
            "file", Path(path), f"{desc} (hf-hub:{repo})", requested=requested, pretrained_cfg=cfg_dict
        )
    import torch.hub

    path = torchvision_cache_path(cfg.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    match = _HASH_IN_NAME.search(path.name)
    torch.hub.download_url_to_file(cfg.url, str(path), match.group(1) if match else None)
    return WeightsPlan("file", path, f"{desc} ({cfg.url})", requested=requested, pretrained_cfg=cfg_dict)
