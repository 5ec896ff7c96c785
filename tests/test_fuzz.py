"""Fuzzing every checkpoint reader with damaged files.

Seeds are the real fixtures and small self-made files (torch zip, legacy torch, safetensors, a
``save_checkpoint`` training file). Each case mutates a seed (bit flips, truncation, overwritten spans,
zip members dropped or renamed, huge declared sizes in zip headers and safetensors headers, a damaged
``data.pkl`` re-packed with a valid CRC so the unpickler itself is exercised) and runs it through every
reader: ``load_checkpoint`` (+ ``extract_state_dict``), ``load_checkpoint(salvage=True)``,
``salvage_load``, ``load_partial`` and ``inspect_checkpoint``. The only allowed outcomes are a normal return
or a ``TransferkitError`` with a non-empty message (naming the file when it is a ``CheckpointError``);
never another exception, and never longer than ``CASE_LIMIT_S`` per reader call.

The default run executes ``DEFAULT_CASES`` mutated files; ``-m slow`` runs ``SLOW_CASES`` more.
"""

from __future__ import annotations

import contextlib
import random
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from deadline import CaseTimeout, time_limit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from transferkit.errors import CheckpointError, TransferkitError

CASE_LIMIT_S = 10
FIXTURE_SEEDS = [
    "mnist_lenet5.pth",  # legacy
    "lightning25_mnist_cnn.ckpt",  # zip, Lightning 2.5
    "lightning11_mnist_mlp_unsafe.ckpt",  # zip needing unsafe globals
    "cifar10_smallvgg_with_optimizer.pth.tar",  # zip with optimizer state
    "mnist_tinycnn.safetensors",
]
SELF_SEEDS = ["zip", "legacy", "safetensors", "training"]
MUTATIONS_PER_SEED = {"default": 40, "slow": 400}
HYPOTHESIS_EXAMPLES = {"default": 60, "slow": 600}
HYPOTHESIS_TESTS = 3
DEFAULT_CASES = (len(FIXTURE_SEEDS) + len(SELF_SEEDS)) * MUTATIONS_PER_SEED["default"] + HYPOTHESIS_TESTS * (
    HYPOTHESIS_EXAMPLES["default"]
)
SLOW_CASES = (len(FIXTURE_SEEDS) + len(SELF_SEEDS)) * MUTATIONS_PER_SEED["slow"] + HYPOTHESIS_TESTS * (
    HYPOTHESIS_EXAMPLES["slow"]
)


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


# --- running one case ---------------------------------------------------------------------------------------


def _readers() -> dict[str, Callable[[Path], object]]:
    from transferkit.checkpoint import extract_state_dict, load_checkpoint
    from transferkit.inspect import inspect_checkpoint
    from transferkit.partial import load_partial
    from transferkit.salvage import salvage_load

    return {
        "load_checkpoint+extract_state_dict": lambda p: extract_state_dict(load_checkpoint(p)),
        "load_checkpoint(salvage=True)+extract_state_dict": lambda p: extract_state_dict(
            load_checkpoint(p, salvage=True)
        ),
        "salvage_load": salvage_load,
        "load_partial": lambda p: load_partial(tiny_model(), p),
        "inspect_checkpoint": inspect_checkpoint,
    }


@dataclass
class Tally:
    """What the cases did; ``failures`` holds one line per disallowed outcome."""

    cases: int = 0
    calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, path: Path, data: bytes, description: str) -> None:
        """Write ``data`` to ``path`` and run every reader on it."""
        path.write_bytes(data)
        self.read_all(path, description)
        path.unlink()

    def read_all(self, path: Path, description: str) -> None:
        self.cases += 1
        for name, read in _readers().items():
            self.calls += 1
            outcome = self._run(name, read, path, description)
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _run(self, name: str, read: Callable[[Path], object], path: Path, description: str) -> str:
        try:
            with time_limit(CASE_LIMIT_S):
                read(path)
        except CaseTimeout:
            self.failures.append(f"{name} hung (> {CASE_LIMIT_S} s) on {description}")
            return "hang"
        except TransferkitError as exc:
            message = str(exc)
            names_file = str(path) in message or path.name in message
            if not message.strip() or (isinstance(exc, CheckpointError) and not names_file):
                self.failures.append(f"{name}: unhelpful {type(exc).__name__}({message!r}) on {description}")
            return type(exc).__name__
        except Exception as exc:  # the point of the test: nothing else may escape
            self.failures.append(f"{name}: raw {type(exc).__name__}: {str(exc)[:160]} on {description}")
            return "raw " + type(exc).__name__
        return "ok"

    def assert_clean(self, minimum_cases: int) -> None:
        # Hypothesis may skip a duplicate example, so its runs promise a minimum; the rest are exact.
        assert self.cases >= minimum_cases
        distinct = sorted(set(self.failures))
        assert not distinct, f"{len(self.failures)} bad outcomes, e.g.:\n" + "\n".join(distinct[:15])


# --- seeds --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transferkit.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("fuzz_seeds")
    torch.manual_seed(0)
    model = tiny_model()
    state = model.state_dict()
    torch.save(state, folder / "zip.pt")
    torch.save(state, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "safetensors.safetensors")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    save_checkpoint(folder / "training.pt", model=model, optimizer=optimizer, epoch=1, step=10)
    return {p.stem: p for p in folder.iterdir()}


def _seed_path(name: str, self_seeds: dict[str, Path], fixtures_dir: Path | None) -> Path:
    if name in SELF_SEEDS:
        return self_seeds[name]
    assert fixtures_dir is not None
    return fixtures_dir / name


# --- mutations ----------------------------------------------------------------------------------------------


def flip_bits(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    positions = [rng.randrange(len(out) * 8) for _ in range(rng.randint(1, 8))]
    for bit in positions:
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out), f"bit flips at {positions}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.randrange(len(data))
    return data[:cut], f"truncated to {cut} of {len(data)} bytes"


def overwrite_span(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    start, size = rng.randrange(len(data)), rng.randint(1, 64)
    junk = bytes(rng.randrange(256) for _ in range(size))
    return data[:start] + junk + data[start + size :], f"{size} random bytes written at {start}"


def _rezip(data: bytes, edit: Callable[[str, bytes], tuple[str, bytes] | None]) -> bytes:
    """Rewrite a zip member by member with valid CRCs; ``edit`` may rename, change or drop a member."""
    import io

    source = zipfile.ZipFile(io.BytesIO(data))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            result = edit(info.filename, source.read(info))
            if result is not None:
                target.writestr(result[0], result[1])
    return buffer.getvalue()


def _members(data: bytes) -> list[str]:
    import io

    return zipfile.ZipFile(io.BytesIO(data)).namelist()


def zip_drop_member(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    victim = rng.choice(_members(data))
    return _rezip(data, lambda n, b: None if n == victim else (n, b)), f"zip member {victim} removed"


def zip_rename_member(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    victim = rng.choice(_members(data))
    new = victim + rng.choice(["x", ".bak", "/"]) if rng.random() < 0.7 else "other/" + victim
    return _rezip(
        data, lambda n, b: (new, b) if n == victim else (n, b)
    ), f"zip member {victim} renamed {new}"


def zip_damage_pickle(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Damage data.pkl and re-pack it with a valid CRC, so the unpickler (not the zip layer) meets it."""
    pickle_name = next(n for n in _members(data) if n.endswith("/data.pkl"))
    how: list[str] = []

    def edit(name: str, payload: bytes) -> tuple[str, bytes]:
        if name != pickle_name or not payload:
            return name, payload
        damaged, description = rng.choice([flip_bits, truncate, overwrite_span])(payload, rng)
        how.append(description)
        return name, damaged

    repacked = _rezip(data, edit)
    return repacked, f"data.pkl re-packed with a valid CRC after {how[0] if how else 'no change'}"


def zip_huge_size(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Declare a huge size for one member in its local header or the central directory."""
    out = bytearray(data)
    value = rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 10**9, len(data) * 1000])
    headers = [i for i in range(len(out) - 4) if out[i : i + 4] in (b"PK\x03\x04", b"PK\x01\x02")]
    if not headers:
        return flip_bits(data, rng)
    pos = rng.choice(headers)
    fields = (18, 22) if out[pos + 2] == 3 else (20, 24)  # (compressed, uncompressed) size offsets
    for offset in rng.sample(fields, rng.randint(1, 2)):
        out[pos + offset : pos + offset + 4] = struct.pack("<I", value)
    return bytes(out), f"zip header at {pos} declares size {value}"


def safetensors_huge_header(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    value = rng.choice([2**63 - 1, 2**40, len(data), len(data) - 7, 0, 1])
    return struct.pack("<Q", value) + data[8:], f"safetensors header length set to {value}"


def safetensors_huge_offsets(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + length].decode()
    starts = [i for i in range(len(header)) if header.startswith('"data_offsets":[', i)]
    at = rng.choice(starts) + len('"data_offsets":[')
    end = header.index("]", at)
    big = rng.choice(["18446744073709551615", "99999999999", f"{len(data)}", "5,3"])
    new = header[:at] + (big if "," in big else f"0,{big}") + header[end:]
    encoded = new.encode()
    return struct.pack("<Q", len(encoded)) + encoded + data[
        8 + length :
    ], f"safetensors offsets set to [{big}]"


GENERIC = [flip_bits, truncate, overwrite_span]
ZIP_ONLY = [zip_drop_member, zip_rename_member, zip_damage_pickle, zip_huge_size]
SAFETENSORS_ONLY = [safetensors_huge_header, safetensors_huge_offsets]


def mutations_for(data: bytes) -> list[Callable[[bytes, random.Random], tuple[bytes, str]]]:
    if data[:2] == b"PK":
        return GENERIC + ZIP_ONLY
    if data[8:9] == b"{":
        return GENERIC + SAFETENSORS_ONLY
    return GENERIC


def _mutation_run(seed: str, count: int, tmp_path: Path, self_seeds: dict[str, Path], fixtures: Path | None):
    source = _seed_path(seed, self_seeds, fixtures)
    data = source.read_bytes()
    kinds = mutations_for(data)
    rng = random.Random(f"{seed}-{count}")
    tally = Tally()
    for i in range(count):
        kind = kinds[i % len(kinds)]  # every kind runs; the rng picks where and how
        mutated, how = kind(data, rng)
        tally.check(tmp_path / f"case{i}{''.join(source.suffixes)}", mutated, f"{seed} case {i}: {how}")
    tally.assert_clean(count)
    return tally


@pytest.fixture
def fixtures_or_none(request: pytest.FixtureRequest, seed: str) -> Path | None:
    return request.getfixturevalue("fixtures_dir") if seed in FIXTURE_SEEDS else None


@pytest.mark.parametrize("seed", FIXTURE_SEEDS + SELF_SEEDS)
def test_mutated_files(seed: str, tmp_path: Path, self_seeds: dict[str, Path], fixtures_or_none: Path | None):
    _mutation_run(seed, MUTATIONS_PER_SEED["default"], tmp_path, self_seeds, fixtures_or_none)


@pytest.mark.slow
@pytest.mark.parametrize("seed", FIXTURE_SEEDS + SELF_SEEDS)
def test_mutated_files_thousands(
    seed: str, tmp_path: Path, self_seeds: dict[str, Path], fixtures_or_none: Path | None
):
    _mutation_run(seed, MUTATIONS_PER_SEED["slow"], tmp_path, self_seeds, fixtures_or_none)


def test_unmutated_seeds_load(tmp_path: Path, self_seeds: dict[str, Path]) -> None:
    """The baseline: every self-made seed loads through every reader (so mutations start from valid files)."""
    from transferkit.checkpoint import extract_state_dict, load_checkpoint

    for name, path in self_seeds.items():
        state = extract_state_dict(load_checkpoint(path))
        assert len(state) == 4, name
        tally = Tally()
        tally.check(tmp_path / path.name, path.read_bytes(), f"unmutated {name}")
        assert tally.outcomes == {"ok": len(_readers())}, (name, tally.failures)


# --- property-based: hypothesis drives the damage on the small self-made seeds -----------------------------

_HYPOTHESIS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _hypothesis_case(tally: Tally, folder: Path, seed: Path, data: bytes, description: str) -> None:
    tally.check(folder / f"h{tally.cases}{''.join(seed.suffixes)}", data, description)


def _pickle_damage(examples: int):
    @settings(_HYPOTHESIS, max_examples=examples)
    @given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
    def run(tally: Tally, folder: Path, seed: Path, edits: list[tuple[int, int]]) -> None:
        data = seed.read_bytes()
        pickle_name = next(n for n in _members(data) if n.endswith("/data.pkl"))

        def edit(name: str, payload: bytes) -> tuple[str, bytes]:
            if name != pickle_name:
                return name, payload
            out = bytearray(payload)
            for position, value in edits:
                out[position % len(out)] = value
            return name, bytes(out)

        _hypothesis_case(tally, folder, seed, _rezip(data, edit), f"data.pkl bytes set {edits}")

    return run


def _legacy_damage(examples: int):
    @settings(_HYPOTHESIS, max_examples=examples)
    @given(cut=st.integers(0, 10**6), flips=st.lists(st.integers(0, 10**7), max_size=4))
    def run(tally: Tally, folder: Path, seed: Path, cut: int, flips: list[int]) -> None:
        out = bytearray(seed.read_bytes())
        for bit in flips:
            out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
        out = out[: len(out) - cut % len(out)] if cut % 3 else out
        _hypothesis_case(tally, folder, seed, bytes(out), f"legacy: bits {flips}, cut {cut}")

    return run


def _safetensors_damage(examples: int):
    @settings(_HYPOTHESIS, max_examples=examples)
    @given(header=st.binary(max_size=200), length=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
    def run(tally: Tally, folder: Path, seed: Path, header: bytes, length: int | None) -> None:
        data = seed.read_bytes()
        (real,) = struct.unpack("<Q", data[:8])
        body = data[8 + real :]
        declared = len(header) if length is None else length
        mutated = struct.pack("<Q", declared) + header + body
        _hypothesis_case(
            tally, folder, seed, mutated, f"safetensors header {header[:40]!r}, length {declared}"
        )

    return run


HYPOTHESIS_RUNS = {"zip": _pickle_damage, "legacy": _legacy_damage, "safetensors": _safetensors_damage}
assert len(HYPOTHESIS_RUNS) == HYPOTHESIS_TESTS


@pytest.mark.parametrize("seed", sorted(HYPOTHESIS_RUNS))
def test_hypothesis_damage(seed: str, tmp_path: Path, self_seeds: dict[str, Path]) -> None:
    tally = Tally()
    HYPOTHESIS_RUNS[seed](HYPOTHESIS_EXAMPLES["default"])(tally, tmp_path, self_seeds[seed])
    tally.assert_clean(int(0.9 * HYPOTHESIS_EXAMPLES["default"]))


@pytest.mark.slow
@pytest.mark.parametrize("seed", sorted(HYPOTHESIS_RUNS))
def test_hypothesis_damage_thousands(seed: str, tmp_path: Path, self_seeds: dict[str, Path]) -> None:
    tally = Tally()
    HYPOTHESIS_RUNS[seed](HYPOTHESIS_EXAMPLES["slow"])(tally, tmp_path, self_seeds[seed])
    tally.assert_clean(int(0.9 * HYPOTHESIS_EXAMPLES["slow"]))


# --- inputs the fuzzer found, kept as fixed regression cases ------------------------------------------------


def _several_disks(data: bytes) -> bytes:
    """Flip one bit of the zip64 locator's 'total number of disks' (zipfile: 'span multiple disks')."""
    out = bytearray(data)
    locator = out.rfind(b"PK\x06\x07")
    assert locator >= 0, "torch writes a zip64 end-of-central-directory locator"
    out[locator + 16] ^= 0x02
    return bytes(out)


def _pickle_opcode_garbage(data: bytes) -> bytes:
    pickle_name = next(n for n in _members(data) if n.endswith("/data.pkl"))
    return _rezip(data, lambda n, b: (n, b"\x80\x02\xff." if n == pickle_name else b))


FOUND_CASES = {"zip_spanning_several_disks": _several_disks, "unknown_pickle_opcode": _pickle_opcode_garbage}


@pytest.mark.parametrize("case", sorted(FOUND_CASES))
def test_found_cases(case: str, tmp_path: Path, self_seeds: dict[str, Path]) -> None:
    tally = Tally()
    mutated = FOUND_CASES[case](self_seeds["zip"].read_bytes())
    tally.check(tmp_path / "found.pt", mutated, case)
    tally.assert_clean(1)


NOT_A_CHECKPOINT = {
    "missing": None,
    "directory": None,
    "empty": b"",
    "random": bytes(random.Random(0).randrange(256) for _ in range(4096)),
    "git_lfs_pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n",
    "html_error_page": b"<!DOCTYPE html><html><body>404</body></html>",
    "plain_zip": None,
    "text_with_pk_prefix": b"PK this is not a zip",
}


@pytest.mark.parametrize("case", sorted(NOT_A_CHECKPOINT))
def test_paths_that_are_not_checkpoints(case: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    if case == "directory":
        path.mkdir()
    elif case == "plain_zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif NOT_A_CHECKPOINT[case] is not None:
        path.write_bytes(NOT_A_CHECKPOINT[case])
    tally = Tally()
    tally.read_all(path, case)
    assert "ok" not in tally.outcomes, tally.outcomes
    tally.assert_clean(1)


def test_case_limit_catches_a_hang() -> None:
    """The time limit itself works, even against code that catches Exception."""
    import time

    with pytest.raises(CaseTimeout), time_limit(0.2), contextlib.suppress(Exception):
        time.sleep(5)  # the suppress is what a careless reader might do
