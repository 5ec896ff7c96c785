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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from transferkit.errors import CheckpointError

__all__ = ["Limits", "PickleScan", "PickleBudgetError", "scan_pickle", "read_capped", "COMPUTED", "LIMITS"]

# What a STACK_GLOBAL operand the scan cannot know is recorded as (e.g. "builtins.<computed>").
COMPUTED = "<computed>"


class PickleBudgetError(CheckpointError):
    """A pickle is larger than a :class:`Limits` budget allows (it parsed, so far, as a pickle)."""


@dataclass(frozen=True)
class Limits:
    """Budgets for one pickle. Real checkpoints use a small fraction of each (a timm model: 9,282
    opcodes, 36 KB); the limits keep a hostile file's cost to a few seconds and a bounded memory."""

    opcodes: int = 1_000_000
    memo: int = 250_000
    expanded: int = 10_000_000  # objects a tree walk of the result visits, shared references expanded
    pickle_bytes: int = 256 << 20  # read into memory at most this much of one pickle
    globals: int = 100_000
    # A zip member may inflate at most this much (plus the slack): torch writes storages uncompressed, real
    # weights never shrink 200-fold, and deflate's own ceiling (about 1032:1) is what zip bombs use.
    zip_ratio: int = 200
    zip_slack: int = 16 << 20  # a small member (a zero buffer) may compress better

    def inflates_too_much(self, compressed: int, size: int) -> bool:
        """Whether a deflated zip member of ``compressed`` bytes declaring ``size`` bytes is a zip bomb."""
        return size > self.zip_ratio * compressed + self.zip_slack


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

    def handlers(self) -> dict[str, Callable[[Any], None]]:
        """One small function per opcode (a table, not an if-chain: a flood of opcodes stays cheap)."""
        push = self.stack.append
        table: dict[str, Callable[[Any], None]] = {
            "PROTO": self.proto,
            "FRAME": _nothing,
            "STOP": _nothing,
            "MARK": lambda arg: push(_MARK),
            "POP": lambda arg: self.pop(),
            "POP_MARK": lambda arg: self.pop_mark(),
            "DUP": lambda arg: push(self.top()),
            "TUPLE1": lambda arg: push(_Node(children=[self.pop()])),
            "TUPLE2": lambda arg: push(_Node(children=self.pops(2))),
            "TUPLE3": lambda arg: push(_Node(children=self.pops(3))),
            "APPEND": lambda arg: self.link([self.pop()]),
            "BUILD": lambda arg: self.link([self.pop()]),
            "SETITEM": lambda arg: self.link(self.pops(2)),
            "MEMOIZE": lambda arg: self.put(len(self.memo)),
            "GLOBAL": lambda arg: push(self.add_global(*str(arg).partition(" ")[::2])),
            "INST": self.inst,
            "STACK_GLOBAL": self.stack_global,
            "REDUCE": lambda arg: push(_Node(children=self.pops(2))),
            "NEWOBJ": lambda arg: push(_Node(children=self.pops(2))),
            "NEWOBJ_EX": lambda arg: push(_Node(children=self.pops(3))),
            "OBJ": lambda arg: push(_Node(children=self.pop_mark())),
            "BINPERSID": self.persistent,
        }
        for code in _STRINGS:
            table[code] = lambda arg: push(_Node(text=arg if isinstance(arg, str) else str(arg)))
        for code in _INTS:
            table[code] = lambda arg: push(_Node(number=arg if isinstance(arg, int) else None))
        for code in _EMPTY:
            table[code] = lambda arg: push(_Node(children=[]))
        for code in _FROM_MARK:
            table[code] = lambda arg: push(_Node(children=self.pop_mark()))
        for code in _INTO_FROM_MARK:
            table[code] = lambda arg: self.link(self.pop_mark())
        for code in _PUTS:
            table[code] = self.put
        for code in _GETS:
            table[code] = self.get
        for code in ("EXT1", "EXT2", "EXT4"):
            table[code] = lambda arg: push(self.add_global("copyreg", f"<extension {arg}>"))
        return table  # anything else (NONE, booleans, floats, bytes, PERSID ...) pushes a plain value

    def proto(self, arg: Any) -> None:
        self.protocol = int(arg)

    def pops(self, n: int) -> list[_Node]:
        items = [self.pop() for _ in range(n)]
        items.reverse()
        return items

    def put(self, index: Any) -> None:
        self.memo[index] = self.top()
        if len(self.memo) > self.limits.memo:
            raise self.fail(f"its pickle stores more than {self.limits.memo:,} objects in its memo", True)

    def get(self, index: Any) -> None:
        if index not in self.memo:
            raise self.fail(f"its pickle reads memo entry {index}, which was never stored; it is damaged")
        self.stack.append(self.memo[index])

    def inst(self, arg: Any) -> None:
        module, _, name = str(arg).partition(" ")
        found = self.add_global(module, name)
        self.stack.append(_Node(children=[found, *self.pop_mark()]))

    def stack_global(self, arg: Any) -> None:
        name, module = self.pop(), self.pop()
        self.stack.append(self.add_global(module.text or COMPUTED, name.text or COMPUTED))

    def persistent(self, arg: Any) -> None:
        self.storage(self.pop())
        self.stack.append(_ATOM)

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
            previous = self.storages.get(parts[2].text)
            if numel is not None and (previous is None or numel > previous[1]):  # the largest claim counts
                self.storages[parts[2].text] = (kind.rsplit(".", 1)[-1], numel)


def _nothing(arg: Any) -> None:
    pass


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
        stream: a binary stream positioned at the start of a pickle: in memory (``io.BytesIO``, e.g. from
            :func:`read_capped`) or an ``mmap``, so that a declared length of 2^60 bytes allocates nothing.
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
    table = machine.handlers()
    atom = machine.stack.append
    count = 0
    stopped = False
    for code, arg in _genops(stream, machine):
        count += 1
        if count > limits.opcodes:
            raise machine.fail(
                f"its pickle runs more than {limits.opcodes:,} opcodes (a resource-exhaustion file; real "
                "checkpoints use a few thousand)",
                True,
            )
        handler = table.get(code)
        if handler is None:
            atom(_ATOM)
        else:
            handler(arg)
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


def read_capped(stream: BinaryIO, what: str, limit: int = LIMITS.pickle_bytes) -> bytes:
    """Read a whole stream (a zip member's pickle) into memory, refusing one larger than ``limit`` bytes.

    Example:
        >>> import io
        >>> read_capped(io.BytesIO(b"abc"), "x", limit=3)
        b'abc'
    """
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise PickleBudgetError(
            f"{what}: its pickle is larger than {limit >> 20:,} MiB (a zip bomb or not a checkpoint). Nothing "
            "from the file was executed"
        )
    return data
