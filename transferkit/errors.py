"""Exception types: every user-facing failure in transferkit is one of these.

Each message says what was expected, what was found, and how to fix it. The CLI turns any
:class:`TransferkitError` into one line on stderr and exit code 2.

Example:
    >>> from transferkit.errors import CheckpointError, TransferkitError
    >>> issubclass(CheckpointError, TransferkitError)
    True
"""

from __future__ import annotations

__all__ = [
    "TransferkitError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "LoadError",
    "ConfigError",
    "ClassNamesError",
]


class TransferkitError(Exception):
    """Base class of every error transferkit raises on purpose."""


class CheckpointError(TransferkitError):
    """A checkpoint file could not be read or written (missing, truncated, corrupt, not a checkpoint)."""


class UnsafeCheckpointError(CheckpointError):
    """A file needs globals beyond what ``weights_only=True`` allows.

    Attributes:
        globals: the fully qualified names of the globals the file asked for.
    """

    def __init__(self, message: str, globals: list[str] | None = None) -> None:  # noqa: A002
        super().__init__(message)
        self.globals = list(globals or [])


class LoadError(TransferkitError):
    """Loading weights into a model failed a check (strict, zero tensors, coverage, rename conflict)."""


class ConfigError(TransferkitError, ValueError):
    """A user-supplied option or argument is invalid."""


class ClassNamesError(ConfigError):
    """Data whose class names differ from the ones a model was trained on (evaluating it would mislabel).

    Attributes:
        expected: the model's class names, index = label.
        found: the data's class names.
        unknown: names in the data that the model does not know.
        missing: the model's names that the data lacks.
    """

    def __init__(self, message: str, expected: list[str], found: list[str]) -> None:
        super().__init__(message)
        self.expected, self.found = list(expected), list(found)
        self.unknown = [n for n in found if n not in set(expected)]
        self.missing = [n for n in expected if n not in set(found)]
