"""Weight files on this machine: the libraries' caches, hash checks, and the offline policy.

Caches are the libraries' own: torchvision files live in ``$TORCH_HOME/hub/checkpoints/<file name of the
weights URL>`` (:func:`torchvision_cache_path`) and timm's in the Hugging Face hub cache
(:func:`hf_cache_dir`). A cached file whose name carries a hash prefix is checked against the SHA-256 of
its bytes before use (:func:`verify_hash`). Nothing touches the network unless
``TRANSFERKIT_ALLOW_DOWNLOAD=1`` (:func:`downloads_allowed`), and then only after a fast connection probe
(:func:`reachable`). A :class:`WeightsPlan` says where the weights come from; :func:`not_cached` and
:func:`download_failed` make the plan (random weights, with a warning) or the error when they cannot.

Example:
    >>> str(torchvision_cache_path("https://download.pytorch.org/models/resnet18-f37072fd.pth").name)
    'resnet18-f37072fd.pth'
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

from transferkit.errors import LoadError

__all__ = [
    "WeightsPlan",
    "ALLOW_DOWNLOAD_ENV",
    "HASH_IN_NAME",
    "WEIGHTS_PATH",
    "WEIGHTS_NONE",
    "downloads_allowed",
    "torchvision_cache_path",
    "verify_hash",
    "reachable",
    "hf_cache_dir",
    "random_instead",
    "download_failed",
    "not_cached",
]

# the name the weights' log lines have always had (the CLI shows it)
logger = logging.getLogger("transferkit.backbones.weights")


ALLOW_DOWNLOAD_ENV = "TRANSFERKIT_ALLOW_DOWNLOAD"


HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's HASH_REGEX


# marked parameters (transferkit.errors): the CLI shows them as --weights=PATH and --weights=None
WEIGHTS_PATH = "`weights`=PATH"
WEIGHTS_NONE = "`weights`=None"
_verified: dict[tuple[str, int, int], bool] = {}


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
    match = HASH_IN_NAME.search(path.name)
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
            f"Delete the file and download it again, or pass {WEIGHTS_PATH} to a good copy."
        )
    return prefix


def reachable(url: str, timeout: float = 3.0) -> bool:
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


def hf_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return os.path.join(home, "hub")


def random_instead(message: str, requested: Any) -> WeightsPlan:
    """``weights="auto"`` without the weights: random initialisation, said once as a warning."""
    logger.warning(message)
    return WeightsPlan("none", description="random", requested=requested, notes=[message])


def download_failed(desc: str, url: str, requested: Any, explicit: bool, why: str) -> WeightsPlan:
    """A download that cannot happen (no network, refused): an error for explicit weights, else random."""
    host = urlparse(url).hostname or url
    if explicit:
        raise LoadError(
            f"cannot download pretrained weights {desc} from {host} ({why}), although {ALLOW_DOWNLOAD_ENV}=1 "
            f"is set; connect to the network, or pass {WEIGHTS_PATH} to a local checkpoint."
        )
    message = (
        f"could not download {desc} from {host} ({why}); building with RANDOM weights. Pass {WEIGHTS_PATH} to a "
        f"local checkpoint, or {WEIGHTS_NONE} to silence this."
    )
    return random_instead(message, requested)


def not_cached(desc: str, expected: str, requested: Any, explicit: bool) -> WeightsPlan:
    hint = (
        f"transferkit never downloads unless {ALLOW_DOWNLOAD_ENV}=1 is set: download the file once (set it, or "
        f"fetch it by hand to {expected}), or pass {WEIGHTS_PATH} to a local checkpoint"
    )
    if explicit:
        raise LoadError(
            f"pretrained weights {desc} are not in the local cache (expected {expected}); {hint}."
        )
    message = (
        f"PRETRAINED WEIGHTS NOT FOUND: {desc} is not cached at {expected}; building with RANDOM weights "
        f"(adapter.pretrained=False). {hint}; pass {WEIGHTS_NONE} to silence this."
    )
    return random_instead(message, requested)
