"""Tests for transferkit.inspect: inspect_checkpoint on every real fixture, dry runs, unsafe files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.inspect import inspect_checkpoint, skeleton_from_state_dict

# file -> facts the description must state
EXPECTED = {
    "cifar10_resnet20_dataparallel.th": [
        "legacy torch pickle",
        "weights: at 'state_dict': 97 tensors, 269,722 parameters",
        "saved on: cuda:0",
        "module.  97 tensors",
        "best_prec1: float 91.78",
        "optimizer state: none",
    ],
    "cifar10_resnet56_dataparallel.th": ["277 tensors, 853,018 parameters", "saved on: cuda:0"],
    "cifar10_smallvgg_with_optimizer.pth.tar": [
        "zip torch file",
        "23 tensors",
        "epoch: int 18",
        "optimizer state: 'optimizer'",
        "momentum_buffer",
        "best_prec1: tensor",
    ],
    "tv_squeezenet1_0_corn4.pth": [
        "the top-level dict: 52 tensors",
        "saved on: cuda:0",
        "classifier.1.{weight,bias}",
    ],
    "timm_mobilenetv3_small_050_seedlings12.pth": ["244 tensors", "blocks."],
    "mnist_lenet5.pth": ["10 tensors", "saved on: cpu", "convnet.c{1,3,5}.{weight,bias}"],
    "lightning25_mnist_cnn.ckpt": [
        "weights: at 'state_dict': 8 tensors",
        "global_step: int",
        "pytorch-lightning_version: str '2.5",
        "optimizer state: 'optimizer_states[0]'",
        "exp_avg",
    ],
    "mnist_tinycnn.safetensors": ["safetensors", "23 tensors", "no device", "no metadata"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inspect_describes_every_fixture(fixtures_dir: Path, name: str) -> None:
    text = inspect_checkpoint(fixtures_dir / name)
    assert text.startswith(f"checkpoint: {name} (")
    for fact in EXPECTED[name]:
        assert fact in text, f"{fact!r} missing from:\n{text}"


def test_unsafe_file_is_described_not_executed(fixtures_dir: Path) -> None:
    before = set(sys.modules)
    text = inspect_checkpoint(fixtures_dir / "lightning11_mnist_mlp_unsafe.ckpt")
    assert "refused by weights_only=True" in text and "nothing from it was executed" in text
    assert "__main__.Backbone" in text
    assert "`salvage`=True" in text
    assert not {m for m in set(sys.modules) - before if "lightning" in m}  # nothing was imported for it


def test_unsafe_file_salvaged_shows_its_weights(fixtures_dir: Path) -> None:
    text = inspect_checkpoint(fixtures_dir / "lightning11_mnist_mlp_unsafe.ckpt", salvage=True)
    assert "salvaged:" in text and "inert placeholders" in text
    assert "4 tensors" in text and "backbone." in text


def test_salvaged_placeholders_show_the_name_they_stand_for(fixtures_dir: Path) -> None:
    """A placeholder's own class lives in transferkit.salvage; shown by that it would pass for a real class."""
    text = inspect_checkpoint(fixtures_dir / "lightning11_mnist_mlp_unsafe.ckpt", salvage=True)
    assert "backbone: Placeholder(__main__.Backbone)" in text  # an instance (hyper_parameters.backbone)
    # Lightning keys its callbacks by class: the key is a placeholder class, shown whole
    assert "Placeholder(pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint): dict" in text
    assert "transferkit.salvage." not in text


def test_dry_run_into_a_module_leaves_it_untouched(fixtures_dir: Path) -> None:
    from torchvision.models import squeezenet1_0

    model = squeezenet1_0(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    text = inspect_checkpoint(fixtures_dir / "tv_squeezenet1_0_corn4.pth", model=model)
    assert "dry run into SqueezeNet" in text and "[dry run]" in text
    assert "classifier.1.weight  [4, 512, 1, 1] -> [10, 512, 1, 1]" in text
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_dry_run_into_a_backbone_by_name_on_the_meta_device(fixtures_dir: Path) -> None:
    pytest.importorskip("transferkit.backbones")
    text = inspect_checkpoint(
        fixtures_dir / "tv_squeezenet1_0_corn4.pth", model="squeezenet1_0", num_classes=10
    )
    assert "dry run into squeezenet1_0 (10 classes)" in text
    assert "LoadReport (tv_squeezenet1_0_corn4.pth) [dry run]" in text
    assert "would load 50/52" in text and "renamed 0," in text  # the checkpoint's own names, as create_model
    assert "features 100%  classifier 0%" in text
    with pytest.raises(ConfigError, match="num_classes"):
        inspect_checkpoint(fixtures_dir / "tv_squeezenet1_0_corn4.pth", model="squeezenet1_0")


def test_against_another_checkpoint(fixtures_dir: Path) -> None:
    text = inspect_checkpoint(
        fixtures_dir / "cifar10_resnet56_dataparallel.th",
        against=fixtures_dir / "cifar10_resnet20_dataparallel.th",
    )
    assert "dry run against cifar10_resnet20_dataparallel.th (97 tensors)" in text
    assert "would load 97/277" in text and "unexpected (180)" in text


def test_against_with_no_overlap_reports_the_failure_and_a_rule(fixtures_dir: Path) -> None:
    text = inspect_checkpoint(
        fixtures_dir / "mnist_lenet5.pth",
        against=fixtures_dir / "mnist_lenet5.pth",
        rules=["=>extra."],
    )
    assert "a load would fail: no tensor loaded" in text
    assert "Prefix('extra.', '')" in text


def test_rules_apply_in_the_dry_run(tmp_path: Path) -> None:
    path = tmp_path / "enc.pt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in nn.Linear(3, 2).state_dict().items()}}, path)
    model = nn.Module()
    model.backbone = nn.Linear(3, 2)
    text = inspect_checkpoint(path, model=model, rules=["encoder.=>backbone."])
    assert "would load 2/2" in text


def test_skeleton_keeps_shapes_on_meta() -> None:
    sd = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).state_dict()
    skeleton = skeleton_from_state_dict(sd)
    got = skeleton.state_dict()
    assert list(got) == list(sd)
    assert all(got[k].shape == sd[k].shape and got[k].is_meta for k in sd)
    assert "1.running_mean" not in dict(skeleton.named_parameters())


ALL_FIXTURES = [*sorted(EXPECTED), "lightning11_mnist_mlp_unsafe.ckpt"]


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_inspect_command_line_on_every_fixture(
    fixtures_dir: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from transferkit.cli import main

    assert main(["inspect", str(fixtures_dir / name)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"checkpoint: {name} (")
    facts = EXPECTED.get(name, ["refused by weights_only=True", "__main__.Backbone"])
    assert all(fact in out for fact in facts), out


def test_inspect_command_line_dry_run_with_a_rule(
    fixtures_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transferkit.cli import main

    path = str(fixtures_dir / "mnist_lenet5.pth")
    assert main(["inspect", path, "--against", path, "--rule", "convnet.=>features."]) == 0
    out = capsys.readouterr().out
    assert "a load would fail" not in out and "would load 4/10" in out and "unexpected (6)" in out


def test_zip_files_are_read_with_mmap_and_weights_only(
    fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict] = []
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(dict(kwargs))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    inspect_checkpoint(fixtures_dir / "tv_squeezenet1_0_corn4.pth")
    assert calls and all(c.get("mmap") is True and c.get("weights_only") is True for c in calls)


def test_dry_run_of_an_adapter_layout_checkpoint_goes_into_the_adapter(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("transferkit.backbones")
    state = torch.load(fixtures_dir / "tv_squeezenet1_0_corn4.pth", map_location="cpu", weights_only=True)
    path = tmp_path / "adapter.pt"
    torch.save({f"backbone.{k}": v for k, v in state.items()}, path)
    text = inspect_checkpoint(path, model="squeezenet1_0", num_classes=10)
    assert "would load 50/52" in text and "backbone.classifier.1.weight  [4, 512, 1, 1]" in text
