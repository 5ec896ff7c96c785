"""Structural alignment (transferkit.align) through load_partial and create_model: tiny twin models, and the
real lukemelas EfficientNet-Lite0 ImageNet checkpoint into timm's efficientnet_lite0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.tiny_models import tinynet
from transferkit import ConfigError, LoadError, create_model, load_partial
from transferkit.align import align_by_structure
from transferkit.rename import Prefix, RenameOnLoadMixin

LITE0 = "efficientnet_lite0_lukemelas_imagenet.pth"
PALACE = 698  # ImageNet-1k class index of "palace"


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> None:
        super().__init__()
        self._conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self._bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._bn(self._conv(x)).relu()


class OtherTiny(nn.Module):
    """TinyNet as another implementation would write it: same tensors, same order, other names."""

    def __init__(
        self, num_classes: int = 10, width: int = 8, kernel: int = 3, blocks: int = 1, head: str = "_fc"
    ) -> None:
        super().__init__()
        self.head_name = head
        self._conv_stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(width)
        self._blocks = nn.ModuleList(
            [_Block(width, 2 * width, kernel, stride=2)]
            + [_Block(2 * width, 2 * width) for _ in range(blocks - 1)]
        )
        setattr(self, head, nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._bn0(self._conv_stem(x)).relu()
        for block in self._blocks:
            x = block(x)
        return getattr(self, self.head_name)(x.mean((2, 3)))


def other_tiny(num_classes: int = 10) -> OtherTiny:
    """A backbone factory (``tests.test_align:other_tiny``): the reference implementation for --verify."""
    return OtherTiny(num_classes=num_classes, head="classifier")  # a head name create_model finds


def off_by_a_bit(num_classes: int = 10) -> OtherTiny:
    """OtherTiny whose outputs are shifted: a reference that a correct conversion does not match."""
    model = OtherTiny(num_classes=num_classes, head="classifier")
    model.register_forward_hook(lambda _m, _i, out: out + 1e-2)
    return model


class Repeated(nn.Module):
    """A stem, ``n`` identical blocks, a head: a checkpoint missing one block could fit in ``n`` ways."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, bias=False)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)) for _ in range(n)])
        self.head = nn.Linear(8, 4)


def randomised(model: nn.Module) -> dict[str, torch.Tensor]:
    """Random values for every tensor (variances positive, counters moved), in the model's order."""
    out = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            out[key] = value + 3
        else:
            out[key] = (
                torch.rand_like(value) + 0.5 if key.endswith("running_var") else torch.randn_like(value)
            )
    return out


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


def assert_paired_in_order(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The by-hand pairing: the i-th checkpoint tensor is the i-th model tensor, bit for bit."""
    mine = model.state_dict()
    assert len(mine) == len(state)
    for (k, v), (mk, mv) in zip(state.items(), mine.items()):
        assert mv.shape == v.shape and torch.equal(mv, v.to(mv.dtype)), f"{k} -> {mk}"


# ------------------------------------------------------------------------------------------ tiny twins


def test_auto_pairs_another_implementation_by_structure_and_says_so() -> None:
    state = randomised(OtherTiny())
    model = tinynet()
    report = load_partial(model, state)
    assert report.method == "structure" and report.ok and report.total_coverage == 1.0
    assert report.aligned["_blocks.0._bn.running_var"] == "block.bn.running_var"
    assert report.aligned["_fc.weight"] == "fc.weight"
    assert_paired_in_order(model, state)
    text = str(report)
    assert (
        "aligned by structure (14 pairs)" in text
        and "loaded 14/14 checkpoint tensors aligned by structure" in text
    )
    assert "_bn0.{weight,bias,running_mean,running_var,num_batches_tracked} -> stem.bn.*" in text


def test_names_win_when_any_name_matches_and_structure_can_be_forced() -> None:
    model = tinynet()
    report = load_partial(model, randomised(tinynet()))
    assert report.method == "names" and report.aligned == {}
    state = randomised(OtherTiny())
    forced = load_partial(tinynet(), state, align="structure")
    assert forced.method == "structure" and forced.total_coverage == 1.0
    with pytest.raises(LoadError, match="no tensor loaded"):
        load_partial(tinynet(), state, align="names")
    with pytest.raises(ConfigError, match="`align` must be one of 'auto', 'names', 'structure'"):
        load_partial(tinynet(), state, align="order")


def test_given_rules_keep_auto_to_names() -> None:
    """Rules are the caller's mapping by name: a rule that maps nothing is reported, not silently replaced."""
    with pytest.raises(LoadError, match="no tensor loaded"):
        load_partial(tinynet(), randomised(OtherTiny()), rules=[Prefix("x.", "y.")])


def test_a_head_for_another_class_count_at_the_end_is_skipped_for_shape() -> None:
    state = randomised(OtherTiny(num_classes=1000))
    model = tinynet(num_classes=10)
    head = model.fc.weight.detach().clone()
    report = load_partial(model, state)
    assert report.method == "structure"
    assert report.mismatched == {"fc.weight": ((1000, 16), (10, 16)), "fc.bias": ((1000,), (10,))}
    assert torch.equal(model.fc.weight, head)
    assert torch.equal(model.block.conv.weight, state["_blocks.0._conv.weight"])
    assert any("last module (fc.{weight,bias})" in n for n in report.notes), report.notes


def test_a_head_whose_inputs_differ_is_not_another_class_count_and_is_refused() -> None:
    state = randomised(OtherTiny(num_classes=1000))
    state["_fc.weight"] = torch.randn(1000, 32)  # 32 inputs where the features have 16
    with pytest.raises(
        LoadError, match=r"#12 '_fc.weight' \[1000, 32\] vs model tensor #12 'fc.weight' \[10, 16\]"
    ):
        load_partial(tinynet(), state, align="structure")


def test_counters_one_side_lacks_are_allowed_and_stated() -> None:
    state = {k: v for k, v in randomised(OtherTiny()).items() if not k.endswith("num_batches_tracked")}
    model = tinynet()
    report = load_partial(model, state)
    assert report.method == "structure" and report.total_coverage == 1.0
    assert any("the checkpoint lacks 2 counter(s)" in n for n in report.notes), report.notes
    assert sorted(report.missing) == ["block.bn.num_batches_tracked", "stem.bn.num_batches_tracked"]


def test_a_sequence_that_diverges_in_the_middle_is_refused_naming_where_and_the_model_is_untouched() -> None:
    state = randomised(OtherTiny(kernel=5))
    model = tinynet()
    before = snapshot(model)
    with pytest.raises(LoadError) as info:
        load_partial(model, state, align="structure")
    assert_identical(model, before)
    div = info.value.divergence  # type: ignore[attr-defined]
    assert (div.index, div.checkpoint_key, div.model_key) == (
        6,
        "_blocks.0._conv.weight",
        "block.conv.weight",
    )
    assert (div.checkpoint_shape, div.model_shape) == ((16, 8, 5, 5), (16, 8, 3, 3))
    message = str(info.value)
    assert "checkpoint tensor #6 '_blocks.0._conv.weight' [16, 8, 5, 5]" in message
    assert "model tensor #6 'block.conv.weight' [16, 8, 3, 3]: shapes differ" in message
    assert "Nothing was written" in message


def test_auto_refusal_says_names_and_structure_both_failed() -> None:
    model = tinynet()
    before = snapshot(model)
    with pytest.raises(LoadError, match="no tensor loaded.*Pairing by structure was tried too.*#6"):
        load_partial(model, randomised(OtherTiny(kernel=5)))
    assert_identical(model, before)


def test_a_conv_never_pairs_with_a_linear_weight_nor_a_statistic_with_a_weight() -> None:
    conv_head = {"0.weight": torch.ones(4, 8, 1, 1), "0.bias": torch.ones(4)}
    with pytest.raises(LoadError, match="4-d vs 2-d"):
        align_by_structure(conv_head, nn.Sequential(nn.Linear(8, 4)).state_dict())
    bn = nn.BatchNorm1d(4, track_running_stats=True).state_dict()
    odd = {
        "n.weight": torch.ones(4),
        "n.running_mean": torch.ones(4),
        "n.bias": torch.ones(4),
        "n.x": torch.ones(4),
    }
    with pytest.raises(LoadError, match="running statistic would pair with a weight"):
        align_by_structure(odd, {k: v for k, v in bn.items() if k != "num_batches_tracked"})


def test_a_checkpoint_lacking_a_block_in_the_middle_is_ambiguous_and_refused() -> None:
    state = {f"impl.{k}": v for k, v in randomised(Repeated(2)).items()}  # no name matches
    model = Repeated(3)
    before = snapshot(model)
    with pytest.raises(LoadError) as info:
        load_partial(model, state)
    assert_identical(model, before)
    message = str(info.value)
    assert "the checkpoint has 2 fewer module(s) and 5 different pairings would fit" in message
    assert "the alignment is ambiguous, so none is chosen" in message
    div = info.value.divergence  # type: ignore[attr-defined]
    assert div.checkpoint_key == "impl.head.weight" and div.model_key == "blocks.2.0.weight"


def test_alphabetical_checkpoints_are_named_as_the_cause() -> None:
    state = randomised(OtherTiny(blocks=11))
    shuffled = dict(sorted(state.items()))
    model = OtherTiny(blocks=11)
    renamed = {k.replace("_", "x", 1): v for k, v in shuffled.items()}
    with pytest.raises(LoadError, match="alphabetical order"):
        load_partial(model, renamed)


# ------------------------------------------------------------------------- adapters, mixins, meta builds


def test_it_aligns_inside_an_adapter_both_layouts() -> None:
    adapter = create_model("tests.tiny_models:tinynet", 10, weights=None)
    state = randomised(OtherTiny())
    report = load_partial(adapter, state)
    assert report.method == "structure" and report.total_coverage == 1.0
    assert torch.equal(adapter.backbone.fc.weight, state["_fc.weight"])
    own = randomised(tinynet())  # the original network's layout still loads by name
    report = load_partial(adapter, own)
    assert report.method == "names" and torch.equal(adapter.backbone.fc.weight, own["fc.weight"])


def test_it_aligns_inside_a_rename_on_load_module() -> None:
    class Detector(RenameOnLoadMixin, nn.Module):
        load_rules = (Prefix("old_net.", "net."),)

        def __init__(self) -> None:
            super().__init__()
            self.net = tinynet()

    model = Detector()
    state = randomised(OtherTiny())
    report = load_partial(model, state)
    assert report.method == "structure" and report.total_coverage == 1.0
    assert torch.equal(model.net.block.conv.weight, state["_blocks.0._conv.weight"])
    assert model.load_report is report


def test_it_materialises_a_meta_build_with_assign_and_dry_runs_write_nothing() -> None:
    state = randomised(OtherTiny())
    with torch.device("meta"):
        model = tinynet()
    dry = load_partial(model, state, dry_run=True)
    assert dry.method == "structure" and dry.dry_run and model.fc.weight.is_meta
    report = load_partial(model, state, assign=True)
    assert report.total_coverage == 1.0 and not model.fc.weight.is_meta
    assert_paired_in_order(model, state)


def test_create_model_takes_align() -> None:
    with pytest.raises(ConfigError, match="`align` must be one of"):
        create_model("tests.tiny_models:tinynet", 10, weights=None, align="shape")


def test_create_model_aligns_a_local_file_and_decides_the_head_on_the_pairs(tmp_path: Path) -> None:
    state = randomised(OtherTiny())
    torch.save(state, tmp_path / "other.pt")
    kept = create_model("tests.tiny_models:tinynet", 10, weights=tmp_path / "other.pt", head="keep")
    assert kept.load_report.method == "structure" and torch.equal(
        kept.backbone.fc.weight, state["_fc.weight"]
    )
    fresh = create_model("tests.tiny_models:tinynet", 10, weights=tmp_path / "other.pt")  # unknown labels
    assert fresh.load_report.method == "structure"
    assert not torch.equal(fresh.backbone.fc.weight, state["_fc.weight"])
    assert torch.equal(fresh.backbone.block.conv.weight, state["_blocks.0._conv.weight"])


# ----------------------------------------------------------------------- the real Lite0 checkpoint


def _china_224() -> torch.Tensor:
    """scikit-learn's china.jpg as the Lite0 weights expect it: short side 256, centre 224, mean = std = 0.5."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    image = torch.from_numpy(np.array(load_sample_images().images[0])).permute(2, 0, 1).float()[None] / 255
    h, w = image.shape[-2:]
    scale = 256 / min(h, w)
    image = nn.functional.interpolate(
        image, size=(round(h * scale), round(w * scale)), mode="bicubic", antialias=True, align_corners=False
    )
    top, left = (image.shape[-2] - 224) // 2, (image.shape[-1] - 224) // 2
    return (image[..., top : top + 224, left : left + 224] - 0.5) / 0.5


def test_lite0_loads_into_timm_with_no_rule_bit_identical_and_sees_a_palace(fixtures_dir: Path) -> None:
    import timm

    state = torch.load(fixtures_dir / LITE0, map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0").eval()
    report = load_partial(model, fixtures_dir / LITE0)
    assert report.method == "structure" and report.ok and len(report.loaded) == 296
    assert report.total_coverage == 1.0 and not report.mismatched and not report.unexpected
    assert_paired_in_order(model, state)
    text = str(report)
    assert (
        "_blocks.{1..15}._bn0.{weight,bias,running_mean,running_var,num_batches_tracked} -> blocks.{1.0..6.0}.bn1.*"
        in text
    )
    with torch.no_grad():
        logits = model(_china_224())
    assert int(logits.argmax()) == PALACE


def test_lite0_with_ten_classes_aligns_the_backbone_and_skips_the_head(fixtures_dir: Path) -> None:
    model = create_model("timm:efficientnet_lite0", 10, weights=fixtures_dir / LITE0)
    report = model.load_report
    assert report.method == "structure" and len(report.loaded) == 294
    assert report.mismatched == {
        "classifier.weight": ((1000, 1280), (10, 1280)),
        "classifier.bias": ((1000,), (10,)),
    }
    state = torch.load(fixtures_dir / LITE0, map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.conv_head.weight, state["_conv_head.weight"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "efficientnet_lite1",
            r"checkpoint tensor #60 '_blocks.3._depthwise_conv.weight' \[144, 1, 5, 5\].*ambiguous",
        ),
        (
            "mobilenetv3_small_050",
            r"checkpoint tensor #0 '_conv_stem.weight' \[32, 3, 3, 3\] vs model tensor #0 ",
        ),
    ],
)
def test_lite0_into_another_architecture_is_refused_and_touches_nothing(
    fixtures_dir: Path, name: str, expected: str
) -> None:
    import timm

    model = timm.create_model(name)
    before = snapshot(model)
    with pytest.raises(LoadError, match=expected):
        load_partial(model, fixtures_dir / LITE0)
    assert_identical(model, before)


# ------------------------------------------------------------------------------------------ verification


def test_verify_reports_the_largest_output_difference_and_refuses_above_tolerance() -> None:
    reference = other_tiny().eval()
    reference.load_state_dict(randomised(reference))
    model = tinynet()
    report = load_partial(model, reference.state_dict(), verify=reference)
    assert report.verified is not None and report.verified <= 1e-5
    assert any("verified against OtherTiny: largest output difference" in n for n in report.notes)
    shifted = off_by_a_bit()
    shifted.load_state_dict(reference.state_dict())
    with pytest.raises(
        LoadError, match=r"differ from the reference's by up to 0.01.*above the tolerance 0.0001"
    ):
        load_partial(tinynet(), reference.state_dict(), verify=shifted)


# ---------------------------------------------------------------------------------------- converters


def _randomise_in_place(model: nn.Module, seed: int = 1) -> nn.Module:
    """Every float tensor random (torchvision zero-initialises ViT heads: zeros would prove nothing)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            value = torch.randn(value.shape, generator=generator) * 0.1
            value = value.abs() + 0.5 if key.endswith("running_var") else value
        state[key] = value
    model.load_state_dict(state)
    return model.eval()


def _parity(converter: str, source: nn.Module, target: nn.Module, size: int) -> float:
    from transferkit.converters import get_converter, verify_outputs

    _randomise_in_place(source)
    target.eval().load_state_dict(get_converter(converter)(source.state_dict()), strict=True)
    return verify_outputs(target, source, input_size=(3, size, size), tolerance=1e-5)


def _tiny_vits() -> tuple[nn.Module, nn.Module]:
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from torchvision.models.vision_transformer import VisionTransformer as TvViT

    tv = TvViT(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    )
    timm_vit = TimmViT(
        img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, num_classes=5
    )
    return tv, timm_vit


def _tiny_resnets() -> tuple[nn.Module, nn.Module]:
    from timm.models.resnet import Bottleneck as TimmBottleneck
    from timm.models.resnet import ResNet as TimmResNet
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5), TimmResNet(
        TimmBottleneck, [1, 1, 1, 1], num_classes=5
    )


def test_vit_converters_match_logits_both_ways_on_a_small_vit() -> None:
    """The converters act on the layout, not the size: a 2-block ViT proves the mapping in a second."""
    tv, timm_vit = _tiny_vits()
    assert _parity("torchvision:vit_b_16->timm:vit_base_patch16_224", tv, timm_vit, 32) <= 1e-5
    tv_back, _ = _tiny_vits()
    assert _parity("timm:vit_base_patch16_224->torchvision:vit_b_16", timm_vit, tv_back, 32) <= 1e-5


def test_resnet_converters_match_logits_both_ways_on_a_small_resnet() -> None:
    tv, timm_resnet = _tiny_resnets()
    assert _parity("torchvision:resnet50->timm:resnet50", tv, timm_resnet, 32) <= 1e-5
    tv_back, _ = _tiny_resnets()
    assert _parity("timm:resnet50->torchvision:resnet50", timm_resnet, tv_back, 32) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("converter", "source", "target"),
    [
        ("torchvision:vit_b_16->timm:vit_base_patch16_224", "vit_b_16", "timm:vit_base_patch16_224"),
        ("torchvision:resnet50->timm:resnet50", "resnet50", "timm:resnet50"),
        ("timm:resnet50->torchvision:resnet50", "timm:resnet50", "resnet50"),
    ],
)
def test_converters_match_logits_on_the_full_size_models(converter: str, source: str, target: str) -> None:
    import timm
    import torchvision

    def build(name: str) -> nn.Module:
        if name.startswith("timm:"):
            return timm.create_model(name[5:])
        return torchvision.models.get_model(name)

    assert _parity(converter, build(source), build(target), 224) <= 1e-5


def test_a_converter_refuses_a_state_dict_of_another_layout() -> None:
    from transferkit.converters import get_converter

    with pytest.raises(LoadError, match="expects a state dict in the torchvision:vit_b_16 layout"):
        get_converter("torchvision:vit_b_16->timm:vit_base_patch16_224")(tinynet().state_dict())
    with pytest.raises(ConfigError, match="no converter named 'x->y'; registered: "):
        get_converter("x->y")


# ------------------------------------------------------------------------------ the CLI: convert, inspect


def test_convert_round_trip_loads_by_name_strictly_with_the_aligned_logits(
    fixtures_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import timm
    from safetensors import safe_open

    from transferkit.cli import main

    out = tmp_path / "lite0.safetensors"
    assert (
        main(["convert", str(fixtures_dir / LITE0), "--model", "timm:efficientnet_lite0", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "aligned by structure (296 pairs)" in printed and "wrote 296 tensors" in printed
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["transferkit.source"] == LITE0 and meta["transferkit.method"] == "structure"
    assert meta["transferkit.source_sha256"].startswith("579344248a93")
    converted = timm.create_model("efficientnet_lite0").eval()
    report = load_partial(converted, out, strict=True)
    assert report.method == "names" and report.ok and report.renamed == {}
    aligned = timm.create_model("efficientnet_lite0").eval()
    load_partial(aligned, fixtures_dir / LITE0)
    probe = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(converted(probe), aligned(probe))
    # the same file is refused in place, and an existing --out is not replaced without --overwrite
    assert (
        main(["convert", str(fixtures_dir / LITE0), "--model", "timm:efficientnet_lite0", "--out", str(out)])
        == 2
    )
    assert "--overwrite" in capsys.readouterr().err


def test_convert_with_other_classes_writes_the_backbone_only(fixtures_dir: Path, tmp_path: Path) -> None:
    from transferkit.checkpoint import load_checkpoint
    from transferkit.cli import main

    out = tmp_path / "lite0-10.safetensors"
    argv = ["convert", str(fixtures_dir / LITE0), "--model", "timm:efficientnet_lite0", "--classes", "10"]
    assert main([*argv, "--out", str(out)]) == 0
    keys = list(load_checkpoint(out))
    assert len(keys) == 294 and not any(k.startswith("classifier.") for k in keys)


def test_convert_verify_compares_with_the_source_implementation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transferkit.cli import main

    torch.save(randomised(other_tiny()), tmp_path / "other.pt")
    base = ["convert", str(tmp_path / "other.pt"), "--model", "tests.tiny_models:tinynet"]
    out = tmp_path / "tiny.safetensors"
    assert main([*base, "--out", str(out), "--verify", "tests.test_align:other_tiny"]) == 0
    assert "verified against tests.test_align:other_tiny" in capsys.readouterr().out
    bad = tmp_path / "bad.safetensors"
    assert main([*base, "--out", str(bad), "--verify", "tests.test_align:off_by_a_bit"]) == 2
    assert "above the tolerance" in capsys.readouterr().err and not bad.exists()
    assert main([*base, "--out", str(tmp_path / "x.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


@pytest.mark.slow
def test_convert_picks_the_vit_converter_and_verifies_against_torchvision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torchvision

    from transferkit.checkpoint import load_checkpoint
    from transferkit.cli import main

    torch.save(_randomise_in_place(torchvision.models.vit_b_16()).state_dict(), tmp_path / "tv_vit.pth")
    out = tmp_path / "vit.safetensors"
    argv = [
        "convert",
        str(tmp_path / "tv_vit.pth"),
        "--model",
        "timm:vit_base_patch16_224",
        "--out",
        str(out),
    ]
    assert main([*argv, "--verify", "vit_b_16", "--tolerance", "1e-5"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "paired by converter torchvision:vit_b_16->timm:vit_base_patch16_224" in printed
    assert "verified against vit_b_16" in printed
    assert "blocks.11.attn.qkv.weight" in load_checkpoint(out)


def test_inspect_shows_the_structural_plan_as_a_dry_run(fixtures_dir: Path) -> None:
    from transferkit.inspect import inspect_checkpoint

    text = inspect_checkpoint(fixtures_dir / LITE0, model="timm:efficientnet_lite0", num_classes=10)
    assert "would load 294/296 checkpoint tensors aligned by structure" in text
    assert "_blocks.{0..15}._depthwise_conv.weight -> blocks.{0.0..6.0}.conv_dw.weight  (16)" in text
    assert "skipped for shape (2)" in text
    names = inspect_checkpoint(
        fixtures_dir / LITE0, model="timm:efficientnet_lite0", num_classes=10, align="names"
    )
    assert "a load would fail: no tensor loaded" in names


def test_finetune_init_checkpoint_takes_align(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transferkit.cli import main

    torch.save(randomised(OtherTiny()), tmp_path / "other.pt")
    base = ["finetune", "--backbone", "tests.tiny_models:tinynet", "--img-size", "16", "--workers", "0"]
    base += ["--quiet", "--limit-train", "32", "--limit-val", "32", "--eval-only"]
    base += ["--init-checkpoint", str(tmp_path / "other.pt"), "--weights", "none"]
    assert main([*base, "--align", "names"]) == 2
    assert "no tensor loaded" in capsys.readouterr().err
    assert main(base) == 0, capsys.readouterr().err
