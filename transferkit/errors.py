"""Exception types: every user-facing failure in transferkit is one of these.

Each message says what was expected, what was found, and how to fix it. The CLI turns any
:class:`TransferkitError` into one line on stderr and exit code 2.

What a caller needs is on the exception, never only in its text: ``param`` is the API parameter at fault
(``"img_size"``) and ``hint`` how to fix it. Messages name API parameters, and mark each one they name as
`` `img_size` ``; the CLI shows its flag (``--img-size``) there instead (:meth:`TransferkitError.render`).
The marks stay in ``str(exc)``, so an error re-raised from a DataLoader worker still renders.

Example:
    >>> from transferkit.errors import CheckpointError, TransferkitError
    >>> issubclass(CheckpointError, TransferkitError)
    True
    >>> err = TransferkitError("`img_size` must be >= 8, got 4", param="img_size", hint="e.g. 32")
    >>> str(err), err.param
    ('`img_size` must be >= 8, got 4; e.g. 32', 'img_size')
    >>> err.render(lambda name: "--" + name.replace("_", "-"))
    '--img-size must be >= 8, got 4; e.g. 32'
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "render_marked",
    "TransferkitError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "LoadError",
    "ConfigError",
    "LayerGroupError",
    "ClassNamesError",
]


_MARKED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`(=True\b|=?)")


def render_marked(text: str, name: Callable[[str], str]) -> str:
    """``text`` with each `` `param` `` mark replaced by ``name(param)``; as a command line writes them,
    `` `param`=VALUE `` becomes ``name(param) VALUE`` and `` `param`=True `` the switch ``name(param)``."""
    tail = {"": "", "=": " ", "=True": ""}
    return _MARKED.sub(lambda m: name(m.group(1)) + tail[m.group(2)], text)


class TransferkitError(Exception):
    """Base class of every error transferkit raises on purpose.

    Args:
        message: what was expected and what was found; API parameters it names are marked `` `name` ``.
        param: the API parameter whose value is at fault, if one is.
        hint: how to fix it (may name parameters the same way).
    """

    def __init__(self, message: str, *, param: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.hint = message, param, hint

    def render(self, name: Callable[[str], str]) -> str:
        """The message and hint with each marked parameter written as ``name(param)`` (a CLI flag ...)."""
        return render_marked(str(self), name)

    def __str__(self) -> str:
        if not self.hint:
            return self.message
        return self.message + (" " if self.message.endswith((".", "?", "!")) else "; ") + self.hint

    def __reduce__(self) -> tuple:
        # pickled whole (DDP ranks broadcast errors): param, hint and a subclass's data survive
        return _rebuild, (type(self), self.args), self.__dict__


def _rebuild(cls: type[TransferkitError], args: tuple) -> TransferkitError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    return error


class CheckpointError(TransferkitError):
    """A checkpoint file could not be read or written (missing, truncated, corrupt, not a checkpoint)."""


class UnsafeCheckpointError(CheckpointError):
    """A file needs globals beyond what ``weights_only=True`` allows.

    Attributes:
        globals: the fully qualified names of the globals the file asked for.
    """

    def __init__(self, message: str, globals: list[str] | None = None, **kwargs: str | None) -> None:  # noqa: A002
        super().__init__(message, **kwargs)
        self.globals = list(globals or [])


class CheckpointMismatchError(CheckpointError):
    """A training checkpoint whose saved states do not fit the objects they were to be restored into.

    Attributes:
        what: what could not be restored (``"model 'model'"``, ``"optimizer 'optimizer'"`` ...).
        problems: what does not fit, one sentence each. Nothing was restored.
    """

    def __init__(self, message: str, what: str = "", problems: list[str] | None = None, **kwargs: str | None):
        super().__init__(message, **kwargs)
        self.what, self.problems = what, list(problems or [])


class LoadError(TransferkitError):
    """Loading weights into a model failed a check (strict, zero tensors, coverage, rename conflict)."""


class ConfigError(TransferkitError, ValueError):
    """A user-supplied option or argument is invalid."""


class LayerGroupError(ConfigError):
    """A thaw plan names a layer group the model does not have below its head, or names one twice.

    Attributes:
        group: the group named.
        epoch: the epoch it was named for.
        expected: the model's groups below the head, input to output.
        repeated: whether the group is known but named twice.
    """

    def __init__(
        self, message: str, group: str = "", epoch: int = 0, expected: list[str] | None = None,
        repeated: bool = False, **kwargs: str | None,
    ) -> None:  # fmt: skip
        super().__init__(message, **kwargs)
        self.group, self.epoch, self.expected, self.repeated = group, epoch, list(expected or []), repeated


class ClassNamesError(ConfigError):
    """Data whose class names differ from the ones a model was trained on (evaluating it would mislabel).

    Attributes:
        expected: the model's class names, index = label.
        found: the data's class names.
        unknown: names in the data that the model does not know.
        missing: the model's names that the data lacks.
    """

    def __init__(self, message: str, expected: list[str], found: list[str], **kwargs: str | None) -> None:
        super().__init__(message, **kwargs)
        self.expected, self.found = list(expected), list(found)
        self.unknown = [n for n in found if n not in set(expected)]
        self.missing = [n for n in expected if n not in set(found)]
