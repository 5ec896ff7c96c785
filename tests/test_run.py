"""Tests for transferkit.run: FinetuneSpec (the options, their flags and args.yaml) and finetune()."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

import transferkit
from transferkit.cli import main
from transferkit.commands.flags import render_error
from transferkit.commands.parser import DEFAULTS, finetune_actions
from transferkit.errors import ConfigError
from transferkit.run import FinetuneSpec, RunFolder

TINY = "tests.tiny_models:tinynet"
QUICK = {"img_size": 16, "batch_size": 16, "workers": 0, "quiet": True, "epochs": 2, "limit_train": 64}


def test_every_flag_is_a_field_with_its_default() -> None:
    names = [f.name for f in dataclasses.fields(FinetuneSpec)]
    assert set(finetune_actions()) == set(names)
    assert FinetuneSpec.defaults() == DEFAULTS and list(DEFAULTS) == names


def test_spec_is_frozen_and_round_trips_through_a_dict() -> None:
    spec = FinetuneSpec(backbone="resnet18", classes=10, rule=("a.=>b.",), mean=0.5)
    assert spec.rule == ["a.=>b."] and spec.mean == [0.5]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.lr = 1.0  # type: ignore[misc]
    assert FinetuneSpec.from_dict(spec.to_dict()) == spec
    assert FinetuneSpec.from_dict({"backbone": "x", "batch-size": 8}).batch_size == 8


@pytest.mark.parametrize(
    ("options", "param", "flag_text"),
    [
        ({"lr": 0}, "lr", "--lr must be a positive finite number"),
        ({"img_size": 100000}, "img_size", "--img-size 100000 is above the limit"),
        ({"layer_decay": 0.7, "lr_decay": 0.5}, "layer_decay", "--layer-decay replaces --lr-decay"),
        ({"mean": [1, 2]}, "mean", "e.g. --mean 0.5"),
        ({"feature_cache": True, "aug": "light"}, "feature_cache", "--feature-cache needs --aug none"),
    ],
)
def test_bad_options_name_their_parameter_and_render_as_flags(options, param, flag_text) -> None:
    with pytest.raises(ConfigError) as info:
        FinetuneSpec(backbone="resnet18", **options)
    assert info.value.param == param and f"`{param}`" in str(info.value)
    assert flag_text in render_error(info.value)


def test_unknown_option_gets_close_matches() -> None:
    with pytest.raises(ConfigError, match="did you mean batch_size"):
        FinetuneSpec.from_dict({"backbone": "x", "batchsize": 8})


def test_finetune_from_python_writes_the_cli_run_folder(tmp_path, monkeypatch, capsys) -> None:
    """transferkit.finetune(...) and `transferkit finetune` with the same options: the same run folder."""
    monkeypatch.chdir(tmp_path)
    result = transferkit.finetune(backbone=TINY, output="py", **QUICK)
    argv = ["finetune", "--backbone", TINY, "--output", "cli", "--img-size", "16", "--batch-size", "16"]
    assert main([*argv, "--workers", "0", "--quiet", "--epochs", "2", "--limit-train", "64"]) == 0
    cli, py = tmp_path / "cli", tmp_path / "py"
    assert result.run_dir == py and [p.name for p in result.paths] == sorted(p.name for p in cli.iterdir())
    args = {
        name: yaml.safe_load((run / "args.yaml").read_text())["args"]
        for name, run in (("cli", cli), ("py", py))
    }
    assert {**args["py"], "output": "cli"} == args["cli"]
    # args.yaml records the rate the run resolved (1e-3 on random weights), so a resume keeps it
    assert FinetuneSpec.from_dict(args["py"]) == FinetuneSpec(backbone=TINY, output="py", lr=1e-3, **QUICK)
    assert result.best["epoch"] in (1, 2) and 0.0 <= result.best["val_acc"] <= 1.0
    assert result.final["epoch"] == 2 and "val_acc" in result.final
    folder = RunFolder(result.run_dir)
    assert folder.exported() and folder.read_args() == args["py"] and folder.last in result.paths


def test_finetune_reports_bad_input_with_its_parameter(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        transferkit.finetune(FinetuneSpec(backbone=TINY, **QUICK), data=str(tmp_path / "missing"))
    assert not (tmp_path / "runs").exists(), "bad input writes nothing"
    assert "missing" in str(info.value) and info.value.param == "data"


@pytest.mark.parametrize(
    "options, param, text",
    [
        (
            {"backbone": TINY, "limit_trian": 8},
            "limit_trian",
            "unknown fine-tuning option 'limit_trian'; did you mean limit_train",
        ),
        ({"backbone": "resnet18", "nonsense": 1}, "nonsense", "unknown fine-tuning option 'nonsense'"),
        ({"backbone": "no_such_net"}, "backbone", "unknown backbone 'no_such_net'"),
        ({"backbone": TINY, "weights": "nope.pt"}, "weights", "`weights` 'nope.pt': no such file"),
        (
            {"backbone": TINY, "init_checkpoint": "nope.pt"},
            "init_checkpoint",
            "`init_checkpoint` nope.pt does not",
        ),
    ],
)
def test_finetune_names_the_parameter_of_every_bad_option(
    tmp_path, monkeypatch, options, param, text
) -> None:
    """From Python, bad options are ConfigErrors with ``param`` set and marked in the text (never a TypeError
    for a misspelt keyword), with or without a spec."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        transferkit.finetune(**{**QUICK, **options})
    assert info.value.param == param and text in str(info.value), str(info.value)
    if "backbone" in options and options["backbone"] == TINY:
        with pytest.raises(ConfigError) as info:
            transferkit.finetune(FinetuneSpec(backbone=TINY, **QUICK), **options)
        assert info.value.param == param
    assert not (tmp_path / "runs").exists()


def test_only_rank_0_writes_checkpoints(tmp_path) -> None:
    """RunFolder.save_epoch is a Trainer's on_epoch_end: last.pt every epoch, best.pt on improvement, rank 0."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from transferkit.checkpoint import load_checkpoint
    from transferkit.distributed import DistContext
    from transferkit.train import Trainer

    model = torch.nn.Linear(4, 2)
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    events = []
    trainer = Trainer(
        model, opt, data, data, epochs=2, num_classes=2, on_epoch_end=lambda t, e: events.append(e)
    )
    trainer.fit()
    other_rank = type("Rank1", (), {"dist": DistContext(rank=1, world_size=2)})()
    RunFolder(tmp_path / "r1").save_epoch(other_rank, events[0])  # type: ignore[arg-type]
    assert not (tmp_path / "r1").exists()
    folder = RunFolder(tmp_path / "r0")
    folder.save_epoch(trainer, events[0])
    assert load_checkpoint(folder.last)["epoch"] == 0 and load_checkpoint(folder.best)["epoch"] == 0
    folder.save_epoch(trainer, dataclasses.replace(events[1], improved=False))
    assert load_checkpoint(folder.last)["epoch"] == 1 and load_checkpoint(folder.best)["epoch"] == 0


def test_finetune_refuses_an_evaluation_only_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        transferkit.finetune(backbone=TINY, eval_only=True, **QUICK)
    assert info.value.param == "eval_only" and not list(tmp_path.iterdir())


def test_after_an_overwrite_killed_before_its_first_checkpoint_the_next_errors_say_where_the_old_run_is(
    tmp_path, monkeypatch, capsys
) -> None:
    """kill -9 during `--overwrite` leaves the replaced run in a hidden sibling; the commands a user runs next
    (resume, the same run again) must say so, or the old run looks lost."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "args.yaml").write_text("args: {}\nresolved: {}\n")  # the killed run's first file
    kept = RunFolder(tmp_path / "out").aside(4242)
    kept.mkdir()
    (kept / "best.pt").write_bytes(b"the old run")
    for argv in (
        ["--resume", "out"],
        ["--output", "out", "--resume"],
        ["--backbone", TINY, "--output", "out"],
    ):
        assert main(["finetune", *argv]) == 2
        err = capsys.readouterr().err
        assert (
            err.count("\n") == 1 and f"is kept in {kept.relative_to(tmp_path)}: move its files back" in err
        ), err
    assert (kept / "best.pt").read_bytes() == b"the old run"
