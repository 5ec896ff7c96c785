"""Placeholders: the inert stand-ins every refused global turns into, and what can be read from them.

* :class:`Placeholder` and its read-only metaclass; the unpickler makes one subclass per refused global.
* :func:`is_placeholder`: whether an object is one (instance or class).
* :func:`find_placeholders`: the dotted names replaced anywhere in a salvaged object.
* :func:`module_state_dict`: the weights of a pickled ``nn.Module``, from its recorded state.

The placeholder classes say ``__module__ == "transferkit.salvage"`` on purpose: that is where users import
them from, and it keeps messages that name an object's class (``transferkit.salvage.Namespace``) as they
were before the package split. Code that needs to recognise a placeholder should call
:func:`is_placeholder` rather than compare module names.
"""

from __future__ import annotations

import copy
import reprlib
from collections.abc import Callable
from typing import Any, ClassVar

import torch

__all__ = [
    "Placeholder",
    "find_placeholders",
    "is_placeholder",
    "module_state_dict",
    "is_placeholder_class",
]

# The public home of the placeholder classes, whichever submodule defines them.
_PUBLIC_MODULE = "transferkit.salvage"

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxtuple = 60, 60, 3


class _PlaceholderMeta(type):
    """Metaclass that makes placeholder classes read-only, so a pickle cannot patch them."""

    __module__ = _PUBLIC_MODULE

    def __setattr__(cls, name: str, value: Any) -> None:
        raise TypeError(f"placeholder class for {cls.target!r} is read-only")

    def __repr__(cls) -> str:
        return f"<placeholder class {cls.target}>"


class Placeholder(metaclass=_PlaceholderMeta):
    """An inert stand-in for a global that salvage refused to import.

    Salvage generates one subclass per refused global; its ``target`` is the dotted name the file asked
    for (e.g. ``"__main__.Backbone"``). Calling the class or an instance never runs anything: it only
    records what the pickle passed.

    Attributes:
        target: the dotted name of the global this stands for (class attribute).
        args: positional arguments the pickle "called" it with.
        kwargs: keyword arguments (``NEWOBJ_EX`` only).
        state: what the last ``BUILD`` gave it (usually the object's ``__dict__``), or ``None``.
        states: every ``BUILD`` state in order (a pickle may BUILD the same object more than once).
        items: ``(key, value)`` pairs set by ``SETITEM(S)``.
        listitems: values added by ``APPEND(S)``/``ADDITEMS``.
        called_on: for a placeholder produced by calling another placeholder instance, that instance.

    Example:
        >>> cls = Placeholder._subclass_for("os.system")
        >>> p = cls("touch /tmp/x")
        >>> p.args, find_placeholders(p)
        (('touch /tmp/x',), ['os.system'])
    """

    __module__ = _PUBLIC_MODULE  # set in the body: the metaclass refuses setattr afterwards
    __slots__ = ("args", "kwargs", "state", "states", "items", "listitems", "called_on")
    target: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        self = object.__new__(cls)
        # object.__setattr__ because instances are recorded once here; the pickle never sets attributes.
        for name, value in (("args", args), ("kwargs", kwargs), ("state", None), ("called_on", None)):
            object.__setattr__(self, name, value)
        for name in ("states", "items", "listitems"):
            object.__setattr__(self, name, [])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept and ignore constructor arguments (``__new__`` already recorded them)."""

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)
        self.states.append(state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        """Record an ``APPEND``."""
        self.listitems.append(value)

    def extend(self, values: Any) -> None:
        """Record an ``APPENDS`` (``values`` is always a list built by the unpickler)."""
        self.listitems.extend(values)

    def add(self, value: Any) -> None:
        """Record an ``ADDITEMS`` element."""
        self.listitems.append(value)

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        # e.g. the result of a refused ``getattr(os, "system")`` being called: record, never run.
        result = type(self)(*args, **kwargs)
        object.__setattr__(result, "called_on", self)
        return result

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"placeholder for {self.target!r} is read-only")

    def __copy__(self) -> Placeholder:
        return self._clone(lambda value: value)

    def __deepcopy__(self, memo: dict[int, Any]) -> Placeholder:
        return self._clone(lambda value: copy.deepcopy(value, memo))

    def _clone(self, copier: Callable[[Any], Any]) -> Placeholder:
        clone = type(self)(*copier(self.args), **copier(self.kwargs))
        for name in ("state", "states", "items", "listitems", "called_on"):
            object.__setattr__(clone, name, copier(getattr(self, name)))
        return clone

    def __reduce__(self) -> Any:
        raise TypeError(
            f"cannot pickle a salvage placeholder for {self.target!r}; drop it (find_placeholders lists "
            "where they are) before saving"
        )

    def __repr__(self) -> str:
        text = f"<placeholder {self.target}{_REPR.repr(self.args)}"
        if self.state is not None:
            text += " with state"
        return text + ">"

    @classmethod
    def _subclass_for(cls, target: str) -> type[Placeholder]:
        """A fresh, read-only placeholder class standing for ``target``."""
        short = target.rsplit(".", 1)[-1]
        name = short if short.isidentifier() else "Refused"
        return _PlaceholderMeta(
            name, (cls,), {"__slots__": (), "target": target, "__module__": _PUBLIC_MODULE}
        )


def is_placeholder_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, Placeholder)


def is_placeholder(obj: Any) -> bool:
    """Whether ``obj`` is a salvage placeholder: an instance, or one of the generated classes.

    Use it instead of comparing ``type(obj).__module__`` with a module name.

    Args:
        obj: anything, typically a part of a :func:`salvage_load` result.

    Returns:
        ``True`` for a :class:`Placeholder` instance or subclass, ``False`` for anything else.

    Example:
        >>> cls = Placeholder._subclass_for("argparse.Namespace")
        >>> is_placeholder(cls()), is_placeholder(cls), is_placeholder({"lr": 0.1})
        (True, True, False)
    """
    return isinstance(obj, Placeholder) or is_placeholder_class(obj)


def find_placeholders(obj: Any) -> list[str]:
    """List the dotted names of the globals that salvage replaced, anywhere inside ``obj``.

    Walks dicts (keys and values), lists, tuples, sets, object ``__dict__`` s of plain containers, and the
    recorded arguments and state of placeholders; shared and cyclic references are visited once.

    Args:
        obj: a result of :func:`salvage_load` (or any part of one).

    Returns:
        Sorted unique names such as ``["__main__.Backbone", "argparse.Namespace"]``; empty when nothing
        was replaced.

    Example:
        >>> find_placeholders({"a": [1, 2], "b": "text"})
        []
    """
    found: set[str] = set()
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, str | bytes | int | float | bool | complex | torch.Tensor):
            continue
        seen.add(id(item))
        if is_placeholder_class(item):
            found.add(item.target)
        elif isinstance(item, Placeholder):
            found.add(item.target)
            stack.extend((item.args, item.kwargs, item.states, item.items, item.listitems, item.called_on))
        elif isinstance(item, dict):  # dict.keys: a loaded OrderedDict's attributes may shadow the methods
            stack.extend(dict.keys(item))
            stack.extend(dict.values(item))
            stack.extend(getattr(item, "__dict__", {}).values())  # e.g. a state dict's ``_metadata``
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return sorted(found)


def module_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The ``state_dict()`` a pickled ``nn.Module`` would give, rebuilt from its inert placeholder.

    ``torch.save(model)`` pickles the module object itself; salvage turns it (and every submodule) into a
    placeholder whose recorded state holds ``_parameters``, ``_buffers`` and ``_modules``. This walks them
    in ``nn.Module.state_dict`` order, skipping non-persistent buffers, without calling anything.

    Args:
        obj: a placeholder for a module (e.g. ``salvage_load("model.pt")`` of a whole-model pickle).

    Returns:
        ``{"0.weight": tensor, ...}``; empty when ``obj`` is not a pickled module.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from transferkit.salvage import salvage_load
        >>> path = Path(tempfile.mkdtemp()) / "whole.pt"
        >>> torch.save(torch.nn.Sequential(torch.nn.Linear(2, 3)), path)
        >>> list(module_state_dict(salvage_load(path)))
        ['0.weight', '0.bias']
    """
    result: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, Any]] = [("", obj)]
    seen: set[int] = set()
    while stack:
        prefix, node = stack.pop()
        state = node.state if isinstance(node, Placeholder) else None
        if not isinstance(state, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        skip = state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, value in (state.get(group) or {}).items():
                if isinstance(value, torch.Tensor) and not (group == "_buffers" and name in skip):
                    result[f"{prefix}{name}"] = value.detach()  # as state_dict() gives them
        children = list((state.get("_modules") or {}).items())
        stack.extend((f"{prefix}{name}.", child) for name, child in reversed(children))
    return result
