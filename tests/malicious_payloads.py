"""Builders of malicious checkpoint files for the security tests.

Each builder ``build(path, marker) -> path`` writes a checkpoint that creates the file ``marker`` when it is
unpickled without restrictions (``torch.load(weights_only=False)`` or ``pickle.load``). A loader is safe
when, after reading the file in any mode, ``marker`` does not exist. ``test_salvage.py`` proves each
payload is live by running a full unpickle on it (the only place that is ever done).

Most payloads are hand-assembled pickle opcodes embedded in a genuine ``torch.save`` archive next to real
tensors (``{"state_dict": {"weight", "bias"}, "payload": ...}``, loadable into ``nn.Linear(3, 2)``), the
way an attacker would ship them. ``PAYLOADS`` maps a name to its builder.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> PAYLOADS["os_system"](folder / "evil.pt", folder / "marker").exists()
    True
"""

from __future__ import annotations

import os
import pickle
import shlex
import struct
import subprocess
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = [
    "PAYLOADS",
    "SAFE_BIAS",
    "SAFE_WEIGHT",
    "dangerous_globals",
    "op_bytes",
    "op_call",
    "op_dict",
    "op_global",
    "op_int",
    "op_list",
    "op_str",
    "op_tensor",
    "op_tuple",
    "torch_legacy_with_ops",
    "torch_zip_with_ops",
]

# The real tensors every payload file also carries (shapes of nn.Linear(3, 2)).
SAFE_WEIGHT = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 10
SAFE_BIAS = torch.tensor([0.5, -0.5])


# --- a tiny pickle assembler (protocol 2 opcodes; BINBYTES is read by every unpickler) -------------------


def op_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def op_bytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def op_list(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


def op_dict(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def op_call(func: bytes, *args: bytes) -> bytes:
    return func + op_tuple(*args) + b"R"


def op_int(value: int) -> bytes:
    """Any Python int (LONG1 holds up to 255 bytes, enough for hostile sizes)."""
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def op_tensor(key: str, numel: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """``_rebuild_tensor_v2`` over float storage ``key`` of the archive (``"0"`` is the 6-float weight)."""
    storage = b"(" + op_str("storage") + op_global("torch", "FloatStorage") + op_str(key) + op_str("cpu")
    storage += op_int(numel) + b"tQ"  # TUPLE, BINPERSID
    hooks = op_call(op_global("collections", "OrderedDict"))
    args = (
        storage,
        op_int(offset),
        op_tuple(*map(op_int, size)),
        op_tuple(*map(op_int, stride)),
        b"\x89",
        hooks,
    )
    return op_call(op_global("torch._utils", "_rebuild_tensor_v2"), *args)


def _shell(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def _python(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _system(marker: Path) -> bytes:
    return op_call(op_global("os", "system"), op_str(_shell(marker)))


# --- writing opcodes into genuine torch files ---------------------------------------------------------


class _Raw:
    """An object the raw pickler writes as the given opcodes (which leave exactly one object on the stack)."""

    def __init__(self, ops: bytes) -> None:
        self.ops = ops


class _RawPickler(pickle._Pickler):
    """The pure-Python pickler, writing :class:`_Raw` objects verbatim; torch.save drives it as usual."""

    def save(self, obj: object, save_persistent_id: bool = True) -> None:
        if isinstance(obj, _Raw):
            self.write(obj.ops)
            return
        super().save(obj, save_persistent_id)


_RAW_PICKLE = types.SimpleNamespace(
    Pickler=_RawPickler, Unpickler=pickle.Unpickler, dump=pickle.dump, load=pickle.load, __name__="pickle"
)


def _content(payload: object) -> dict[str, object]:
    return {"state_dict": {"weight": SAFE_WEIGHT.clone(), "bias": SAFE_BIAS.clone()}, "payload": payload}


def torch_zip_with_ops(path: Path, ops: bytes) -> Path:
    torch.save(_content(_Raw(ops)), path, pickle_module=_RAW_PICKLE)
    return path


def torch_legacy_with_ops(path: Path, ops: bytes) -> Path:
    torch.save(_content(_Raw(ops)), path, pickle_module=_RAW_PICKLE, _use_new_zipfile_serialization=False)
    return path


# --- payloads whose pickling is done by Python itself (how most real exploits are made) ---------------


class _ReduceSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (_shell(self.marker),))


class _ReduceExCheckCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce_ex__(self, protocol: object) -> tuple:
        return (subprocess.check_call, (["touch", str(self.marker)],))


# --- the builders -------------------------------------------------------------------------------------


def os_system(path: Path, marker: Path) -> Path:
    """``os.system("touch marker")`` via GLOBAL + REDUCE inside a torch zip."""
    return torch_zip_with_ops(path, _system(marker))


def reduce(path: Path, marker: Path) -> Path:
    """An object whose ``__reduce__`` returns ``(os.system, (cmd,))``, saved by plain ``torch.save``."""
    torch.save(_content(_ReduceSystem(marker)), path)
    return path


def reduce_ex(path: Path, marker: Path) -> Path:
    """An object whose ``__reduce_ex__`` returns ``(subprocess.check_call, (["touch", marker],))``."""
    torch.save(_content(_ReduceExCheckCall(marker)), path)
    return path


def subprocess_popen(path: Path, marker: Path) -> Path:
    """``subprocess.Popen(["touch", marker])``."""
    return torch_zip_with_ops(
        path, op_call(op_global("subprocess", "Popen"), op_list(op_str("touch"), op_str(str(marker))))
    )


def builtins_eval(path: Path, marker: Path) -> Path:
    """``eval("open(marker, 'w').close()")``."""
    return torch_zip_with_ops(path, op_call(op_global("builtins", "eval"), op_str(_python(marker))))


def builtins_exec(path: Path, marker: Path) -> Path:
    """``exec("import pathlib; pathlib.Path(marker).touch()")``."""
    code = f"import pathlib; pathlib.Path({str(marker)!r}).touch()"
    return torch_zip_with_ops(path, op_call(op_global("builtins", "exec"), op_str(code)))


def builtins_open(path: Path, marker: Path) -> Path:
    """``open(marker, "w")``: creating a file needs no shell at all."""
    return torch_zip_with_ops(path, op_call(op_global("builtins", "open"), op_str(str(marker)), op_str("w")))


def importlib_chain(path: Path, marker: Path) -> Path:
    """``getattr(importlib.import_module("os"), "system")(cmd)``."""
    os_module = op_call(op_global("importlib", "import_module"), op_str("os"))
    system = op_call(op_global("builtins", "getattr"), os_module, op_str("system"))
    return torch_zip_with_ops(path, op_call(system, op_str(_shell(marker))))


def getattr_chain(path: Path, marker: Path) -> Path:
    """``getattr(getattr(__import__("subprocess"), "os"), "system")(cmd)``: two getattr hops."""
    sub = op_call(op_global("builtins", "__import__"), op_str("subprocess"))
    os_module = op_call(op_global("builtins", "getattr"), sub, op_str("os"))
    system = op_call(op_global("builtins", "getattr"), os_module, op_str("system"))
    return torch_zip_with_ops(path, op_call(system, op_str(_shell(marker))))


def setstate_build(path: Path, marker: Path) -> Path:
    """BUILD sets an instance's ``__setstate__`` to ``os.system``; a second BUILD then calls it."""
    namespace = op_call(op_global("argparse", "Namespace"))
    first = op_dict((op_str("__setstate__"), op_global("os", "system"))) + b"b"
    second = op_str(_shell(marker)) + b"b"
    return torch_zip_with_ops(path, namespace + first + second)


def inst_opcode(path: Path, marker: Path) -> Path:
    """The INST opcode: ``(`` cmd ``i os\\nsystem``."""
    return torch_zip_with_ops(path, b"(" + op_str(_shell(marker)) + b"ios\nsystem\n")


def obj_opcode(path: Path, marker: Path) -> Path:
    """The OBJ opcode: ``(`` GLOBAL os.system, cmd ``o``."""
    return torch_zip_with_ops(path, b"(" + op_global("os", "system") + op_str(_shell(marker)) + b"o")


def newobj_opcode(path: Path, marker: Path) -> Path:
    """NEWOBJ builds ``functools.partial(os.system, cmd)``; REDUCE with no arguments runs it."""
    partial = (
        op_global("functools", "partial")
        + op_tuple(op_global("os", "system"), op_str(_shell(marker)))
        + b"\x81"
    )
    return torch_zip_with_ops(path, partial + b")R")


def nested_pickle(path: Path, marker: Path) -> Path:
    """``pickle.loads(<bytes of an os.system pickle>)``: a pickle inside a pickle."""
    inner = b"\x80\x02" + _system(marker) + b"."
    return torch_zip_with_ops(path, op_call(op_global("pickle", "loads"), op_bytes(inner)))


def data_pkl_rewrite(path: Path, marker: Path) -> Path:
    """A real ``torch.save`` zip whose ``data.pkl`` member an attacker replaced with an os.system pickle."""
    clean = path.with_name(path.name + ".clean")
    torch.save(_content(None), clean)
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                data = b"\x80\x02" + op_dict((op_str("payload"), _system(marker))) + b"."
            target.writestr(info, data)
    clean.unlink()
    return path


def legacy_format(path: Path, marker: Path) -> Path:
    """``os.system`` inside a legacy (pre-1.6, non-zip) torch file."""
    return torch_legacy_with_ops(path, _system(marker))


def plain_pickle(path: Path, marker: Path) -> Path:
    """A bare ``pickle.dump`` of a ``__reduce__`` payload named like a checkpoint."""
    path.write_bytes(pickle.dumps({"payload": _ReduceSystem(marker)}, protocol=2))
    return path


PAYLOADS: dict[str, Callable[[Path, Path], Path]] = {
    fn.__name__: fn
    for fn in (
        os_system,
        reduce,
        reduce_ex,
        subprocess_popen,
        builtins_eval,
        builtins_exec,
        builtins_open,
        importlib_chain,
        getattr_chain,
        setstate_build,
        inst_opcode,
        obj_opcode,
        newobj_opcode,
        nested_pickle,
        data_pkl_rewrite,
        legacy_format,
        plain_pickle,
    )
}


def dangerous_globals(name: str) -> set[str]:
    """The globals payload ``name`` needs; at least one must show up in a salvage report."""
    return {
        "os_system": {"os.system"},
        "reduce": {"posix.system", "os.system"},
        "reduce_ex": {"subprocess.check_call", "commands.check_call"},  # protocol 2 writes the Py2 name
        "subprocess_popen": {"subprocess.Popen"},
        "builtins_eval": {"builtins.eval"},
        "builtins_exec": {"builtins.exec"},
        "builtins_open": {"builtins.open"},
        "importlib_chain": {"importlib.import_module", "builtins.getattr"},
        "getattr_chain": {"builtins.__import__", "builtins.getattr"},
        "setstate_build": {"argparse.Namespace", "os.system"},
        "inst_opcode": {"os.system"},
        "obj_opcode": {"os.system"},
        "newobj_opcode": {"functools.partial", "os.system"},
        "nested_pickle": {"pickle.loads"},
        "data_pkl_rewrite": {"os.system"},
        "legacy_format": {"os.system"},
        "plain_pickle": {"posix.system", "os.system"},
    }[name]
