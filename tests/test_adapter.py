"""The Adapter: loading original-layout checkpoints, head policy, head surgery, in_chans, transforms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from transferkit.backbones import Adapter, create_model, decide_head, match_labels, replace_head
from transferkit.backbones.channels import adapt_conv_weight
from transferkit.errors import ConfigError


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


# ---- loading checkpoints of the original network ----------------------------------------------------------


def test_load_state_dict_in_original_layout_skips_head_for_shape() -> None:
    source = torchvision.models.squeezenet1_0(num_classes=1000).state_dict()
    adapter = create_model("squeezenet1_0", num_classes=10, weights=None)
    adapter.load_state_dict(source, strict=False)
    report = adapter.load_report
    assert set(report.mismatched) == {"backbone.classifier.1.weight", "backbone.classifier.1.bias"}
    assert report.mismatched["backbone.classifier.1.weight"] == ((1000, 512, 1, 1), (10, 512, 1, 1))
    for key, value in source.items():
        if not key.startswith("classifier.1."):
            torch.testing.assert_close(adapter.state_dict()[f"backbone.{key}"], value, rtol=0, atol=0)


def test_plain_load_state_dict_of_torchvision_resnet50() -> None:
    """The issue's line: adapter.load_state_dict(<resnet50 state dict>) with the default strict=True."""
    source = torchvision.models.resnet50(num_classes=1000).state_dict()
    adapter = create_model("resnet50", num_classes=10, weights=None)
    fresh_head = adapter.head.weight.detach().clone()
    result = adapter.load_state_dict(source)  # strict=True: the head skipped for shape is tolerated
    assert result.missing_keys == [] and result.unexpected_keys == []
    report = adapter.load_report
    assert report.mismatched == {
        "backbone.fc.weight": ((1000, 2048), (10, 2048)),
        "backbone.fc.bias": ((1000,), (10,)),
    }
    assert len(report.loaded) == len(source) - 2
    assert any(n.startswith("head: fresh") and "[1000, 2048]" in n for n in report.notes)
    state = adapter.state_dict()
    for key, value in source.items():
        if not key.startswith("fc."):
            assert torch.equal(state[f"backbone.{key}"], value), key
    assert torch.equal(adapter.head.weight, fresh_head)
    # strict still catches everything that is not the head
    broken = {k: v for k, v in source.items() if k != "layer1.0.conv1.weight"}
    with pytest.raises(RuntimeError, match=r"backbone\.layer1\.0\.conv1\.weight"):
        adapter.load_state_dict(broken)


def test_load_state_dict_head_fits_or_nested() -> None:
    source = torchvision.models.resnet18(num_classes=1000).state_dict()
    same = create_model("resnet18", num_classes=1000, weights=None)
    same.load_state_dict(source)
    assert torch.equal(same.head.weight, source["fc.weight"])
    assert any(n.startswith("head: loaded: the checkpoint's head fits") for n in same.load_report.notes)

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = create_model("resnet18", num_classes=3, weights=None)

    outer = Wrapper()
    result = outer.load_state_dict({f"model.{k}": v for k, v in source.items()})
    assert result.missing_keys == [] and "model.backbone.fc.weight" in outer.model.load_report.mismatched
    assert torch.equal(outer.model.backbone.conv1.weight, source["conv1.weight"])


def test_module_versions_reach_the_backbone(tmp_path: Path) -> None:
    """torchvision MNASNet reads its version from the state dict's metadata and refuses None."""
    source = torchvision.models.mnasnet0_5(num_classes=1000).state_dict()
    adapter = create_model("mnasnet0_5", num_classes=3, weights=None)
    adapter.load_state_dict(source, strict=False)
    assert "backbone.classifier.1.weight" in adapter.load_report.mismatched
    torch.save(source, tmp_path / "mnas.pth")
    from_file = create_model("mnasnet0_5", num_classes=3, weights=tmp_path / "mnas.pth")
    torch.testing.assert_close(from_file.backbone.layers[0].weight, source["layers.0.weight"], rtol=0, atol=0)


def test_adapter_wraps_any_network_and_replaces_its_head() -> None:
    adapter = Adapter(torchvision.models.mobilenet_v3_small(), num_classes=3, name="mobilenet_v3_small")
    assert adapter.head is adapter.backbone.classifier[3] and adapter.head.out_features == 3
    adapter.eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(adapter.forward_head(adapter.forward_features(x)), adapter(x))


# ---- real third-party checkpoints ---------------------------------------------------------------------------


def test_squeezenet_corn4_fixture(fixtures_dir: Path) -> None:
    path = fixtures_dir / "tv_squeezenet1_0_corn4.pth"
    adapter = create_model("squeezenet1_0", num_classes=10, weights=path)
    report = adapter.load_report
    source = torch.load(path, map_location="cpu", weights_only=True)
    features = [k for k in source if k.startswith("features.")]
    assert len(features) == 50 and sorted(report.loaded) == sorted(features)
    assert report.mismatched == {
        "classifier.1.weight": ((4, 512, 1, 1), (10, 512, 1, 1)),
        "classifier.1.bias": ((4,), (10,)),
    }
    assert any("does not fit" in n for n in report.notes)
    state = adapter.backbone.state_dict()
    for key in features:
        torch.testing.assert_close(state[key], source[key].cpu(), rtol=0, atol=0)
    assert adapter.pretrained and adapter.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_timm_seedlings_fixture_other_class_count(fixtures_dir: Path) -> None:
    path = fixtures_dir / "timm_mobilenetv3_small_050_seedlings12.pth"
    adapter = create_model("timm:mobilenetv3_small_050", num_classes=10, weights=path)
    report = adapter.load_report
    assert len(report.loaded) == 242
    assert set(report.mismatched) == {"classifier.weight", "classifier.bias"}
    assert adapter.head.out_features == 10


def test_timm_seedlings_fixture_head_policy(fixtures_dir: Path) -> None:
    path = fixtures_dir / "timm_mobilenetv3_small_050_seedlings12.pth"
    source = torch.load(path, map_location="cpu", weights_only=True)
    seedlings = [f"class{i}" for i in range(12)]

    # head="auto" with unknown class names: the fitting head is not trusted, a new one starts near zero
    auto = create_model("timm:mobilenetv3_small_050", num_classes=12, weights=path)
    assert any("class names are unknown" in n for n in auto.load_report.notes)
    assert set(auto.load_report.missing) == {"classifier.weight", "classifier.bias"}
    assert float(auto.head.weight.detach().abs().max()) <= 0.02 and not auto.head.bias.detach().any()

    kept = create_model("timm:mobilenetv3_small_050", num_classes=12, weights=path, head="keep")
    assert any("head='keep'" in n for n in kept.load_report.notes)
    torch.testing.assert_close(kept.head.weight, source["classifier.weight"].cpu(), rtol=0, atol=0)

    fresh = create_model("timm:mobilenetv3_small_050", num_classes=12, weights=path, head="fresh")
    assert set(fresh.load_report.missing) == {"classifier.weight", "classifier.bias"}
    assert not torch.equal(fresh.head.weight, source["classifier.weight"].cpu())

    same = create_model(
        "timm:mobilenetv3_small_050",
        num_classes=12,
        weights=path,
        head="fresh",  # known-equal labels win over head=
        class_names=seedlings,
        pretrained_classes=seedlings,
    )
    assert any("class names match" in n for n in same.load_report.notes)
    torch.testing.assert_close(same.head.weight, source["classifier.weight"].cpu(), rtol=0, atol=0)

    other = [f"other{i}" for i in range(12)]
    differ = create_model(
        "timm:mobilenetv3_small_050",
        num_classes=12,
        weights=path,
        class_names=other,
        pretrained_classes=seedlings,
    )
    assert any("no class name is shared" in n for n in differ.load_report.notes)
    assert set(differ.load_report.missing) == {"classifier.weight", "classifier.bias"}


def test_decide_head_table() -> None:
    # a fitting head whose labels are unknown is not trusted unless head="keep" says so
    assert decide_head(True, None, None, "auto")[0] == "fresh"
    assert decide_head(True, ["a", "b"], None, "auto")[0] == "fresh"
    assert decide_head(True, None, ["a", "b"], "auto")[0] == "keep"  # the model takes its labels
    assert decide_head(True, None, None, "keep")[0] == "keep"
    assert decide_head(True, None, None, "fresh")[0] == "fresh"
    assert decide_head(False, None, None, "keep")[0] == "fresh"
    assert decide_head(True, ["a", "b"], ["a", "b"], "fresh")[0] == "keep"
    assert decide_head(True, ["a", "b"], ["b", "a"], "keep")[:2] == ("surgery", {0: 1, 1: 0})
    assert decide_head(True, ["x", "y"], ["a", "b"], "keep")[0] == "fresh"


# ---- head surgery by label ----------------------------------------------------------------------------------


def test_match_labels_normalises() -> None:
    assert match_labels(["Golden_Retriever", "emu", "tabby-cat"], ["tabby cat", "golden retriever"]) == {
        0: 1,
        2: 0,
    }


def test_replace_head_keeps_rows_by_label_exactly() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
        net[1].bias.copy_(torch.tensor([10.0, 20.0, 30.0]))
    torch.manual_seed(0)
    rows = replace_head(
        net, 4, class_names=["c", "new1", "a", "new2"], pretrained_classes=["a", "b", "c"], head_name="1"
    )
    assert rows == {0: 2, 2: 0}
    torch.manual_seed(0)
    expected_fresh = nn.Linear(2, 4)  # the same default init, drawn from the same seed
    expected_w = expected_fresh.weight.detach().clone()
    expected_b = expected_fresh.bias.detach().clone()
    expected_w[0], expected_b[0] = torch.tensor([5.0, 6.0]), 30.0
    expected_w[2], expected_b[2] = torch.tensor([1.0, 2.0]), 10.0
    torch.testing.assert_close(net[1].weight, expected_w, rtol=0, atol=0)
    torch.testing.assert_close(net[1].bias, expected_b, rtol=0, atol=0)


def test_replace_head_keep_sequence_and_errors() -> None:
    net = torchvision.models.squeezenet1_1(num_classes=3)  # a 1x1 conv head
    old = net.classifier[1].weight.detach().clone()
    assert replace_head(net, 2, keep=[None, 0]) == {1: 0}
    torch.testing.assert_close(net.classifier[1].weight[1], old[0], rtol=0, atol=0)
    assert isinstance(net.classifier[1], nn.Conv2d) and net.classifier[1].out_channels == 2
    with pytest.raises(ConfigError, match="one entry per new class"):
        replace_head(net, 3, keep=[0])
    with pytest.raises(ConfigError, match="out of range"):
        replace_head(net, 3, keep={0: 7})


def test_replace_head_on_adapter_updates_it() -> None:
    adapter = create_model("resnet18", num_classes=3, weights=None, class_names=["a", "b", "c"])
    old = adapter.head.weight.detach().clone()
    replace_head(adapter, 2, class_names=["c", "z"], pretrained_classes=adapter.class_names)
    assert adapter.num_classes == 2 and adapter.class_names == ["c", "z"]
    torch.testing.assert_close(adapter.head.weight[0], old[2], rtol=0, atol=0)
    assert adapter.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_create_model_head_surgery_from_checkpoint(tmp_path: Path) -> None:
    source = torchvision.models.squeezenet1_1(num_classes=4).state_dict()
    path = _save(source, tmp_path / "sq.pth")
    adapter = create_model(
        "squeezenet1_1",
        num_classes=3,
        weights=path,
        class_names=["dog", "zebra", "ant"],
        pretrained_classes=["ant", "bee", "cat", "dog"],
    )
    w, b = adapter.head.weight, adapter.head.bias
    torch.testing.assert_close(w[0], source["classifier.1.weight"][3], rtol=0, atol=0)
    torch.testing.assert_close(w[2], source["classifier.1.weight"][0], rtol=0, atol=0)
    torch.testing.assert_close(b[[0, 2]], source["classifier.1.bias"][[3, 0]], rtol=0, atol=0)
    assert not any(torch.equal(w[1], row) for row in source["classifier.1.weight"])
    assert any("head surgery by label: 2 of 3" in n for n in adapter.load_report.notes)


# ---- input channels -----------------------------------------------------------------------------------------


def test_adapt_conv_weight_exact() -> None:
    w = torch.arange(2 * 3, dtype=torch.float32).reshape(2, 3, 1, 1)  # rows (0,1,2) and (3,4,5)
    torch.testing.assert_close(adapt_conv_weight(w, 1).flatten(), torch.tensor([3.0, 12.0]))
    five = adapt_conv_weight(w, 5)[:, :, 0, 0]
    torch.testing.assert_close(five, torch.tensor([[0, 1, 2, 0, 1], [3, 4, 5, 3, 4]]) * 0.6)
    two_to_four = adapt_conv_weight(torch.tensor([[[[1.0]], [[2.0]]]]), 4)[0, :, 0, 0]
    torch.testing.assert_close(two_to_four, torch.tensor([0.5, 1.0, 0.5, 1.0]))
    assert torch.equal(adapt_conv_weight(w, 3), w)


@pytest.mark.parametrize(
    ("in_chans", "strategy"), [(1, "sum"), (2, "repeat-scale"), (4, "repeat-scale"), (3, "none")]
)
def test_in_chans_from_checkpoint(tmp_path: Path, in_chans: int, strategy: str) -> None:
    source = torchvision.models.resnet18(num_classes=10).state_dict()
    path = _save(source, tmp_path / "r18.pth")
    adapter = create_model("resnet18", num_classes=10, weights=path, in_chans=in_chans)
    w = source["conv1.weight"]
    expected = {
        1: w.sum(1, keepdim=True),
        2: w[:, :2] * 1.5,
        4: torch.cat([w, w[:, :1]], 1) * 0.75,
        3: w,
    }[in_chans]
    torch.testing.assert_close(adapter.backbone.conv1.weight, expected, rtol=0, atol=0)
    assert adapter.in_chans == in_chans and adapter.in_chans_strategy == strategy
    assert len(adapter.data_config["mean"]) == in_chans
    assert adapter.eval()(torch.randn(1, in_chans, 32, 32)).shape == (1, 10)


def test_in_chans_checkpoint_already_adapted_loads_as_is(tmp_path: Path) -> None:
    """Reloading a grey model fine-tuned earlier: its 1-channel filters load, they are not re-adapted."""
    grey = create_model("resnet18", num_classes=10, weights=None, in_chans=1)
    path = _save(grey.backbone.state_dict(), tmp_path / "grey.pth")
    for fast in (True, False):
        again = create_model("resnet18", num_classes=10, weights=path, in_chans=1, fast=fast)
        assert torch.equal(again.backbone.conv1.weight, grey.backbone.conv1.weight)
        assert again.load_report.mismatched == {} and again.in_chans_strategy == "none"
        assert any("already takes 1; loaded as is" in n for n in again.notes)
    four = create_model("resnet18", num_classes=10, weights=path, in_chans=4)  # 1 -> 4: repeat-scale
    expected = grey.backbone.conv1.weight.detach().repeat(1, 4, 1, 1) * 0.25
    torch.testing.assert_close(four.backbone.conv1.weight, expected, rtol=0, atol=0)
    assert four.in_chans_strategy == "repeat-scale" and four.load_report.mismatched == {}
    assert any("adapted from the checkpoint's 1 to 4" in n for n in four.notes)
    rgb = create_model("resnet18", num_classes=10, weights=path)  # in_chans=None: the network's own 3
    expected_rgb = grey.backbone.conv1.weight.detach().repeat(1, 3, 1, 1) * (1 / 3)
    torch.testing.assert_close(rgb.backbone.conv1.weight, expected_rgb, rtol=0, atol=0)
    assert rgb.in_chans == 3 and rgb.in_chans_strategy == "repeat-scale"


def test_in_chans_timm_and_grey_input() -> None:
    adapter = create_model("timm:test_convnext", num_classes=2, weights=None, in_chans=1)
    assert adapter.in_chans_strategy == "sum" and adapter.backbone.stem[0].in_channels == 1
    assert adapter.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 2)


# ---- preprocessing ------------------------------------------------------------------------------------------


def test_transforms_from_torchvision_meta() -> None:
    adapter = create_model("efficientnet_b1", num_classes=2, weights=None)
    cfg = adapter.data_config
    preset = torchvision.models.EfficientNet_B1_Weights.DEFAULT.transforms.keywords  # crop 240, resize 255
    assert cfg["input_size"] == (3, preset["crop_size"], preset["crop_size"]) == (3, 240, 240)
    assert cfg["resize_size"] == preset["resize_size"] == 255
    assert cfg["interpolation"] == preset["interpolation"].value
    image = Image.new("RGB", (300, 260), (255, 0, 0))
    out = adapter.transforms()(image)
    assert out.shape == (3, 240, 240)
    torch.testing.assert_close(
        out[:, 0, 0], (torch.tensor([1.0, 0, 0]) - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"])
    )
    assert adapter.transforms(train=True, img_size=96)(image).shape == (3, 96, 96)


def test_transforms_from_timm_config() -> None:
    adapter = create_model("timm:test_vit", num_classes=2, weights=None)
    cfg = adapter.data_config
    assert cfg["input_size"] == (3, 160, 160) and cfg["interpolation"] == "bicubic"
    assert adapter.transforms()(torch.zeros(3, 200, 180, dtype=torch.uint8)).shape == (3, 160, 160)


def test_transforms_grey(tmp_path: Path) -> None:
    adapter = create_model("resnet18", num_classes=2, weights=None, in_chans=1)
    out = adapter.transforms(img_size=32)(Image.new("L", (40, 40), 128))
    assert out.shape == (1, 32, 32)
    assert adapter.transforms(train=True, img_size=32)(Image.new("RGB", (40, 40))).shape == (1, 32, 32)
