"""A static, bounded scan of one pickle: what it imports, what it builds, and whether it fits the budgets.

Nothing is imported or called. :func:`scan_pickle` runs the pickle machine symbolically (a stack of
stand-ins, the memo, the containers and their references) and returns a :class:`PickleScan`:

* every global it names, including a ``STACK_GLOBAL`` whose operands are computed at load time (the
  scan cannot know them, so it records ``<computed>`` in their place, which the verdicts call
  dangerous);
* the storages it refers to (``key -> (storage type, elements)``), so the readers can check the zip
  members before mapping them;
* whether it fits :class:`Limits`: opcodes, memo entries, bytes, and the number of objects a naive walk
  of the result would visit when shared references are expanded (a 6 KB pickle can describe a
  1000-wide, 4-deep tree of shared lists: 10^12 nodes for ``hash``, ``repr`` or ``==``).

A file over a budget raises :class:`~transferkit.errors.CheckpointError` saying which budget and why.

Example:
    >>> import io, pickle
    >>> scan = scan_pickle(io.BytesIO(pickle.dumps({"a": [1, 2]}, protocol=2)))
    >>> scan.globals, scan.expanded
    ((), 5)
"""

from __future__ import annotations

import _compat_pickle
import pickletools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from transferkit.errors import CheckpointError

__all__ = ["Limits", "PickleScan", "PickleBudgetError", "scan_pickle", "COMPUTED", "LIMITS"]

# What a STACK_GLOBAL operand the scan cannot know is recorded as (e.g. "builtins.<computed>").
COMPUTED = "<computed>"


class PickleBudgetError(CheckpointError):
    """A pickle is larger than a :class:`Limits` budget allows (it parsed, so far, as a pickle)."""


@dataclass(frozen=True)
class Limits:
    """Budgets for one pickle. Real checkpoints use a small fraction of each (a timm model: 9,282
    opcodes, 36 KB); the limits keep a hostile file's cost to a few seconds and a bounded memory."""

    opcodes: int = 2_000_000
    memo: int = 1_000_000
    expanded: int = 10_000_000  # objects a tree walk of the result visits, shared references expanded
    pickle_bytes: int = 1 << 30
    globals: int = 100_000


LIMITS = Limits()


@dataclass(frozen=True)
class PickleScan:
    """What :func:`scan_pickle` found in one pickle."""

    globals: tuple[str, ...]
    storages: tuple[tuple[str, str, int], ...] = ()  # (key, storage type, elements)
    opcodes: int = 0
    expanded: int = 0
    cycles: bool = False
    protocol: int = 0
    memo: int = field(default=0)


class _Node:
    """A stand-in for one object the pickle builds; containers keep their references."""

    __slots__ = ("children", "text", "number", "name")

    def __init__(
        self, children: list[_Node] | None = None, text: str | None = None, number: int | None = None
    ) -> None:
        self.children = children
        self.text = text
        self.number = number
        self.name: str | None = None  # a global's dotted name


_ATOM = _Node()
_MARK = object()

_STRINGS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
_INTS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})
_EMPTY = frozenset({"EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"})
_FROM_MARK = frozenset({"LIST", "DICT", "TUPLE", "FROZENSET"})
_INTO_FROM_MARK = frozenset({"APPENDS", "SETITEMS", "ADDITEMS"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})


class _Machine:
    def __init__(self, limits: Limits, what: str) -> None:
        self.limits = limits
        self.what = what
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.globals: dict[str, None] = {}
        self.storages: dict[str, tuple[str, int]] = {}
        self.protocol = 0

    def fail(self, why: str, budget: bool = False) -> CheckpointError:
        kind = PickleBudgetError if budget else CheckpointError
        return kind(f"{self.what}: {why}. Nothing from the file was executed")

    def pop(self) -> Any:
        if not self.stack:
            raise self.fail("its pickle pops from an empty stack; the file is damaged")
        value = self.stack.pop()
        return _ATOM if value is _MARK else value

    def pop_mark(self) -> list[_Node]:
        items: list[_Node] = []
        while self.stack:
            value = self.stack.pop()
            if value is _MARK:
                items.reverse()
                return items
            items.append(value)
        raise self.fail("its pickle has no MARK where one is needed; the file is damaged")

    def top(self) -> _Node:
        if not self.stack or self.stack[-1] is _MARK:
            raise self.fail("its pickle modifies a missing object; the file is damaged")
        return self.stack[-1]

    def add_global(self, module: str, name: str) -> _Node:
        if self.protocol < 3:  # Python 2 names, as pickle's fix_imports maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        dotted = f"{module}.{name}"
        if dotted not in self.globals and len(self.globals) >= self.limits.globals:
            raise self.fail(f"its pickle names more than {self.limits.globals:,} distinct globals", True)
        self.globals[dotted] = None
        node = _Node()
        node.name = dotted
        return node

    def step(self, code: str, arg: Any) -> None:  # noqa: C901 - one branch per opcode family reads best
        push = self.stack.append
        if code == "PROTO":
            self.protocol = int(arg)
        elif code in ("FRAME", "STOP"):
            pass
        elif code == "MARK":
            push(_MARK)
        elif code == "POP":
            self.pop()
        elif code == "POP_MARK":
            self.pop_mark()
        elif code == "DUP":
            push(self.top())
        elif code in _STRINGS:
            push(_Node(text=arg if isinstance(arg, str) else str(arg)))
        elif code in _INTS:
            push(_Node(number=arg if isinstance(arg, int) else None))
        elif code in _EMPTY:
            push(_Node(children=[]))
        elif code in _FROM_MARK:
            push(_Node(children=self.pop_mark()))
        elif code in ("TUPLE1", "TUPLE2", "TUPLE3"):
            items = [self.pop() for _ in range(int(code[-1]))]
            push(_Node(children=items[::-1]))
        elif code in ("APPEND", "BUILD"):
            value = self.pop()
            self.link([value])
        elif code == "SETITEM":
            value, key = self.pop(), self.pop()
            self.link([key, value])
        elif code in _INTO_FROM_MARK:
            self.link(self.pop_mark())
        elif code in _PUTS or code == "MEMOIZE":
            index = len(self.memo) if code == "MEMOIZE" else arg
            self.memo[index] = self.top()
            if len(self.memo) > self.limits.memo:
                raise self.fail(f"its pickle stores more than {self.limits.memo:,} objects in its memo", True)
        elif code in _GETS:
            if arg not in self.memo:
                raise self.fail(f"its pickle reads memo entry {arg}, which was never stored; it is damaged")
            push(self.memo[arg])
        elif code in ("GLOBAL", "INST"):
            module, _, name = str(arg).partition(" ")
            found = self.add_global(module, name)
            if code == "INST":
                found = _Node(children=[found, *self.pop_mark()])
            push(found)
        elif code == "STACK_GLOBAL":
            name, module = self.pop(), self.pop()
            push(self.add_global(module.text or COMPUTED, name.text or COMPUTED))
        elif code == "REDUCE" or code == "NEWOBJ":
            args, func = self.pop(), self.pop()
            push(_Node(children=[func, args]))
        elif code == "NEWOBJ_EX":
            kwargs, args, cls = self.pop(), self.pop(), self.pop()
            push(_Node(children=[cls, args, kwargs]))
        elif code == "OBJ":
            push(_Node(children=self.pop_mark()))
        elif code in ("EXT1", "EXT2", "EXT4"):
            push(self.add_global("copyreg", f"<extension {arg}>"))
        elif code == "PERSID":
            push(_ATOM)
        elif code == "BINPERSID":
            self.storage(self.pop())
            push(_ATOM)
        else:  # NONE, booleans, floats, bytes, buffers: plain values
            push(_ATOM)

    def link(self, items: list[_Node]) -> None:
        """Add references from the object on top of the stack (APPEND, SETITEM, BUILD ...)."""
        target = self.top()
        if target is _ATOM:  # the shared stand-in for plain values must never gain references
            target = self.stack[-1] = _Node()
        if target.children is None:  # BUILD on a global or a call result: keep the references all the same
            target.children = []
        target.children.extend(items)

    def storage(self, pid: _Node) -> None:
        """Note a torch storage reference ``('storage', type, key, location, numel[, view])``."""
        parts = pid.children or []
        if len(parts) in (5, 6) and parts[0].text == "storage" and parts[2].text is not None:
            kind = parts[1].name or "?"
            numel = parts[4].number
            if numel is not None:
                self.storages.setdefault(parts[2].text, (kind.rsplit(".", 1)[-1], numel))


def _genops(stream: BinaryIO, machine: _Machine) -> Iterator[tuple[str, Any]]:
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            yield opcode.name, arg
            if opcode.name == "STOP":
                return
    except CheckpointError:
        raise
    except Exception as err:  # genops raises ValueError & co. on damaged pickles
        raise machine.fail(f"its pickle is damaged ({type(err).__name__}: {str(err)[:200]})") from err


def scan_pickle(stream: BinaryIO, *, what: str = "checkpoint", limits: Limits = LIMITS) -> PickleScan:
    """Scan one pickle in ``stream`` (left just after its STOP opcode) without executing anything.

    Args:
        stream: a binary stream positioned at the start of a pickle.
        what: how errors name the file (usually its path).
        limits: the budgets (:data:`LIMITS` by default).

    Returns:
        The globals (in order of first appearance), the storage references and the measured sizes.

    Raises:
        CheckpointError: the pickle is damaged, or larger than a budget allows (the message says which).

    Example:
        >>> import io
        >>> scan_pickle(io.BytesIO(b"cposix\\nsystem\\n(S'id'\\ntR.")).globals
        ('posix.system',)
    """
    machine = _Machine(limits, what)
    count = 0
    stopped = False
    for code, arg in _genops(_Capped(stream, limits.pickle_bytes, machine), machine):
        count += 1
        if count > limits.opcodes:
            raise machine.fail(
                f"its pickle runs more than {limits.opcodes:,} opcodes (a resource-exhaustion file; real "
                "checkpoints use a few thousand)",
                True,
            )
        machine.step(code, arg)
        stopped = code == "STOP"
    if not stopped:
        raise machine.fail("its pickle ends before its STOP opcode; the file is truncated or damaged")
    root = machine.stack[-1] if machine.stack and machine.stack[-1] is not _MARK else _ATOM
    expanded, cycles = _expanded_size(root, limits.expanded)
    if expanded > limits.expanded:
        raise machine.fail(
            f"its shared references expand to more than {limits.expanded:,} objects (a few bytes can "
            "describe a tree of shared lists too large to walk, hash or print)",
            True,
        )
    return PickleScan(
        globals=tuple(machine.globals),
        storages=tuple((k, kind, n) for k, (kind, n) in machine.storages.items()),
        opcodes=count,
        expanded=expanded,
        cycles=cycles,
        protocol=machine.protocol,
        memo=len(machine.memo),
    )


def _expanded_size(root: _Node, limit: int) -> tuple[int, bool]:
    """How many objects a naive tree walk from ``root`` visits (saturating just above ``limit``).

    Each node's size is computed once (so the cost is linear in the references), then reused wherever the
    node is shared. A reference back into the current path (a cycle) counts once: transferkit's own
    walks track identities, and Python's ``repr`` stops at cycles too.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    cycles = False
    stack: list[tuple[_Node, int]] = [(root, 0)]
    while stack:
        node, index = stack.pop()
        children = node.children or ()
        if index == 0:
            if id(node) in size:
                continue
            on_path.add(id(node))
        if index < len(children):
            stack.append((node, index + 1))
            child = children[index]
            if id(child) in on_path:
                cycles = True
            elif id(child) not in size and child.children:
                stack.append((child, 0))
            continue
        total = 1
        for child in children:
            total += size.get(id(child), 1)
            if total > limit:
                total = limit + 1
                break
        size[id(node)] = total
        on_path.discard(id(node))
    return size.get(id(root), 1), cycles


class _Capped:
    """A read-only view of a stream that fails once more than ``limit`` bytes have been read."""

    def __init__(self, stream: BinaryIO, limit: int, machine: _Machine) -> None:
        self._stream = stream
        self._left = limit
        self._machine = machine

    def _account(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise self._machine.fail(
                f"its pickle is larger than {self._machine.limits.pickle_bytes >> 20:,} MiB (a zip bomb or "
                "not a checkpoint)",
                True,
            )
        return data

    def read(self, n: int = -1) -> bytes:
        # never ask the stream for more than the budget: a declared length of 2**60 allocates nothing
        return self._account(self._stream.read(self._left + 1 if n < 0 or n > self._left else n))

    def readline(self) -> bytes:
        return self._account(self._stream.readline(min(self._left + 1, 1 << 20)))

    def tell(self) -> int:
        return self._stream.tell()
