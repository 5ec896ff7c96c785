"""Tests for transferkit/salvage/ and for every reader against malicious checkpoints.

Salvage must get tensors out of files ``weights_only=True`` refuses without running anything from them;
the payload tests (builders in ``malicious_payloads.py``) check that no reader of the package executes a
hostile pickle, in default or salvage mode.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import logging
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from malicious_payloads import (
    PAYLOADS,
    SAFE_BIAS,
    SAFE_WEIGHT,
    dangerous_globals,
    op_call,
    op_dict,
    op_global,
    op_int,
    op_list,
    op_str,
    op_tensor,
    op_tuple,
    torch_legacy_with_ops,
    torch_zip_with_ops,
)
from torch import nn

from transferkit.errors import CheckpointError, TransferkitError
from transferkit.salvage import Placeholder, find_placeholders, module_state_dict, salvage_load

LIGHTNING11 = "lightning11_mnist_mlp_unsafe.ckpt"
# Fixtures torch itself loads with weights_only=True: salvage must return exactly the same thing.
WEIGHTS_ONLY_FIXTURES = [
    "cifar10_resnet20_dataparallel.th",
    "cifar10_resnet56_dataparallel.th",
    "cifar10_smallvgg_with_optimizer.pth.tar",
    "tv_squeezenet1_0_corn4.pth",
    "timm_mobilenetv3_small_050_seedlings12.pth",
    "mnist_lenet5.pth",
    "lightning25_mnist_cnn.ckpt",
]


class LocalConfig:
    """A class only this test module defines: a stand-in for a user's own config object."""

    def __init__(self, depth: int) -> None:
        self.depth = depth


def assert_same(salvaged: object, reference: object, where: str = "root") -> None:
    """Deep equality where tensors must match in type, dtype, shape, strides, device and values."""
    if isinstance(reference, torch.Tensor):
        assert type(salvaged) is type(reference), where
        assert salvaged.dtype == reference.dtype and salvaged.shape == reference.shape, where
        assert salvaged.stride() == reference.stride() and salvaged.device == reference.device, where
        assert salvaged.requires_grad == reference.requires_grad, where
        assert torch.equal(salvaged, reference), where
    elif isinstance(reference, dict):
        assert type(salvaged) is type(reference) and list(salvaged) == list(reference), where
        for key in reference:
            assert_same(salvaged[key], reference[key], f"{where}.{key}")
    elif isinstance(reference, list | tuple):
        assert type(salvaged) is type(reference) and len(salvaged) == len(reference), where
        for i, (a, b) in enumerate(zip(salvaged, reference)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert salvaged == reference, where


# --- the real Lightning 1.1 fixture ------------------------------------------------------------------------


def test_lightning11_backbone_tensors_come_out(fixtures_dir: Path) -> None:
    obj = salvage_load(fixtures_dir / LIGHTNING11)
    state = obj["state_dict"]
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert shapes == {
        "backbone.l1.weight": (128, 784),
        "backbone.l1.bias": (128,),
        "backbone.l2.weight": (10, 128),
        "backbone.l2.bias": (10,),
    }
    for value in state.values():
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        assert torch.isfinite(value).all() and value.std() > 1e-3  # trained values, not zeros
    assert obj["epoch"] == 3 and obj["global_step"] == 3931


def test_lightning11_values_match_torch_with_stub_classes(fixtures_dir: Path) -> None:
    """Cross-check values against torch's own weights_only reader, given inert stubs for the 3 globals."""

    class Stub:
        def __setstate__(self, state: object) -> None:
            self.state = state

    names = [
        "__main__.Backbone",
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "torch.nn.modules.linear.Linear",
    ]
    stubs = [(type(f"Stub{i}", (Stub,), {}), name) for i, name in enumerate(names)]
    with torch.serialization.safe_globals(stubs):
        reference = torch.load(fixtures_dir / LIGHTNING11, weights_only=True, map_location="cpu")
    salvaged = salvage_load(fixtures_dir / LIGHTNING11)
    assert_same(salvaged["state_dict"], reference["state_dict"])
    assert_same(salvaged["optimizer_states"], reference["optimizer_states"])


def test_lightning11_reports_what_was_replaced(fixtures_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="transferkit.salvage"):
        obj = salvage_load(fixtures_dir / LIGHTNING11)
    assert find_placeholders(obj) == [
        "__main__.Backbone",
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "torch.nn.modules.linear.Linear",
    ]
    assert "__main__.Backbone" in caplog.text and "placeholder" in caplog.text
    # The callbacks dict is keyed by the (placeholder) callback class, with its state intact.
    (callback_class,) = obj["callbacks"]
    assert callback_class.target.endswith("ModelCheckpoint")
    assert "best_model_path" in obj["callbacks"][callback_class]
    # The pickled module kept its structure: Backbone -> _modules -> Linear placeholders with Parameters.
    backbone = obj["hyper_parameters"]["backbone"]
    assert isinstance(backbone, Placeholder) and backbone.target == "__main__.Backbone"
    l1 = backbone.state["_modules"]["l1"]
    assert l1.target == "torch.nn.modules.linear.Linear"
    assert isinstance(l1.state["_parameters"]["weight"], nn.Parameter)
    assert l1.state["_parameters"]["weight"].shape == (128, 784)


def test_lightning11_loads_into_a_model_only_with_salvage(fixtures_dir: Path) -> None:
    from transferkit.checkpoint import extract_state_dict, load_checkpoint
    from transferkit.partial import load_partial

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.ModuleDict({"l1": nn.Linear(784, 128), "l2": nn.Linear(128, 10)})

    path = fixtures_dir / LIGHTNING11
    state = extract_state_dict(load_checkpoint(path, salvage=True))
    assert sorted(state) == sorted(salvage_load(path)["state_dict"])
    model = Net()
    with pytest.raises(TransferkitError):
        load_partial(model, path)  # the default refuses the file
    report = load_partial(model, path, salvage=True)
    assert sorted(report.loaded) == sorted(state)
    assert torch.equal(model.backbone["l2"].weight.detach(), state["backbone.l2.weight"])


@pytest.mark.parametrize("name", WEIGHTS_ONLY_FIXTURES)
def test_fixtures_salvage_equals_weights_only_load(fixtures_dir: Path, name: str) -> None:
    reference = torch.load(fixtures_dir / name, weights_only=True, map_location="cpu")
    salvaged = salvage_load(fixtures_dir / name)
    assert_same(salvaged, reference)
    assert find_placeholders(salvaged) == []


def test_safetensors_fixture(fixtures_dir: Path) -> None:
    obj = salvage_load(fixtures_dir / "mnist_tinycnn.safetensors")
    assert len(obj) == 23 and all(isinstance(v, torch.Tensor) for v in obj.values())


def test_cuda_saved_file_without_map_location_needs_cuda(fixtures_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the saved device exists")
    with pytest.raises(CheckpointError, match="map_location='cpu'"):
        salvage_load(fixtures_dir / "tv_squeezenet1_0_corn4.pth", map_location=None)


@pytest.mark.gpu
def test_map_location_to_cuda(fixtures_dir: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    obj = salvage_load(fixtures_dir / LIGHTNING11, map_location="cuda")
    assert all(v.is_cuda for v in obj["state_dict"].values())
    legacy = salvage_load(fixtures_dir / "cifar10_resnet20_dataparallel.th", map_location=None)
    assert all(v.is_cuda for v in legacy["state_dict"].values())


# --- self-made files with known tensors and harmless foreign globals --------------------------------------


def _known_content() -> dict[str, object]:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {
        "tensors": {
            "float": base,
            "view": base[1:, 1:3],  # shares storage with "float", non-contiguous
            "transposed": base.t(),
            "int": torch.arange(5, dtype=torch.int64),
            "half": torch.linspace(0, 1, 4).half(),
            "bf16": torch.linspace(0, 1, 4).bfloat16(),
            "bool": torch.tensor([True, False]),
            "complex": torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64),
            "scalar": torch.tensor(3.5),
            "empty": torch.zeros(0, 3),
            "param": nn.Parameter(torch.ones(2, 2)),
        },
        "args": argparse.Namespace(lr=0.1, depth=3),
        "numpy_scalar": np.float64(0.25),
        "config": LocalConfig(7),
        "meta": {"epoch": 4, "names": ["a", "b"], "size": torch.Size([3, 4]), "tags": {"x", "y"}},
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_self_made_file_gives_back_exactly_the_tensors(tmp_path: Path, legacy: bool) -> None:
    content = _known_content()
    path = tmp_path / "mixed.pt"
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # the premise: torch refuses this file
    obj = salvage_load(path)
    assert_same(obj["tensors"], content["tensors"])
    assert_same(obj["meta"], content["meta"])
    tensors = obj["tensors"]
    assert tensors["view"].untyped_storage().data_ptr() == tensors["float"].untyped_storage().data_ptr()
    assert isinstance(tensors["param"], nn.Parameter) and tensors["param"].requires_grad

    names = find_placeholders(obj)
    assert "argparse.Namespace" in names and any(n.endswith("LocalConfig") for n in names)
    assert any(n.startswith("numpy") for n in names)
    assert obj["args"].state == {"lr": 0.1, "depth": 3}
    assert obj["config"].state == {"depth": 7}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_whole_model_pickle_gives_its_state_dict(tmp_path: Path, legacy: bool) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    model.register_buffer("scratch", torch.ones(1), persistent=False)
    path = tmp_path / "whole.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    obj = salvage_load(path)
    assert obj.target == "torch.nn.modules.container.Sequential"
    assert_same(module_state_dict(obj), dict(model.state_dict()))
    assert module_state_dict({"not": "a module"}) == {}


def test_map_location_forms(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(3)}, path)
    seen: list[str] = []

    def mover(storage: torch.UntypedStorage, location: str) -> None:
        seen.append(location)  # None: keep the default placement

    for where in ("cpu", torch.device("cpu"), {"cpu": "cpu"}, None, mover):
        assert salvage_load(path, map_location=where)["w"].device.type == "cpu"
    assert seen == ["cpu"]
    assert salvage_load(path, map_location="meta")["w"].device.type == "meta"


def test_plain_pickle_of_containers(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2.5, "x"], "b": argparse.Namespace(k=1)}, protocol=4))
    obj = salvage_load(path)
    assert obj["a"] == [1, 2.5, "x"] and find_placeholders(obj) == ["argparse.Namespace"]


# --- placeholders are inert --------------------------------------------------------------------------------


def test_placeholder_records_and_never_runs() -> None:
    system = Placeholder._subclass_for("os.system")
    made = system("touch /nonexistent/marker")
    assert made.args == ("touch /nonexistent/marker",) and made.target == "os.system"
    made.__setstate__({"a": 1})
    made.__setstate__("second")
    assert made.state == "second" and made.states == [{"a": 1}, "second"]
    called = made(1, 2)  # calling an instance records too
    assert called.called_on is made and called.args == (1, 2)
    with pytest.raises(AttributeError):
        made.anything = 1
    with pytest.raises(TypeError):
        system.target = "builtins.print"
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(made)
    clone = copy.deepcopy({"x": made})["x"]
    assert clone is not made and clone.states == made.states and "os.system" in repr(clone)


def test_find_placeholders_handles_cycles_and_nesting() -> None:
    outer = Placeholder._subclass_for("pkg.Outer")()
    inner = Placeholder._subclass_for("pkg.Inner")
    cycle: list[object] = [outer]
    cycle.append(cycle)
    outer.__setstate__({"child": inner, "loop": cycle})
    assert find_placeholders({"root": cycle, inner: 1}) == ["pkg.Inner", "pkg.Outer"]


# --- hostile structure: refused with a clear error, or read without harm ----------------------------------


def _hostile(tmp_path: Path, ops: bytes, legacy: bool = False) -> Path:
    path = tmp_path / "hostile.pt"
    return (torch_legacy_with_ops if legacy else torch_zip_with_ops)(path, ops)


HOSTILE_REFUSED = {
    "tensor_beyond_storage": (op_tensor("0", 6, 0, (4, 4), (4, 1)), "needs 16 elements"),
    "negative_stride": (op_tensor("0", 6, 0, (2,), (-1,)), "invalid tensor geometry"),
    "numel_mismatch": (op_tensor("0", 600, 0, (2,), (1,)), "should hold 2400 bytes"),
    "missing_storage_member": (op_tensor("999", 6, 0, (2,), (1,)), "does not contain"),
    "reduce_a_string": (op_str("abc") + op_tuple() + b"R", "calls a str object"),
    "build_on_allowed_callable": (op_global("collections", "OrderedDict") + op_dict() + b"b", "BUILD"),
    "build_on_placeholder_class": (op_global("os", "system") + op_dict() + b"b", "BUILD"),
    "bytearray_of_huge_size": (op_call(op_global("builtins", "bytearray"), op_int(10**12)), "bytearray"),
    "set_of_a_tensor": (
        op_call(op_global("builtins", "set"), op_tensor("0", 6, 0, (10**12,), (0,))),
        "set() accepts",
    ),
    # dict/OrderedDict unpack each element as a pair, iterating it: a stride-0 view claims 10**9 elements
    "dict_of_a_huge_tensor": (
        op_call(op_global("builtins", "dict"), op_list(op_tensor("0", 6, 0, (10**9,), (0,)))),
        "(key, value) pairs",
    ),
    "ordereddict_of_a_huge_tensor": (
        op_call(op_global("collections", "OrderedDict"), op_list(op_tensor("0", 6, 0, (10**9,), (0,)))),
        "(key, value) pairs",
    ),
    "codec_that_imports": (op_call(op_global("_codecs", "encode"), op_str("x"), op_str("rot13")), "codecs"),
    "extension_opcode": (b"\x82\x01", "extension code"),
    "append_to_tensor": (op_tensor("0", 6, 0, (2,), (1,)) + op_int(1) + b"a", "APPEND"),
    "setitem_on_tensor": (op_tensor("0", 6, 0, (2,), (1,)) + op_int(0) + op_int(1) + b"s", "SETITEM"),
    "torch_tensor_constructor": (op_call(op_global("torch", "Tensor"), op_int(10**11)), "torch.Tensor"),
    "storage_type_called": (op_call(op_global("torch", "FloatStorage"), op_int(10**11)), "storage type"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_REFUSED))
def test_hostile_structures_are_refused_clearly(tmp_path: Path, case: str) -> None:
    ops, expected = HOSTILE_REFUSED[case]
    path = _hostile(tmp_path, ops)
    with pytest.raises(CheckpointError) as caught:
        salvage_load(path)
    assert str(path) in str(caught.value) and expected in str(caught.value)


def test_dicts_built_from_pairs_still_load(tmp_path: Path) -> None:
    # Python 2's OrderedDict.__reduce__ passes [[key, value], ...]; the pair check must let it through.
    pairs = op_list(op_list(op_str("a"), op_int(1)), op_tuple(op_str("b"), op_int(2)))
    ops = op_dict(
        (op_str("ordered"), op_call(op_global("collections", "OrderedDict"), pairs)),
        (op_str("plain"), op_call(op_global("builtins", "dict"), op_dict((op_str("c"), op_int(3))))),
    )
    obj = salvage_load(_hostile(tmp_path, ops))["payload"]
    assert obj["ordered"] == {"a": 1, "b": 2} and type(obj["ordered"]) is collections.OrderedDict
    assert obj["plain"] == {"c": 3}


def test_memo_index_bomb_costs_nothing(tmp_path: Path) -> None:
    # LONG_BINPUT 0xFFFFFFFF makes the C unpickler allocate a 32 GiB memo; salvage's memo is a dict.
    ops = op_list(op_int(1)) + b"r\xff\xff\xff\xff" + b"0" + b"j\xff\xff\xff\xff"
    start = time.perf_counter()
    assert salvage_load(_hostile(tmp_path, ops))["payload"] == [1]
    assert time.perf_counter() - start < 5


def test_huge_legacy_storage_is_refused_before_allocation(tmp_path: Path) -> None:
    storage = b"(" + op_str("storage") + op_global("torch", "FloatStorage") + op_str("k") + op_str("cpu")
    storage += op_int(2**40) + b"N" + b"tQ"
    path = _hostile(tmp_path, storage, legacy=True)
    with pytest.raises(CheckpointError, match="more than the whole file"):
        salvage_load(path)


def test_deep_nesting_is_read_without_recursion(tmp_path: Path) -> None:
    depth = 50_000
    ops = b"]" * depth + b"a" * (depth - 1)  # each list appended into the one before
    obj = salvage_load(_hostile(tmp_path, ops))
    level, count = obj["payload"], 1
    while level:
        level, count = level[0], count + 1
    assert count == depth
    assert find_placeholders(obj) == []


def _truncated_safetensors(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(100)}, str(path))
    path.write_bytes(path.read_bytes()[:40])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.mkdir(), "directory"),
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(bytes(range(256)) * 4), "unrecognised format"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 100), "zip archive is damaged"),
        (_truncated_safetensors, "safetensors file whose header says"),
    ],
    ids=["directory", "missing", "empty", "random", "broken_zip", "truncated_safetensors"],
)
def test_bad_files_raise_checkpoint_error_naming_the_path(tmp_path: Path, make, expected: str) -> None:
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(CheckpointError, match=expected) as caught:
        salvage_load(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_files_raise_checkpoint_error(tmp_path: Path, legacy: bool) -> None:
    full = tmp_path / "full.pt"
    torch.save(_known_content(), full, _use_new_zipfile_serialization=not legacy)
    data = full.read_bytes()
    for cut in (10, len(data) // 3, len(data) // 2, len(data) - 30):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as caught:
            salvage_load(path)
        assert str(path) in str(caught.value)


# --- malicious payloads against every reader ---------------------------------------------------------------


@pytest.fixture(params=sorted(PAYLOADS))
def payload(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, Path]:
    name = request.param
    marker = tmp_path / "marker"
    return name, PAYLOADS[name](tmp_path / f"{name}.pt", marker), marker


# Payloads whose file holds no usable tensors: the data.pkl rewrite replaced the whole pickle, and a plain
# pickle stores tensors through torch.storage._load_from_bytes (a nested torch.load, never allowed).
NO_WEIGHTS = {"data_pkl_rewrite", "plain_pickle"}


def _assert_not_executed(name: str, marker: Path) -> None:
    if name == "subprocess_popen":
        time.sleep(0.2)  # Popen would create the marker asynchronously
    assert not marker.exists(), f"payload {name} was executed"


def test_payload_catalogue_is_broad() -> None:
    assert len(PAYLOADS) >= 10


def test_payload_is_live_under_a_full_unpickle(payload: tuple[str, Path, Path]) -> None:
    """Proves each payload is real: an unrestricted torch.load runs it (the only full unpickle anywhere)."""
    name, path, marker = payload
    with contextlib.suppress(Exception):  # several payloads break the rest of the load after running
        torch.load(path, weights_only=False)
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"payload {name} is not live"


def test_salvage_load_neutralises_payload(payload: tuple[str, Path, Path]) -> None:
    name, path, marker = payload
    obj = salvage_load(path)
    _assert_not_executed(name, marker)
    assert set(find_placeholders(obj)) & dangerous_globals(name)
    if name not in NO_WEIGHTS:
        assert torch.equal(obj["state_dict"]["weight"], SAFE_WEIGHT)


def test_load_checkpoint_refuses_payload(payload: tuple[str, Path, Path]) -> None:
    from transferkit.checkpoint import load_checkpoint

    name, path, marker = payload
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    _assert_not_executed(name, marker)
    message = str(caught.value)
    assert str(path) in message or path.name in message


def test_load_checkpoint_salvage_neutralises_payload(payload: tuple[str, Path, Path]) -> None:
    from transferkit.checkpoint import load_checkpoint

    name, path, marker = payload
    try:
        obj = load_checkpoint(path, salvage=True)
    except CheckpointError as exc:
        assert str(exc)
    else:
        assert set(find_placeholders(obj)) & dangerous_globals(name)
    _assert_not_executed(name, marker)


def test_describe_unsafe_globals_names_payload(payload: tuple[str, Path, Path]) -> None:
    from transferkit.checkpoint import describe_unsafe_globals

    name, path, marker = payload
    try:
        found = describe_unsafe_globals(path)
    except CheckpointError:
        found = None
    _assert_not_executed(name, marker)
    if found is not None:
        assert set(found) & dangerous_globals(name), found


@pytest.mark.parametrize("salvage", [False, True], ids=["default", "salvage"])
def test_load_partial_never_executes_payload(payload: tuple[str, Path, Path], salvage: bool) -> None:
    from transferkit.partial import load_partial

    name, path, marker = payload
    model = nn.Linear(3, 2)
    try:
        report = load_partial(model, path, salvage=salvage)
    except TransferkitError as exc:
        assert str(exc)
        assert not salvage or name in NO_WEIGHTS, f"salvage should load the weights: {exc}"
    else:
        assert salvage, "the default mode must refuse a file that needs unsafe globals"
        assert sorted(report.loaded) == ["bias", "weight"]
        assert torch.equal(model.weight.detach(), SAFE_WEIGHT) and torch.equal(model.bias.detach(), SAFE_BIAS)
    _assert_not_executed(name, marker)


@pytest.mark.parametrize("salvage", [False, True], ids=["default", "salvage"])
def test_inspect_never_executes_payload(payload: tuple[str, Path, Path], salvage: bool) -> None:
    from transferkit.inspect import inspect_checkpoint

    name, path, marker = payload
    try:
        text = inspect_checkpoint(path, salvage=salvage)
    except TransferkitError as exc:
        assert str(exc)
    else:
        assert isinstance(text, str) and text
    _assert_not_executed(name, marker)


def test_payload_in_nested_zip_member_listing_is_not_confused(tmp_path: Path) -> None:
    """An archive with two data.pkl candidates: salvage reads the torch one and still runs nothing."""
    marker = tmp_path / "marker"
    path = PAYLOADS["os_system"](tmp_path / "a.pt", marker)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(
            "other/nested/data.pkl", b"\x80\x02" + op_call(op_global("os", "system"), op_str("x"))
        )
    obj = salvage_load(path)
    assert "os.system" in find_placeholders(obj) and not marker.exists()
