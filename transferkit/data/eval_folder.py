"""An image folder as an evaluation set for a trained model: labels matched to its classes by name.

:func:`scan_eval_folder` uses every image of ``DIR/<class>`` (nothing is held out), labelled by the
model's ``class_names``; :func:`check_class_names` refuses folders the model does not know, because a
label taken by position would score images against the wrong class.

Example:
    >>> check_class_names(["cat", "dog"], ["dog"])  # a class with no images: a warning, not an error
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from transferkit.data.folders import FolderSplit
from transferkit.data.scan import IMAGE_EXTENSIONS, class_dirs, scan_image_folder, skip_unreadable
from transferkit.errors import ClassNamesError, ConfigError

__all__ = ["check_class_names", "scan_eval_folder"]

logger = logging.getLogger("transferkit.data")


def check_class_names(
    expected: Sequence[str], found: Sequence[str], *, source: str = "the data", allow_missing: bool = True
) -> None:
    """Refuse data whose class names the model does not know; labels are matched by name, never by position.

    Args:
        expected: the model's class names (index = label), e.g. a run's ``labels.json`` ``class_names``.
        found: the data's class names (its class folder names).
        source: what ``found`` came from, for the message.
        allow_missing: accept data that lacks some of the model's classes (logged as a warning); with
            ``False`` that is an error too.

    Raises:
        ClassNamesError: a name in ``found`` is not in ``expected`` (or one of ``expected`` is missing, with
            ``allow_missing=False``); ``.unknown`` and ``.missing`` list them.

    Example:
        >>> check_class_names(["cat", "dog"], ["cat", "dgo"], source="photos/")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        transferkit.errors.ClassNamesError: photos/ has class folder(s) the model was not trained on: ['dgo']; ...
    """
    err = ClassNamesError("", list(expected), list(found))
    if err.unknown or (err.missing and not allow_missing):
        parts = []
        if err.unknown:
            parts.append(f"{source} has class folder(s) the model was not trained on: {err.unknown}")
        if err.missing:
            parts.append(f"{'it' if err.unknown else source} lacks the model's class(es) {err.missing}")
        raise ClassNamesError(
            "; ".join(parts) + f" (the model's classes: {list(expected)}). Rename the folders to the model's "
            "class names: labels are matched by name, and a folder under another name would be scored "
            "against the wrong class",
            list(expected),
            list(found),
        )
    if err.missing:
        logger.warning(
            "%s has no images of the model's class(es) %s; accuracy is measured on the others",
            source,
            err.missing,
        )


def scan_eval_folder(
    root: str | os.PathLike,
    class_names: Sequence[str] | None,
    *,
    strict: bool = False,
    strict_param: str = "strict_data",
) -> FolderSplit:
    """Every image of a folder, labelled by a trained model's ``class_names``: an evaluation set.

    Unlike :func:`split_image_folder`, nothing is held out for training: ``DIR/<class>`` is used whole
    (``DIR/val/<class>`` when the folder has the ``train``/``val`` layout, whose ``train`` was for training).
    Labels follow ``class_names`` by name (:func:`check_class_names`), not the folders' sorted order;
    ``None`` takes the folders' names, sorted (for a model whose class names are unknown).

    ``strict_param`` is the caller's name for ``strict``, which a ``strict`` refusal tells to drop.

    Returns:
        A :class:`FolderSplit` whose ``val`` holds the samples and ``train`` is empty.

    Raises:
        ConfigError: a missing or empty folder, unreadable files with ``strict``.
        ClassNamesError: class folders the model does not know.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(
            f"data folder {root} {'is a file, not a folder' if root.exists() else 'does not exist'}; give the "
            "folder that holds the class sub-folders (DIR/<class>/*.png)"
        )
    folder = root / "val" if (root / "train").is_dir() and (root / "val").is_dir() else root
    if not class_dirs(folder):
        raise ConfigError(f"{folder} has no class sub-folders; expected {folder}/<class>/<image files>")
    found = [d.name for d in class_dirs(folder)]
    class_names = found if class_names is None else list(class_names)
    check_class_names(class_names, found, source=str(folder))
    samples, names, bad = scan_image_folder(folder, class_names)
    skip_unreadable(bad, folder, strict=strict, strict_param=strict_param)
    if not samples:
        raise ConfigError(f"{folder} holds no readable images (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return FolderSplit([], sorted(samples), list(names), str(folder), bad)
