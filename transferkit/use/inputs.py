"""What to classify: files, folders (searched recursively), glob patterns and text files listing paths.

:func:`expand_inputs` turns them into one ordered list of image files, each once, or refuses with one
reason: a path that does not exist, a pattern that matches nothing, a folder without images, or a file
given by name that is neither an image nor a list. A list file (``.txt`` or ``.lst``) holds one path a
line (blank lines and ``#`` comments skipped); relative paths in it are read from the list's folder.

Example:
    >>> expand_inputs(["/no/such/image.png"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    transferkit.errors.ConfigError: input /no/such/image.png does not exist; ...
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from transferkit.data import IMAGE_EXTENSIONS
from transferkit.errors import ConfigError

__all__ = ["expand_inputs", "LIST_EXTENSIONS", "is_image_name"]

LIST_EXTENSIONS = (".txt", ".lst")
_GLOB_CHARS = set("*?[")


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether the file name has an image extension transferkit reads.

    Example:
        >>> is_image_name("a/b.JPG"), is_image_name("notes.md")
        (True, False)
    """
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Image file paths of ``inputs``, in the order given (folders and patterns sorted), each once.

    Args:
        inputs: image files, folders, glob patterns (``photos/*.jpg``, ``**`` allowed) or list files.

    Returns:
        The image paths, as strings (as given, or joined to the folder or list they came from).

    Raises:
        ConfigError: nothing given, a missing path, a pattern matching no image, a folder holding no image,
            a named file that is not an image or a list, or nothing at all to classify (``param="inputs"``).
    """
    found: dict[str, None] = {}
    given = [os.fspath(i) for i in inputs]
    if not given:
        raise ConfigError(
            "no inputs: give image files, folders, glob patterns or a list file", param="inputs"
        )
    for item in given:
        for path in _expand_one(item):
            found.setdefault(path, None)
    if not found:
        raise ConfigError(f"no images to classify in {', '.join(given)}", param="inputs")
    return list(found)


def _expand_one(item: str, listed_in: Path | None = None) -> list[str]:
    # listed_in: the list file naming `item` (relative paths are read from its folder)
    path = Path(item).expanduser()
    if listed_in is not None and not path.is_absolute():
        path = listed_in.parent / path
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        return _file(path, listed_in)
    if _GLOB_CHARS & set(item) and listed_in is None:
        return _pattern(item)
    where = f" (listed in {listed_in})" if listed_in is not None else ""
    raise ConfigError(
        f"input {path}{where} does not exist; give image files, folders, glob patterns or a list file",
        param="inputs",
    )


def _file(path: Path, listed_in: Path | None) -> list[str]:
    if is_image_name(path):
        return [str(path)]
    if path.suffix.lower() in LIST_EXTENSIONS and listed_in is None:
        return _list_file(path)
    raise ConfigError(
        f"input {path} is not an image file (extensions {', '.join(IMAGE_EXTENSIONS)}) nor a list of paths "
        f"({', '.join(LIST_EXTENSIONS)})",
        param="inputs",
    )


def _folder(folder: Path) -> list[str]:
    images = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        images += [
            os.path.join(dirpath, n) for n in sorted(filenames) if not n.startswith(".") and is_image_name(n)
        ]
    if not images:
        raise ConfigError(
            f"input folder {folder} holds no image files (extensions {', '.join(IMAGE_EXTENSIONS)})",
            param="inputs",
        )
    return images


def _pattern(pattern: str) -> list[str]:
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    images = [m for m in matches if os.path.isfile(m) and is_image_name(m)]
    images += [p for m in matches if os.path.isdir(m) for p in _folder(Path(m))]
    if not images:
        raise ConfigError(f"input pattern {pattern} matches no image file", param="inputs")
    return images


def _list_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the list of inputs {path}: {exc}", param="inputs") from None
    entries = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not entries:
        raise ConfigError(f"the list of inputs {path} names no file", param="inputs")
    return [p for entry in entries for p in _expand_one(entry, path)]
