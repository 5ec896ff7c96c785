"""Faults during ``save_checkpoint``: the previous checkpoint must survive anything.

* Every file-system step of a save (open, temp-file creation, writes, fsync, replace, directory fsync,
  ``torch.save`` itself) is made to fail in turn with ``ENOSPC``, ``EACCES`` and a non-OS exception: the
  old checkpoint stays loadable and unchanged (or, for a failure after the replace, the new one is in
  place), no temporary file is left, and OS failures surface as ``CheckpointError`` saying what happened.
* A disk that fills up half-way through the data.
* ``KILLS`` saves killed with SIGKILL at random moments: the path always holds one complete version.
* Two processes saving different checkpoints to one path at once: every read and the final file are one
  complete checkpoint.
"""

from __future__ import annotations

import builtins
import errno
import io
import multiprocessing
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from faults_saver import check_version, make_state, save_versions

from transferkit.errors import CheckpointError

KILLS = 60
KILLS_SLOW = 300
KILL_NUMEL = 2_500_000  # a 10 MB weight: each save takes long enough to be killed in the middle


def _save(path: Path, version: int, numel: int = 1000) -> None:
    from transferkit.checkpoint import save_checkpoint

    save_checkpoint(
        path, model=make_state(version, numel), epoch=version, extra={"version": version}, rng=False
    )


def _version_at(path: Path, numel: int = 1000) -> int:
    from transferkit.checkpoint import load_checkpoint

    return check_version(load_checkpoint(path), numel)


# --- fault injection at every step --------------------------------------------------------------------------

# (module, attribute, how to tell whether a call concerns the checkpoint folder)
_PATH_CALLS = [(os, "open"), (os, "replace"), (os, "rename"), (builtins, "open"), (io, "open")]
_FD_CALLS = [(os, "fsync"), (os, "fdatasync"), (os, "fdopen"), (os, "write"), (os, "ftruncate")]
_OTHER_CALLS = [(tempfile, "mkstemp"), (tempfile, "NamedTemporaryFile"), (torch, "save")]


class Injector:
    """Counts the file-system steps of a save and makes step ``fail_at`` raise ``error``."""

    def __init__(self, folder: Path, fail_at: int | None = None, error: BaseException | None = None) -> None:
        self.folder, self.fail_at, self.error = str(folder), fail_at, error
        self.steps: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for module, name in _PATH_CALLS + _FD_CALLS + _OTHER_CALLS:
            if hasattr(module, name):
                monkeypatch.setattr(
                    module, name, self._wrap(f"{module.__name__}.{name}", getattr(module, name))
                )

    def _wrap(self, label: str, real: Callable[..., Any]) -> Callable[..., Any]:
        path_call = label in {f"{m.__name__}.{n}" for m, n in _PATH_CALLS}

        def step(*args: Any, **kwargs: Any) -> Any:
            mentioned = [str(a) for a in (*args, *kwargs.values()) if isinstance(a, str | os.PathLike)]
            if not path_call or any(m.startswith(self.folder) for m in mentioned):
                self.steps.append(label)
                if len(self.steps) - 1 == self.fail_at:
                    raise self.error
            return real(*args, **kwargs)

        return step


def _errors() -> dict[str, BaseException]:
    return {
        "ENOSPC": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        "EACCES": PermissionError(errno.EACCES, os.strerror(errno.EACCES)),
        "RuntimeError": RuntimeError("injected failure"),
    }


def _trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    folder = tmp_path / "trace"
    folder.mkdir()
    _save(folder / "ckpt.pt", 1)
    injector = Injector(folder)
    with monkeypatch.context() as patch:
        injector.install(patch)
        _save(folder / "ckpt.pt", 2)
    return injector.steps


def test_every_step_of_a_save_fails_safely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = _trace(tmp_path, monkeypatch)
    assert "torch.save" in steps or any("open" in s for s in steps), steps
    replaced_at = max((i for i, s in enumerate(steps) if s in ("os.replace", "os.rename")), default=None)
    assert replaced_at is not None, f"a save must end with os.replace; steps were {steps}"
    problems: list[str] = []
    for index, label in enumerate(steps):
        for kind, error in _errors().items():
            folder = tmp_path / f"step{index}_{kind}"
            folder.mkdir()
            path = folder / "ckpt.pt"
            _save(path, 1)
            injector = Injector(folder, index, error)
            raised: BaseException | None = None
            with monkeypatch.context() as patch:
                injector.install(patch)
                try:
                    _save(path, 2)
                except BaseException as exc:  # judged below
                    raised = exc
            where = f"{kind} at step {index} ({label})"
            if injector.steps[index : index + 1] != [label]:
                problems.append(f"{where}: the save took a different path: {injector.steps}")
                continue
            version = _version_at(path)  # must load, whatever happened
            leftovers = sorted(p.name for p in folder.iterdir() if p.name != "ckpt.pt")
            if leftovers:
                problems.append(f"{where}: files left behind {leftovers}")
            if index <= replaced_at:
                if raised is None:
                    problems.append(f"{where}: the failure was swallowed before the file was in place")
                elif version != 1:
                    problems.append(f"{where}: the old checkpoint was lost (found version {version})")
            elif version != 2:
                problems.append(f"{where}: after the replace the new checkpoint must be in place")
            if isinstance(error, OSError) and raised is not None:
                if not isinstance(raised, CheckpointError):
                    problems.append(f"{where}: raised a raw {type(raised).__name__}: {raised}")
                elif os.strerror(error.errno) not in str(raised) or "ckpt.pt" not in str(raised):
                    problems.append(f"{where}: the message must name the file and the error: {raised}")
    assert not problems, f"{len(problems)} problems over {len(steps)} steps x 3 faults:\n" + "\n".join(
        problems
    )


def test_disk_full_half_way_through_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pt"
    _save(path, 1)
    real_save = torch.save

    def save_until_full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(f, str | os.PathLike):
            Path(f).write_bytes(half)
        else:
            f.write(half)
            f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(CheckpointError) as caught:
        _save(path, 2)
    monkeypatch.undo()
    assert "No space left" in str(caught.value) and "ckpt.pt" in str(caught.value)
    assert _version_at(path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_permission_denied_on_a_read_only_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions; EACCES is covered by injection above")
    path = tmp_path / "ckpt.pt"
    _save(path, 1)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="ermission"):
            _save(path, 2)
    finally:
        tmp_path.chmod(0o755)
    assert _version_at(path) == 1 and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_failed_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(CheckpointError):
        _save(tmp_path / "ckpt.pt", 1)
    assert list(tmp_path.iterdir()) == []


# --- SIGKILL at random moments ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.BaseContext:
    """Children fork from a server that imported torch once, so each of the many kills costs milliseconds."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transferkit.checkpoint", "faults_saver"])
    return context


def _is_recognisable_temp(name: str, final: str) -> bool:
    """A leftover of a killed save must be a hidden ``.<name>.tmp-<random>`` (checkpoint.py's naming)."""
    return re.fullmatch(rf"\.{re.escape(final)}\.tmp-\w+", name) is not None


def _kill_loop(tmp_path: Path, context: Any, kills: int) -> dict[str, int]:
    path = tmp_path / "ckpt.pt"
    _save(path, 0, KILL_NUMEL)
    start = time.perf_counter()
    _save(path, 0, KILL_NUMEL)  # timed: kills are spread over about two and a half saves
    save_seconds = time.perf_counter() - start
    started, done = context.Value("q", 0, lock=False), context.Value("q", 0, lock=False)
    rng = random.Random(7)
    current = highest = 0  # the version in the file; the highest version any child started
    stats = {"kills": 0, "mid_save": 0, "changed": 0}
    for run in range(kills):
        first = highest + 1  # every child writes versions never written before
        started.value = done.value = current
        child = context.Process(target=save_versions, args=(str(path), first, 0, KILL_NUMEL, started, done))
        child.start()
        deadline = time.monotonic() + 30
        while started.value < first and time.monotonic() < deadline:
            time.sleep(0.001)
        assert started.value >= first, "the saving child never started"
        time.sleep(rng.uniform(0, 2.5 * save_seconds))
        child.kill()  # SIGKILL
        child.join()
        assert child.exitcode == -9, f"run {run}: the child ended with {child.exitcode} before the kill"
        in_flight, completed = started.value, done.value
        found = _version_at(path, KILL_NUMEL)  # loads, and is exactly one version
        # Old = the last save that returned; new = the one being written when the kill came.
        assert found in (completed, in_flight), (
            f"run {run}: file holds version {found}; last completed {completed}, in flight {in_flight}"
        )
        stats["kills"] += 1
        stats["mid_save"] += in_flight != completed
        stats["changed"] += found != current
        current, highest = found, in_flight
        leftovers = [p for p in tmp_path.iterdir() if p.name != "ckpt.pt"]
        assert all(_is_recognisable_temp(p.name, "ckpt.pt") for p in leftovers), leftovers
        for leftover in leftovers:  # 10 MB each: do not let them pile up in pytest's kept tmp folders
            leftover.unlink()
    return stats


def test_sigkill_during_saves_always_leaves_one_complete_checkpoint(tmp_path: Path, forkserver: Any) -> None:
    stats = _kill_loop(tmp_path, forkserver, KILLS)
    assert stats["kills"] == KILLS
    # The random moments must really hit saves in progress, or the test proves nothing.
    assert stats["mid_save"] >= KILLS // 2, stats


@pytest.mark.slow
def test_sigkill_many_more_times(tmp_path: Path, forkserver: Any) -> None:
    stats = _kill_loop(tmp_path, forkserver, KILLS_SLOW)
    assert stats["kills"] == KILLS_SLOW and stats["mid_save"] >= KILLS_SLOW // 2, stats


# --- two writers at once ------------------------------------------------------------------------------------


def test_a_load_racing_a_save_reads_one_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic form of the race below: the file is replaced while a load is half-way through.

    ``torch.load(path, mmap=True)`` opens the path twice (the zip reader, then ``UntypedStorage.from_file``
    for the data); a save landing between the two must not give one file's metadata with the other's
    tensors.
    """
    from transferkit.checkpoint import load_checkpoint

    path = tmp_path / "ckpt.pt"
    _save(path, 1)
    real_from_file = torch.UntypedStorage.from_file
    swapped: list[bool] = []

    def from_file_after_a_save(*args: Any, **kwargs: Any) -> Any:
        if not swapped:
            swapped.append(True)
            _save(path, 2)  # another process's save lands right now
        return real_from_file(*args, **kwargs)

    monkeypatch.setattr(torch.UntypedStorage, "from_file", from_file_after_a_save)
    version = check_version(load_checkpoint(path), 1000)  # raises AssertionError on a mix of two files
    assert version in (1, 2)


def test_two_processes_saving_to_one_path(tmp_path: Path, forkserver: Any) -> None:
    from transferkit.checkpoint import load_checkpoint

    path = tmp_path / "ckpt.pt"
    numel, saves = 500_000, 12
    _save(path, 0, numel)
    writers = []
    shared = []  # the shared counters must outlive the children's start
    gate = forkserver.Value("q", 0)  # both writers begin saving together
    for first in (1000, 2000):
        started, done = forkserver.Value("q", 0, lock=False), forkserver.Value("q", 0, lock=False)
        shared.append((started, done))
        writers.append(
            forkserver.Process(
                target=save_versions, args=(str(path), first, saves, numel, started, done, gate, 2)
            )
        )
    for writer in writers:
        writer.start()
    reads = set()
    overlapped = False  # both writers seen in the middle of a save at the same moment
    while any(w.is_alive() for w in writers):
        overlapped = overlapped or all(started.value != done.value for started, done in shared)
        reads.add(check_version(load_checkpoint(path), numel))  # every read is one complete checkpoint
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert reads, "no read happened while the writers ran"
    assert overlapped, "the two writers never saved at the same time; the race was not exercised"
    # Each writer saves in order, so the last replace of all is one writer's last save.
    assert _version_at(path, numel) in (1000 + saves - 1, 2000 + saves - 1)
    assert reads <= {0} | set(range(1000, 1000 + saves)) | set(range(2000, 2000 + saves))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ckpt.pt"]
    assert leftovers == [], f"temporary files left by completed saves: {leftovers}"
