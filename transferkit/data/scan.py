"""Finding the image files of a class-folder tree and checking, before training, that each one decodes.

:func:`scan_image_folder` walks ``root/<class>/**/<image>`` (each real file once, links followed only
inside their class folder) and decodes every file once, cheaply, in threads; :func:`skip_unreadable`
is the one policy for what it finds broken: skipped with a count in the log, or with ``strict`` an
error naming the files. The splits built on top live in :mod:`transferkit.data.folders`.

Example:
    >>> import pathlib, tempfile
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("cat", "dog"):
    ...     (root / name).mkdir()
    ...     Image.new("RGB", (8, 8)).save(root / name / "1.png")
    >>> _ = (root / "dog" / "2.png").write_bytes(b"not an image")
    >>> samples, names, bad = scan_image_folder(root)
    >>> len(samples), names, [pathlib.Path(b).name for b in bad]
    (2, ['cat', 'dog'], ['2.png'])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from transferkit.errors import ConfigError

__all__ = ["IMAGE_EXTENSIONS", "class_dirs", "scan_image_folder", "skip_unreadable"]

logger = logging.getLogger("transferkit.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _image_ok(path: str) -> bool:
    """Whether PIL can decode the file: ``verify()`` catches broken structure, a reduced decode the rest."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))  # JPEG decodes at 1/8 scale: a full check at a fraction of the cost
            img.load()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types for corrupt files; all mean "unreadable"
        return False


def class_dirs(root: Path) -> list[Path]:
    """The sub-folders of ``root`` (one per class), sorted; hidden ones are left out."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path, seen: dict[str, str], duplicates: list[str]) -> list[str]:
    """The image files under a class folder, each real file once.

    Linked folders are followed only while they stay inside the class folder: a link out of it (``cat/loop
    -> ..``) would walk the other classes again, under this label, and a loop would multiply every file.
    A file reached a second time (through a link, or linked from two classes) is left out and recorded in
    ``duplicates``; ``seen`` maps real paths to the first path that reached them, across class folders.
    """
    top = os.path.realpath(folder)
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real == top or not real.startswith(top + os.sep) or real in seen:
                logger.warning("not following %s: it links outside its class folder %s, or back into it",
                               os.path.join(dirpath, d), folder)  # fmt: skip
                continue
            seen[real] = os.path.join(dirpath, d)
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path)
                if real in seen:
                    duplicates.append(path)
                    continue
                seen[real] = path
                out.append(path)
    return out


def scan_image_folder(
    root: str | os.PathLike, class_names: Sequence[str] | None = None, *, check: bool = True, workers: int = 8
) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """Find ``root/<class>/**/<image>`` files and check each one decodes.

    Args:
        root: a folder with one sub-folder per class.
        class_names: the classes to use (e.g. the training split's); default: the sub-folders, sorted.
        check: decode every file up front (unreadable ones are returned separately).
        workers: threads for the check (decoding releases the GIL).

    Returns:
        ``(samples, class_names, unreadable_paths)``.

    Raises:
        ConfigError: no class folders, or a folder that is not among ``class_names``.
    """
    root = Path(root)
    dirs = class_dirs(root)
    if not dirs:
        raise ConfigError(
            f"{root} has no class sub-folders; expected {root}/<class>/<image files> "
            f"(or {root}/train/<class> and {root}/val/<class>)"
        )
    found = [d.name for d in dirs]
    if class_names is None:
        class_names = found
    else:
        extra = sorted(set(found) - set(class_names))
        if extra:
            raise ConfigError(
                f"{root} has class folders {extra} that the training split lacks (training classes: "
                f"{list(class_names)}); give both splits the same class folders"
            )
    index = {name: i for i, name in enumerate(class_names)}
    seen: dict[str, str] = {}
    duplicates: list[str] = []
    candidates = [(f, index[d.name]) for d in dirs for f in _files(d, seen, duplicates)]
    if duplicates:
        logger.warning(
            "skipped %d duplicate image file(s) under %s (the same file reached again through a link), e.g. %s",
            len(duplicates),
            root,
            duplicates[0],
        )
    bad: list[str] = []
    if check and candidates:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            ok = list(pool.map(_image_ok, [f for f, _ in candidates]))
        bad = [f for (f, _), good in zip(candidates, ok) if not good]
        candidates = [c for c, good in zip(candidates, ok) if good]
    return candidates, list(class_names), bad


_MAX_NAMED = 20  # unreadable files named in a strict_data error (a line, not a listing of thousands)


def skip_unreadable(bad: list[str], folder: Path, *, strict: bool, strict_param: str = "strict_data") -> None:
    """Log the unreadable files a scan found (they are left out), or with ``strict`` refuse them, naming
    ``strict_param`` as the option to drop (the caller's name for ``strict``).

    Raises:
        ConfigError: ``strict`` and ``bad`` is not empty; the message names up to 20 of the files.
    """
    if not bad:
        return
    if strict:
        shown = ", ".join(bad[:_MAX_NAMED]) + (
            f" and {len(bad) - _MAX_NAMED} more" if len(bad) > _MAX_NAMED else ""
        )
        raise ConfigError(
            f"{len(bad)} unreadable image file(s) under {folder}: {shown}; remove them or drop "
            f"`{strict_param}` to skip them",
            param=strict_param,
        )
    logger.warning("skipping %d unreadable image file(s) under %s, e.g. %s", len(bad), folder, bad[0])
