"""Verdicts on the globals a pickle names: harmless data type, unknown class, or dangerous (and why).

:func:`classify_global` sorts one dotted name; :func:`summarize_globals` writes the bounded,
dangerous-first text that refusals and ``transferkit scan`` print. The tables are deliberately
conservative: a name is "data" only when constructing it cannot run code, touch files or import
modules; anything not in a table is an "unknown class" (it may be harmless, but loading it runs its
module's code).

Example:
    >>> classify_global("posix.system")
    GlobalVerdict(name='posix.system', kind='dangerous', category='runs a process')
    >>> classify_global("argparse.Namespace").kind
    'data'
    >>> classify_global("__main__.Backbone").kind
    'unknown'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from transferkit.checkpoint.pickle_scan import COMPUTED

__all__ = ["GlobalVerdict", "classify_global", "summarize_globals", "DANGEROUS", "DATA", "UNKNOWN"]

DANGEROUS, DATA, UNKNOWN = "dangerous", "data", "unknown"

_PROCESS = "runs a process"
_EVAL = "evaluates code (eval/exec)"
_IMPORT = "import machinery (reaches any object)"
_IO = "file or network I/O"
_MARSHAL = "deserialises nested data (marshal/pickle)"
_CODE = "builds code objects or functions"

# Whole modules: any name in them (or in a submodule) gets the category.
_DANGEROUS_MODULES = {
    "os": _PROCESS,
    "posix": _PROCESS,
    "nt": _PROCESS,
    "subprocess": _PROCESS,
    "pty": _PROCESS,
    "commands": _PROCESS,
    "multiprocessing": _PROCESS,
    "_posixsubprocess": _PROCESS,
    "asyncio.subprocess": _PROCESS,
    "signal": _PROCESS,
    "code": _EVAL,
    "codeop": _EVAL,
    "runpy": _EVAL,
    "timeit": _EVAL,
    "pdb": _EVAL,
    "bdb": _EVAL,
    "cProfile": _EVAL,
    "profile": _EVAL,
    "trace": _EVAL,
    "doctest": _EVAL,
    "idlelib": _EVAL,
    "lib2to3": _EVAL,
    "importlib": _IMPORT,
    "imp": _IMPORT,
    "pkgutil": _IMPORT,
    "zipimport": _IMPORT,
    "sys": _IMPORT,
    "ctypes": _IMPORT,
    "_ctypes": _IMPORT,
    "cffi": _IMPORT,
    "inspect": _IMPORT,
    "operator": _IMPORT,  # attrgetter / methodcaller reach any attribute
    "functools": _IMPORT,  # partial / reduce wrap other callables
    "gc": _IMPORT,
    "builtins.__import__": _IMPORT,
    "io": _IO,
    "_io": _IO,
    "shutil": _IO,
    "tempfile": _IO,
    "glob": _IO,
    "fileinput": _IO,
    "socket": _IO,
    "_socket": _IO,
    "ssl": _IO,
    "http": _IO,
    "urllib": _IO,
    "urllib2": _IO,
    "requests": _IO,
    "httpx": _IO,
    "aiohttp": _IO,
    "ftplib": _IO,
    "smtplib": _IO,
    "telnetlib": _IO,
    "webbrowser": _IO,
    "asyncio": _IO,
    "sqlite3": _IO,
    "logging": _IO,
    "zipfile": _IO,
    "tarfile": _IO,
    "dbm": _IO,
    "shelve": _IO,
    "marshal": _MARSHAL,
    "pickle": _MARSHAL,
    "_pickle": _MARSHAL,
    "cPickle": _MARSHAL,
    "dill": _MARSHAL,
    "cloudpickle": _MARSHAL,
    "joblib": _MARSHAL,
    "jsonpickle": _MARSHAL,
    "yaml": _MARSHAL,
    "torch.serialization": _MARSHAL,
    "torch.hub": _IO,
    "torch.jit": _EVAL,
    "torch.package": _IMPORT,
    "torch.storage._load_from_bytes": _MARSHAL,
    "torch._inductor": _EVAL,
    "torch.utils.cpp_extension": _PROCESS,
    "numpy.load": _MARSHAL,
    "numpy.lib.npyio": _MARSHAL,
    "numpy.testing": _PROCESS,
    "numpy.f2py": _PROCESS,
    "numpy.distutils": _PROCESS,
    "types": _CODE,
    "copyreg": _IMPORT,
    "copy_reg": _IMPORT,
}

_DANGEROUS_NAMES = {
    "builtins.eval": _EVAL,
    "builtins.exec": _EVAL,
    "builtins.compile": _EVAL,
    "builtins.execfile": _EVAL,
    "builtins.input": _IO,
    "builtins.breakpoint": _EVAL,
    "builtins.open": _IO,
    "builtins.file": _IO,
    "builtins.__import__": _IMPORT,
    "builtins.getattr": _IMPORT,
    "builtins.setattr": _IMPORT,
    "builtins.delattr": _IMPORT,
    "builtins.globals": _IMPORT,
    "builtins.locals": _IMPORT,
    "builtins.vars": _IMPORT,
    "builtins.type": _CODE,
    "builtins.object": _CODE,
    "builtins.super": _IMPORT,
    "builtins.memoryview": _IMPORT,
    "builtins.classmethod": _CODE,
    "builtins.staticmethod": _CODE,
    "builtins.property": _CODE,
    "builtins.help": _IO,
    "builtins.exit": _PROCESS,
    "builtins.quit": _PROCESS,
    "builtins.print": _IO,
    "builtins.map": _IMPORT,  # map(os.system, [...]) once any callable is reachable
    "builtins.filter": _IMPORT,
    "builtins.apply": _EVAL,
    "builtins.reload": _IMPORT,
    "builtins.function": _CODE,
    "builtins.code": _CODE,
    "builtins.bytes.fromhex": _CODE,
}

# Harmless data types: constructing them runs no code from elsewhere and touches nothing outside.
_DATA_NAMES = frozenset(
    {
        "argparse.Namespace",
        "types.SimpleNamespace",
        "builtins.set",
        "builtins.frozenset",
        "builtins.slice",
        "builtins.range",
        "builtins.complex",
        "builtins.bytearray",
        "builtins.bytes",
        "builtins.list",
        "builtins.dict",
        "builtins.tuple",
        "builtins.int",
        "builtins.float",
        "builtins.str",
        "builtins.bool",
        "builtins.NoneType",
        "builtins.Ellipsis",
        "builtins.NotImplemented",
        "_codecs.encode",
        "collections.OrderedDict",
        "collections.defaultdict",
        "collections.deque",
        "collections.Counter",
        "datetime.datetime",
        "datetime.date",
        "datetime.time",
        "datetime.timedelta",
        "datetime.timezone",
        "decimal.Decimal",
        "fractions.Fraction",
        "uuid.UUID",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "pathlib.Path",
        "re._compile",
        "enum.Enum",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy.dtypes.Float32DType",
        "numpy.dtypes.Float64DType",
        "numpy.dtypes.Int64DType",
        "numpy.dtypes.Int32DType",
    }
)
_DATA_PREFIXES = ("torch._utils._rebuild_", "torch.nn.parameter.", "omegaconf.", "numpy.dtypes.")
_DATA_TORCH = frozenset(
    {"torch.Size", "torch.device", "torch.dtype", "torch.Tensor", "torch.layout", "torch.memory_format"}
)


@dataclass(frozen=True)
class GlobalVerdict:
    """One global and what loading it would mean.

    Attributes:
        name: the dotted name, as the pickle spells it (after Python 2 renames).
        kind: ``"data"`` (a harmless data type), ``"unknown"`` (a class that may be harmless, but its
            module's code runs when it is imported) or ``"dangerous"``.
        category: for dangerous globals, what they can do (``"runs a process"``, ...); else ``""``.
    """

    name: str
    kind: str
    category: str = ""


def classify_global(name: str) -> GlobalVerdict:
    """Classify one dotted name (``"module.Name"``); nothing is imported.

    Example:
        >>> classify_global("builtins.eval").category
        'evaluates code (eval/exec)'
    """
    if COMPUTED in name:
        return GlobalVerdict(
            name, DANGEROUS, "a global whose name is computed at load time (import machinery)"
        )
    if name in _DANGEROUS_NAMES:
        return GlobalVerdict(name, DANGEROUS, _DANGEROUS_NAMES[name])
    if name in _DATA_NAMES:  # checked before the modules: types.SimpleNamespace is data, types.CodeType not
        return GlobalVerdict(name, DATA)
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        category = _DANGEROUS_MODULES.get(".".join(parts[:i]))
        if category is not None:
            return GlobalVerdict(name, DANGEROUS, category)
    if name.startswith("copyreg.<extension"):
        return GlobalVerdict(name, DANGEROUS, _IMPORT)
    if name in _DATA_NAMES or name in _DATA_TORCH or name.startswith(_DATA_PREFIXES):
        return GlobalVerdict(name, DATA)
    if name.startswith("torch.") and name.endswith("Storage") and name.count(".") == 1:
        return GlobalVerdict(name, DATA)
    return GlobalVerdict(name, UNKNOWN)


def summarize_globals(names: Iterable[str], *, shown: int = 8) -> str:
    """A bounded, one-line account of ``names``: counts by kind, every dangerous one first (up to 20),
    then the first ``shown`` of the rest.

    Example:
        >>> summarize_globals(["argparse.Namespace", "posix.system", "__main__.Net"])
        '3 global(s): 1 dangerous, 1 unknown class(es), 1 harmless data type(s). Dangerous: posix.system (runs a process). Others: __main__.Net (unknown class), argparse.Namespace (data type)'
    """
    verdicts = [classify_global(n) for n in names]
    dangerous = [v for v in verdicts if v.kind == DANGEROUS]
    unknown = [v for v in verdicts if v.kind == UNKNOWN]
    data = [v for v in verdicts if v.kind == DATA]
    text = (
        f"{len(verdicts)} global(s): {len(dangerous)} dangerous, {len(unknown)} unknown class(es), "
        f"{len(data)} harmless data type(s)."
    )
    if dangerous:
        listed = ", ".join(f"{v.name} ({v.category})" for v in dangerous[:20])
        more = f" and {len(dangerous) - 20} more" if len(dangerous) > 20 else ""
        text += f" Dangerous: {listed}{more}."
    rest = unknown + data
    if rest:
        labels = {UNKNOWN: "unknown class", DATA: "data type"}
        listed = ", ".join(f"{v.name} ({labels[v.kind]})" for v in rest[:shown])
        more = f" and {len(rest) - shown} more" if len(rest) > shown else ""
        text += f" Others: {listed}{more}"
    return text.rstrip(".")
