"""Tests for transferkit/checkpoint.py: safe reading, atomic writing, complete training states.

Mirrors issue 2's checkpoint section: a full training state (two models, two optimizers, schedulers,
grad scaler, RNG) resumes bitwise identically in the same process and in a fresh one; a save killed
with SIGKILL leaves the old checkpoint loadable; a malicious pickle is refused without running; every
real third-party fixture loads (CUDA-saved ones onto the CPU); bad files raise CheckpointError naming
the path; weights are found inside the usual containers, and several candidates ask for ``key=``.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from checkpoint_training import build, checkpoint_kwargs, parameters, train
from torch import nn

from transferkit.checkpoint import (
    FORMAT,
    atomic_write,
    capture_rng_state,
    describe_unsafe_globals,
    extract_state_dict,
    load_checkpoint,
    restore_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_weights,
    snapshot_state,
)
from transferkit.errors import CheckpointError, ConfigError, UnsafeCheckpointError

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR), env.get("PYTHONPATH", "")])
    return env


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"not bitwise identical: {different}"


# --- full training state ------------------------------------------------------------------------------------


@pytest.fixture
def trained_checkpoint(tmp_path: Path) -> tuple[Path, Any]:
    """A state trained 5 steps and saved; returns the path and the live state (still at step 5)."""
    state = build(seed=0)
    random.seed(1)
    np.random.seed(2)
    train(state, 5)
    path = save_checkpoint(
        tmp_path / "run" / "last.pt",
        **checkpoint_kwargs(state),
        epoch=4,
        step=5,
        metrics={"loss": 0.25, "best_acc": np.float64(0.875)},
        extra={"freeze_schedule": {"thawed": ["head"], "epoch": 4}},
        meta={"backbone": "tiny-gan", "num_classes": 2, "class_names": ["fake", "real"]},
    )
    return path, state


def test_training_state_round_trip_continues_bitwise(trained_checkpoint: tuple[Path, Any]) -> None:
    path, state = trained_checkpoint
    expected_losses = train(state, 6)  # the uninterrupted run
    expected = parameters(state)

    for _ in range(3):  # disturb every RNG: the restore must undo this
        random.random(), np.random.rand(), torch.rand(1)
    fresh = build(seed=99)
    ckpt = restore_checkpoint(path, **checkpoint_kwargs(fresh))
    assert ckpt["epoch"] == 4 and ckpt["step"] == 5
    assert fresh.scaler.get_scale() == state.scaler.get_scale() / 2 ** (6 // 2)  # grew every 2 steps since
    assert train(fresh, 6) == expected_losses
    _assert_same(parameters(fresh), expected)
    assert fresh.schedulers["G"].last_epoch == state.schedulers["G"].last_epoch == 11


def test_resume_in_a_fresh_process_continues_bitwise(
    trained_checkpoint: tuple[Path, Any], tmp_path: Path
) -> None:
    path, state = trained_checkpoint
    expected_losses = train(state, 4)
    out = tmp_path / "child.safetensors"
    child = subprocess.run(
        [sys.executable, str(TESTS_DIR / "checkpoint_training.py"), str(path), "4", str(out)],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        losses = json.loads(f.metadata()["losses"])
    assert losses == expected_losses
    _assert_same(load_checkpoint(out), parameters(state))


def test_checkpoint_layout_is_plain_and_weights_only_loadable(trained_checkpoint: tuple[Path, Any]) -> None:
    path, _ = trained_checkpoint
    raw = torch.load(path, weights_only=True)  # no transferkit needed to read it back
    assert raw["format"] == FORMAT
    assert set(raw) >= {"models", "optimizers", "schedulers", "scaler", "epoch", "step", "metrics", "rng"}
    assert sorted(raw["models"]) == sorted(raw["optimizers"]) == sorted(raw["schedulers"]) == ["D", "G"]
    assert raw["metrics"] == {"loss": 0.25, "best_acc": 0.875}
    assert type(raw["metrics"]["best_acc"]) is float  # the numpy scalar was made plain
    assert raw["extra"]["freeze_schedule"]["thawed"] == ["head"]
    meta = raw["meta"]
    assert meta["torch_version"] == torch.__version__ and meta["transferkit_version"]
    assert meta["created"].endswith("+00:00")  # ISO time in UTC
    assert meta["class_names"] == ["fake", "real"] and meta["num_classes"] == 2
    assert set(raw["rng"]) == {"python", "numpy", "torch", "cuda"}
    leftovers = [p.name for p in path.parent.iterdir() if p.name != path.name]
    assert leftovers == []


def test_single_objects_are_stored_under_default_names(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    path = save_checkpoint(
        tmp_path / "c.pt", model=nn.DataParallel(model), optimizer=optimizer, scheduler=scheduler
    )
    ckpt = load_checkpoint(path)
    assert list(ckpt["models"]) == ["model"] and list(ckpt["optimizers"]) == ["optimizer"]
    assert sorted(ckpt["models"]["model"]) == ["bias", "weight"]  # the DataParallel wrapper is unwrapped
    assert list(ckpt["schedulers"]) == ["scheduler"]
    assert extract_state_dict(ckpt, return_key=True)[1] == "models.model"


def test_rng_states_restore_every_stream() -> None:
    saved = capture_rng_state()
    first = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    restore_rng_state(saved)
    again = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


class _FakeCuda:
    """Stands in for ``torch.cuda`` on a machine with ``count`` GPUs, each with its own RNG state."""

    def __init__(self, count: int) -> None:
        self.states = [torch.full((16,), i + 1, dtype=torch.uint8) for i in range(count)]
        self.restored: list[tuple[int, list[int]]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(
            torch.cuda, "set_rng_state", lambda state, device: self.restored.append((device, state.tolist()))
        )


def test_rng_state_of_every_cuda_device_is_saved_and_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The CUDA branch runs here without a GPU: torch.cuda is replaced by a fake with three devices."""
    three = _FakeCuda(3)
    with monkeypatch.context() as patch:
        three.install(patch)
        path = save_checkpoint(tmp_path / "c.pt", model=nn.Linear(2, 2))
    saved = torch.load(path, weights_only=True)["rng"]["cuda"]
    assert [s.tolist() for s in saved] == [s.tolist() for s in three.states]  # one state per device

    with monkeypatch.context() as patch:
        three.install(patch)
        restore_checkpoint(path, model=nn.Linear(2, 2))
    assert three.restored == [(i, s.tolist()) for i, s in enumerate(three.states)]

    one = _FakeCuda(1)  # resuming on a machine with fewer GPUs: restore what fits, and say so
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="transferkit.checkpoint"):
        one.install(patch)
        restore_checkpoint(path, model=nn.Linear(2, 2))
    assert one.restored == [(0, three.states[0].tolist())]
    assert "3 device(s), this machine has 1" in caplog.text


def test_restore_checks_names_and_shapes(trained_checkpoint: tuple[Path, Any], tmp_path: Path) -> None:
    path, _ = trained_checkpoint
    with pytest.raises(CheckpointError, match=r"no model named 'H'.*G, D"):
        restore_checkpoint(path, models={"H": nn.Linear(1, 1)})
    with pytest.raises(CheckpointError, match=r"cannot restore model 'G'.*size mismatch"):
        restore_checkpoint(path, models={"G": nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 6))})
    plain = tmp_path / "plain.pt"
    torch.save(nn.Linear(2, 2).state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a transferkit training checkpoint"):
        restore_checkpoint(plain, model=nn.Linear(2, 2))


def test_restore_checks_every_name_before_loading_anything(trained_checkpoint: tuple[Path, Any]) -> None:
    path, _ = trained_checkpoint
    fresh = build(seed=7)
    before = parameters(fresh)
    with pytest.raises(CheckpointError, match="no optimizer named 'X'"):
        restore_checkpoint(path, models=fresh.models, optimizers={"X": fresh.optimizers["G"]})
    _assert_same(parameters(fresh), before)  # the models were not half-restored


_SCHEDULERS = {
    "onecycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10),
    "lambda": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda epoch: 0.9**epoch),
    "plateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o),
    "warm-restarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 5),
    "sequential": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.LinearLR(o), torch.optim.lr_scheduler.StepLR(o, 2)], milestones=[3]
    ),
}


@pytest.mark.parametrize("kind", sorted(_SCHEDULERS))
def test_builtin_schedulers_round_trip(tmp_path: Path, kind: str) -> None:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = _SCHEDULERS[kind](optimizer)
    for _ in range(3):
        optimizer.step()
        scheduler.step(1.0) if kind == "plateau" else scheduler.step()
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=optimizer, scheduler=scheduler)
    other = _SCHEDULERS[kind](torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9))
    restore_checkpoint(path, scheduler=other)
    assert other.state_dict().keys() == scheduler.state_dict().keys()
    assert getattr(other, "last_epoch", None) == getattr(scheduler, "last_epoch", None)


def test_unstorable_extra_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=nn.Linear(2, 2), epoch=1)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"extra.*weights_only"):
        save_checkpoint(path, model=nn.Linear(2, 2), extra={"fn": lambda x: x})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# --- atomic writes ------------------------------------------------------------------------------------------

_BIG_SAVER = """
import sys, torch
from transferkit.checkpoint import save_checkpoint
big = torch.full((int(sys.argv[2]),), 2.0)
print("saving", flush=True)
save_checkpoint(sys.argv[1], model={"big": big}, epoch=2, rng=False)
print("saved", flush=True)
"""


def test_sigkill_in_the_middle_of_a_large_save_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    numel = 30_000_000  # 120 MB: the save takes long enough to be killed in the middle
    save_checkpoint(path, model={"big": torch.full((numel,), 1.0)}, epoch=1, rng=False)
    old_size = path.stat().st_size
    killed_mid_save = False
    for _attempt in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _BIG_SAVER, str(path), str(numel)],
            env=_child_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "saving"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # kill once the temporary file has data in it
                temps = [p for p in tmp_path.glob(".ckpt.pt.tmp-*") if p.stat().st_size > 1_000_000]
                if temps or child.poll() is not None:
                    break
                time.sleep(0.002)
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait()
        assert child.returncode == -signal.SIGKILL
        leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "ckpt.pt")
        assert all(name.startswith(".ckpt.pt.tmp-") for name in leftovers), leftovers
        ckpt = load_checkpoint(path)  # the path always holds one complete checkpoint
        if leftovers:  # killed before the replace: the old checkpoint, untouched
            assert ckpt["epoch"] == 1 and path.stat().st_size == old_size
            assert torch.equal(ckpt["models"]["model"]["big"][-5:], torch.ones(5))
            killed_mid_save = True
            break
        assert ckpt["epoch"] == 2  # the save finished before the kill: try again
        path.unlink()
        save_checkpoint(path, model={"big": torch.full((numel,), 1.0)}, epoch=1, rng=False)
    assert killed_mid_save, "the kill never landed in the middle of a save"


def test_exception_during_save_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model=nn.Linear(2, 2), epoch=1)

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match=r"ckpt\.pt.*disk is full"):
        save_checkpoint(path, model=nn.Linear(2, 2), epoch=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_atomic_write_replaces_whole_files_only(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "notes.txt"  # the folder is created
    with atomic_write(path) as f:
        f.write(b"first")
    path.chmod(0o640)
    with pytest.raises(ValueError, match="mid-write"), atomic_write(path) as f:
        f.write(b"half")
        raise ValueError("mid-write")
    assert path.read_bytes() == b"first" and os.listdir(path.parent) == ["notes.txt"]
    with atomic_write(path) as f:
        f.write(b"second")
    assert path.read_bytes() == b"second"
    assert path.stat().st_mode & 0o777 == 0o640  # the old file's permissions are kept


def test_saving_over_a_symlink_writes_through_it(tmp_path: Path) -> None:
    target = save_checkpoint(tmp_path / "epoch_1.pt", model=nn.Linear(2, 2), epoch=1)
    link = tmp_path / "last.pt"
    link.symlink_to(target.name)
    save_checkpoint(link, model=nn.Linear(2, 2), epoch=2)
    assert link.is_symlink() and load_checkpoint(target)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pt", "last.pt"]


def test_a_disabled_grad_scaler_round_trips(tmp_path: Path) -> None:
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    path = save_checkpoint(tmp_path / "c.pt", model=nn.Linear(2, 2), scaler=scaler)
    ckpt = load_checkpoint(path)
    assert ckpt["scaler"] == {}
    restore_checkpoint(ckpt, model=nn.Linear(2, 2), scaler=torch.amp.GradScaler("cpu", enabled=False))


# --- safety -------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["zip", "legacy", "pickle4"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, layout: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = {"state_dict": {"w": torch.ones(2)}, "payload": _Payload(marker)}
    if layout == "pickle4":
        path.write_bytes(pickle.dumps(obj, protocol=4))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=layout == "zip")
    system = f"{os.system.__module__}.system"  # posix.system
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint(path)
    assert system in caught.value.globals
    message = str(caught.value)
    assert str(path) in message and system in message
    # a dangerous global: the refusal says so and never offers trusted=True or an allow-list
    assert "DANGEROUS" in message and "runs a process" in message and "salvage=True" in message
    assert "pass trusted=True" not in message and "safe_globals=[" not in message
    assert system in describe_unsafe_globals(path)
    time.sleep(0.05)
    assert not marker.exists(), "the payload ran"


def test_whole_model_pickle_loads_only_when_trusted(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    model = nn.Sequential(nn.Linear(3, 2))
    torch.save(model, path)
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.container.Sequential") as caught:
        load_checkpoint(path)
    assert "trusted=True" in str(caught.value)
    loaded = load_checkpoint(path, trusted=True)
    assert isinstance(loaded, nn.Sequential)
    _assert_same(dict(extract_state_dict(loaded)), dict(model.state_dict()))
    with pytest.raises(ConfigError, match="trusted=True"):
        load_checkpoint(path, weights_only=False)


def test_trusted_load_names_the_missing_package_or_class(tmp_path: Path, monkeypatch) -> None:
    """A full unpickle that cannot import what the file pickled says what to install, not "damaged"."""
    (tmp_path / "tk_gone_pkg.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import tk_gone_pkg

    path = tmp_path / "obj.pt"
    torch.save({"thing": tk_gone_pkg.Thing(), "w": torch.ones(2)}, path)
    monkeypatch.delattr(tk_gone_pkg, "Thing")  # the class is gone from its module
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, trusted=True)
    message = str(caught.value)
    assert "needs the class tk_gone_pkg.Thing importable" in message and "salvage=True" in message
    assert "damaged" not in message

    monkeypatch.delitem(sys.modules, "tk_gone_pkg")
    (tmp_path / "tk_gone_pkg.py").unlink()  # the module is not installed at all
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, trusted=True)
    message = str(caught.value)
    assert "needs the package 'tk_gone_pkg' installed" in message and "salvage=True" in message
    assert "damaged" not in message
    assert torch.equal(load_checkpoint(path, salvage=True)["w"], torch.ones(2))


def test_trusted_load_of_the_lightning_file_without_lightning_names_the_package(fixtures_dir: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("pytorch_lightning") is not None:
        pytest.skip("pytorch_lightning is installed here: the file's classes import")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(fixtures_dir / "lightning11_mnist_mlp_unsafe.ckpt", trusted=True)
    message = str(caught.value)
    assert "needs the package 'pytorch_lightning' installed" in message and "salvage=True" in message


Tag = collections.namedtuple("Tag", "name")


def test_safe_globals_allow_list(tmp_path: Path) -> None:
    path = tmp_path / "tagged.pt"
    torch.save({"tag": Tag("x"), "w": torch.zeros(1)}, path)
    name = f"{Tag.__module__}.Tag"
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint(path)
    assert caught.value.globals == [name]
    assert load_checkpoint(path, safe_globals=[Tag])["tag"] == Tag("x")
    assert describe_unsafe_globals(path, allowed=[Tag]) == []


# --- the real third-party fixtures --------------------------------------------------------------------------

FIXTURE_TENSORS = {
    "cifar10_resnet20_dataparallel.th": ("state_dict", 97),
    "cifar10_resnet56_dataparallel.th": ("state_dict", 277),
    "cifar10_smallvgg_with_optimizer.pth.tar": ("state_dict", 23),
    "tv_squeezenet1_0_corn4.pth": (None, 52),
    "timm_mobilenetv3_small_050_seedlings12.pth": (None, 244),
    "mnist_lenet5.pth": (None, 10),
    "lightning25_mnist_cnn.ckpt": ("state_dict", 8),
    "mnist_tinycnn.safetensors": (None, 23),
}


@pytest.mark.parametrize("name", sorted(FIXTURE_TENSORS))
def test_every_fixture_loads_onto_the_cpu(fixtures_dir: Path, name: str) -> None:
    key, count = FIXTURE_TENSORS[name]
    state, where = extract_state_dict(load_checkpoint(fixtures_dir / name), return_key=True)
    assert (where, len(state)) == (key, count)
    assert {t.device.type for t in state.values()} == {"cpu"}
    assert describe_unsafe_globals(fixtures_dir / name) == []


def test_fixture_details(fixtures_dir: Path) -> None:
    resnet = load_checkpoint(fixtures_dir / "cifar10_resnet20_dataparallel.th")
    assert resnet["best_prec1"] == pytest.approx(91.78, abs=0.01)
    assert all(k.startswith("module.") for k in resnet["state_dict"])
    vgg = load_checkpoint(fixtures_dir / "cifar10_smallvgg_with_optimizer.pth.tar")
    assert vgg["epoch"] == 18 and "momentum_buffer" in next(iter(vgg["optimizer"]["state"].values()))


def test_fixtures_load_strictly_into_their_architectures(fixtures_dir: Path) -> None:
    import timm
    import torchvision

    squeeze = torchvision.models.squeezenet1_0(num_classes=4)
    squeeze.load_state_dict(extract_state_dict(load_checkpoint(fixtures_dir / "tv_squeezenet1_0_corn4.pth")))
    mobile = timm.create_model("mobilenetv3_small_050", num_classes=12, pretrained=False)
    path = fixtures_dir / "timm_mobilenetv3_small_050_seedlings12.pth"
    mobile.load_state_dict(extract_state_dict(load_checkpoint(path)))


def test_unsafe_lightning_file_is_refused_naming_its_globals(fixtures_dir: Path) -> None:
    path = fixtures_dir / "lightning11_mnist_mlp_unsafe.ckpt"
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint(path)
    expected = {
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "__main__.Backbone",
        "torch.nn.modules.linear.Linear",
    }
    assert set(caught.value.globals) == expected
    assert all(name in str(caught.value) for name in expected)
    assert set(describe_unsafe_globals(path)) == expected
    salvaged = extract_state_dict(load_checkpoint(path, salvage=True))  # the tensors, without running code
    assert sorted(salvaged) == [
        "backbone.l1.bias",
        "backbone.l1.weight",
        "backbone.l2.bias",
        "backbone.l2.weight",
    ]


def _record_locations(seen: list[str]) -> Any:
    def location(storage: Any, where: str) -> Any:
        seen.append(where)
        return storage

    return location


@pytest.mark.parametrize("mmap", [None, True, False])
@pytest.mark.parametrize(
    "map_location",
    ["cpu", torch.device("cpu"), {"cuda:0": "cpu"}, "callable"],
    ids=["str", "device", "dict", "fn"],
)
@pytest.mark.parametrize(
    "name", ["cifar10_smallvgg_with_optimizer.pth.tar", "cifar10_resnet20_dataparallel.th"]
)
def test_map_location_forms_bring_cuda_files_to_the_cpu(
    fixtures_dir: Path, name: str, map_location: Any, mmap: bool | None
) -> None:
    seen: list[str] = []
    where = _record_locations(seen) if map_location == "callable" else map_location
    if torch.cuda.is_available() and isinstance(where, dict):
        where = {"cuda:0": "cpu"}
    state = extract_state_dict(load_checkpoint(fixtures_dir / name, map_location=where, mmap=mmap))
    assert {t.device.type for t in state.values()} == {"cpu"}
    if map_location == "callable":
        assert any(s.startswith("cuda") for s in seen)  # it saw the saved locations


@pytest.mark.gpu
def test_loading_onto_a_gpu(fixtures_dir: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    state = extract_state_dict(load_checkpoint(fixtures_dir / "mnist_lenet5.pth", map_location="cuda"))
    assert {t.device.type for t in state.values()} == {"cuda"}
    path = save_weights(tmp_path / "w.safetensors", nn.Linear(2, 2))
    assert load_checkpoint(path, map_location="cuda:0")["weight"].device.type == "cuda"
    cpu_saved = tmp_path / "cpu.pt"
    torch.save({"w": torch.ones(2)}, cpu_saved)
    assert load_checkpoint(cpu_saved, map_location=torch.device("cuda", 0))["w"].is_cuda


# Every suffix people use, in both torch layouts: the format is read from the content, never the name.
_SUFFIXES = [".pt", ".pth", ".pth.tar", ".th", ".bin", ".ckpt"]


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("suffix", _SUFFIXES)
def test_every_suffix_in_both_torch_layouts(tmp_path: Path, suffix: str, layout: str) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    weights = dict(model.state_dict())
    path = tmp_path / f"model{suffix}"
    wrapped = {"epoch": 3, "state_dict": weights} if suffix in (".pth.tar", ".ckpt") else weights
    torch.save(wrapped, path, _use_new_zipfile_serialization=layout == "zip")
    assert zipfile.is_zipfile(path) == (layout == "zip")
    state, where = extract_state_dict(load_checkpoint(path), return_key=True)
    assert where == ("state_dict" if wrapped is not weights else None)
    _assert_same(dict(state), weights)
    _assert_same(dict(extract_state_dict(load_checkpoint(path, salvage=True))), weights)


@pytest.mark.parametrize(
    "map_location",
    ["cpu", torch.device("cpu"), {"cpu": "cpu"}, "callable", None],
    ids=["str", "device", "dict", "fn", "none"],
)
def test_safetensors_files_take_every_map_location_form(tmp_path: Path, map_location: Any) -> None:
    from safetensors.torch import save_file

    weights = {"conv.weight": torch.randn(2, 1, 3, 3), "conv.bias": torch.randn(2)}
    path = tmp_path / "model.safetensors"
    save_file(weights, str(path))  # written by the safetensors library itself, not by transferkit
    seen: list[str] = []
    where = _record_locations(seen) if map_location == "callable" else map_location
    loaded = load_checkpoint(path, map_location=where)
    _assert_same(dict(extract_state_dict(loaded)), weights)
    assert {t.device.type for t in loaded.values()} == {"cpu"}
    assert seen == (["cpu", "cpu"] if map_location == "callable" else [])


# --- weights, snapshots -------------------------------------------------------------------------------------


def test_save_weights_safetensors_round_trip_with_tied_weights(tmp_path: Path) -> None:
    embed = nn.Embedding(5, 3)
    head = nn.Linear(3, 5, bias=False)
    head.weight = embed.weight  # tied, as in language models
    model = nn.ModuleDict({"embed": embed, "head": head})
    path = save_weights(tmp_path / "m.safetensors", model, metadata={"num_classes": 5, "backbone": "tiny"})
    loaded = load_checkpoint(path)
    _assert_same(loaded, {k: v.detach() for k, v in model.state_dict().items()})
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"num_classes": "5", "backbone": "tiny"}
    torch_path = save_weights(tmp_path / "m.pt", model, metadata={"backbone": "tiny"})
    assert extract_state_dict(load_checkpoint(torch_path), return_key=True)[1] == "state_dict"
    assert sorted(load_checkpoint(save_weights(tmp_path / "plain.pt", model))) == sorted(model.state_dict())


def test_snapshot_does_not_move_with_training_but_state_dict_does() -> None:
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    shallow = model.state_dict()  # the pitfall: these tensors share memory with the parameters
    best = snapshot_state(model)
    before = model.weight.detach().clone()
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    assert not torch.equal(model.weight, before)
    assert torch.equal(shallow["weight"], model.weight)  # moved along with training
    assert torch.equal(best["weight"], before)  # kept the best-so-far values
    assert snapshot_state(shallow)["weight"].data_ptr() != model.weight.data_ptr()


# --- finding the weights ------------------------------------------------------------------------------------

_NESTED_KEYS = [
    "state_dict",
    "model",
    "model_state_dict",
    "net",
    "network",
    "ema",
    "model_ema",
    "state_dict_ema",
    "module",
    "weights",
    "params",
]


@pytest.mark.parametrize("key", _NESTED_KEYS)
def test_weights_are_found_under_the_usual_keys(key: str, caplog: pytest.LogCaptureFixture) -> None:
    weights = {"fc.weight": torch.ones(2, 2), "fc.bias": torch.zeros(2)}
    ckpt = {"epoch": 3, key: weights, "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}}}
    with caplog.at_level(logging.INFO, logger="transferkit.checkpoint"):
        state, where = extract_state_dict(ckpt, return_key=True)
    assert state is weights and where == key
    assert f"at {key}" in caplog.text


def test_raw_weights_win_over_ema_and_plain_dicts_are_themselves() -> None:
    raw, ema = {"w": torch.ones(1)}, {"w": torch.zeros(1)}
    assert extract_state_dict({"state_dict": raw, "state_dict_ema": ema}) is raw
    assert extract_state_dict({"state_dict": raw, "state_dict_ema": ema}, key="state_dict_ema") is ema
    assert extract_state_dict(raw, return_key=True) == (raw, None)
    assert (
        extract_state_dict({"checkpoint": {"weights_v2": raw}}, return_key=True)[1] == "checkpoint.weights_v2"
    )


@pytest.mark.parametrize(
    ("ckpt", "listed"),
    [
        (
            {"modelA": {"w": torch.ones(1)}, "modelB": {"w": torch.ones(1)}, "optimizerA": {}},
            ["modelA", "modelB"],
        ),
        ({"G": {"w": torch.ones(1)}, "D": {"v": torch.ones(1)}, "epoch": 1}, ["G", "D"]),
        (
            {"format": FORMAT, "models": {"G": {"w": torch.ones(1)}, "D": {"w": torch.ones(1)}}},
            ["models.G", "models.D"],
        ),
    ],
    ids=["modelA-modelB", "G-D", "transferkit-two-models"],
)
def test_several_candidates_ask_for_a_key(ckpt: dict, listed: list[str]) -> None:
    with pytest.raises(CheckpointError, match="key=") as caught:
        extract_state_dict(ckpt)
    assert all(name in str(caught.value) for name in listed)
    state, where = extract_state_dict(ckpt, key=listed[1], return_key=True)
    assert where == listed[1] and state is _walk(ckpt, listed[1])


def _walk(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[part]
    return obj


def test_dotted_key_paths() -> None:
    inner = {"conv.weight": torch.ones(1)}
    ckpt = {"run": {"module.backbone": {"ema": inner}}, "lists": [{}, inner]}
    assert extract_state_dict(ckpt, key="run.module.backbone.ema") is inner  # a part may contain dots
    assert extract_state_dict(ckpt, key="run.module.backbone") is inner  # then searched below
    assert extract_state_dict(ckpt, key="lists.1") is inner
    with pytest.raises(CheckpointError, match=r"no 'missing' at run.*module\.backbone"):
        extract_state_dict(ckpt, key="run.missing")


# --- bad files ----------------------------------------------------------------------------------------------


def _valid_zip(tmp: Path) -> bytes:
    torch.save({"w": torch.arange(1000.0)}, tmp / "src.pt")
    return (tmp / "src.pt").read_bytes()


def _valid_legacy(tmp: Path) -> bytes:
    torch.save({"w": torch.arange(1000.0)}, tmp / "src.pt", _use_new_zipfile_serialization=False)
    return (tmp / "src.pt").read_bytes()


def _other_zip(tmp: Path) -> bytes:
    with zipfile.ZipFile(tmp / "src.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    return (tmp / "src.zip").read_bytes()


def _safetensors(tmp: Path) -> bytes:
    return (save_weights(tmp / "src.safetensors", {"w": torch.arange(1000.0)})).read_bytes()


BAD_FILES = {
    "missing": (None, "no such file"),
    "directory": ("dir", "is a directory"),
    "empty": (lambda t: b"", "empty"),
    "truncated zip": (lambda t: _valid_zip(t)[:700], "truncated or damaged"),
    "zip missing its tail": (lambda t: _valid_zip(t)[:-30], "truncated or damaged"),
    "truncated legacy": (lambda t: _valid_legacy(t)[:300], "damaged|ends early"),
    "truncated safetensors": (lambda t: _safetensors(t)[:200], "truncated|safetensors"),
    "random bytes": (lambda t: bytes(random.Random(0).randrange(256) for _ in range(4096)), "not a PyTorch"),
    "zip that is not a checkpoint": (_other_zip, "not a PyTorch checkpoint"),
    "html page": (lambda t: b"<!DOCTYPE html><html>Not Found</html>", "HTML"),
    "git lfs pointer": (
        lambda t: b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n",
        "git lfs pull",
    ),
    "pickle of a string": (lambda t: pickle.dumps("hello", protocol=2), "damaged|not a checkpoint"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_checkpoint_error_naming_the_path(tmp_path: Path, case: str) -> None:
    make, problem = BAD_FILES[case]
    path = tmp_path / "model.pth"
    if make == "dir":
        path.mkdir()
    elif make is not None:
        path.write_bytes(make(tmp_path))
    for read in (load_checkpoint, lambda p: extract_state_dict(load_checkpoint(p))):
        with pytest.raises(CheckpointError) as caught:
            read(path)
        assert str(path) in str(caught.value)
        assert not isinstance(caught.value, UnsafeCheckpointError)
        assert caught.match(problem)
    try:  # it reports globals, not validity: a list or a CheckpointError, never a raw exception
        assert describe_unsafe_globals(path) == []
    except CheckpointError as exc:
        assert str(path) in str(exc)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_torchscript_archive_is_named(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match=r"scripted\.pt.*TorchScript.*torch\.jit\.load"):
        load_checkpoint(path)


def test_a_checkpoint_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "meta_only.pt"
    torch.save({"epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, path)
    with pytest.raises(CheckpointError, match=r"meta_only\.pt.*no model weights.*'epoch'"):
        extract_state_dict(load_checkpoint(path))
    torch.save(torch.ones(3), path)
    with pytest.raises(CheckpointError, match="single tensor"):
        extract_state_dict(load_checkpoint(path))


class _WithExtraState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.version = 0

    def get_extra_state(self) -> dict[str, int]:
        return {"version": self.version}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.version = state["version"]


def test_a_state_dict_with_extra_state_is_found(tmp_path: Path) -> None:
    """``get_extra_state`` puts a non-tensor ``_extra_state`` entry beside the tensors: still a state dict."""
    model = _WithExtraState()
    model.version = 7
    path = tmp_path / "extra.pt"
    torch.save(model.state_dict(), path)
    state = extract_state_dict(load_checkpoint(path))
    assert sorted(state) == ["_extra_state", "lin.bias", "lin.weight"]
    fresh = _WithExtraState()
    fresh.load_state_dict(state)
    assert fresh.version == 7 and torch.equal(fresh.lin.weight, model.lin.weight)


def test_whole_model_pickle_weights_come_out_through_salvage(tmp_path: Path) -> None:
    """``torch.save(model)`` needs ``trusted=True`` to unpickle, but salvage gets its weights without code."""
    from transferkit import extract_state_dict, load_checkpoint
    from transferkit.errors import UnsafeCheckpointError

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path)
    state = extract_state_dict(load_checkpoint(path, salvage=True))
    assert list(state) == list(model.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value), name


# ---------------------------------------------------------------------------------- adversarial API inputs


def test_failed_restore_writes_nothing(tmp_path: Path) -> None:
    """torch's load_state_dict copies what fits before raising; restore_checkpoint checks everything first."""
    src = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    path = save_checkpoint(tmp_path / "c.pt", model=src, optimizer=torch.optim.SGD(src.parameters(), lr=1))
    dst = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError, match="size mismatch for 1.weight.*Nothing was restored"):
        restore_checkpoint(path, model=dst)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())
    # the model fits but the optimizer does not: the model is not written either
    same = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    before = {k: v.clone() for k, v in same.state_dict().items()}
    groups = [{"params": list(same[0].parameters())}, {"params": list(same[1].parameters())}]
    with pytest.raises(CheckpointError, match="1 parameter group.*2 of sizes"):
        restore_checkpoint(path, model=same, optimizer=torch.optim.SGD(groups, lr=1))
    assert all(torch.equal(before[k], v) for k, v in same.state_dict().items())


def test_meta_device_models_are_refused_at_save_time(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="meta device"):
        save_checkpoint(tmp_path / "c.pt", model=model)
    with pytest.raises(ConfigError, match="meta device"):
        save_weights(tmp_path / "w.safetensors", model)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epoch": "three"}, "epoch must be an int"),
        ({"step": 2.5}, "step must be an int"),
        ({"metrics": [0.1]}, "metrics must be a dict"),
        ({"extra": "x"}, "extra must be a dict"),
    ],
)
def test_save_checkpoint_argument_types(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        save_checkpoint(tmp_path / "c.pt", model=nn.Linear(1, 1), **kwargs)


def test_numpy_integer_epoch_is_accepted(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", model=nn.Linear(1, 1), epoch=np.int64(3))
    assert load_checkpoint(path)["epoch"] == 3


def test_a_save_path_written_as_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="names a folder.*last.pt"):
        save_checkpoint(f"{tmp_path}/run/", model=nn.Linear(1, 1))
    with pytest.raises(ConfigError, match="names a folder"):
        save_weights(f"{tmp_path}/run/", nn.Linear(1, 1))
    assert not (tmp_path / "run").exists()
