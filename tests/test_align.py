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
    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__()
        self._conv = nn.Conv2d(cin, cout, k, bias=False)
        self._bn = nn.BatchNorm2d(cout)


class OtherTiny(nn.Module):
    """TinyNet as another implementation would write it: same tensors, same order, other names."""

    def __init__(self, num_classes: int = 10, width: int = 8, kernel: int = 3, blocks: int = 1) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, width, 3, bias=False)
        self._bn0 = nn.BatchNorm2d(width)
        self._blocks = nn.ModuleList(
            [_Block(width, 2 * width, kernel)] + [_Block(2 * width, 2 * width) for _ in range(blocks - 1)]
        )
        self._fc = nn.Linear(2 * width, num_classes)


class Repeated(nn.Module):
    """A stem, ``n`` identical blocks, a head: a checkpoint missing one block could fit in ``n`` ways."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, bias=False)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)) for _ in range(n)])
        self.head = nn.Linear(8, 4)


def randomised(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (torch.randn_like(v) if v.is_floating_point() else v + 3) for k, v in model.state_dict().items()
    }


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
    with pytest.raises(ConfigError, match="align must be one of 'auto', 'names', 'structure'"):
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
    with pytest.raises(ConfigError, match="align must be one of"):
        create_model("tests.tiny_models:tinynet", 10, weights=None, align="shape")


def test_create_model_aligns_a_local_file_and_decides_the_head_on_the_pairs(tmp_path: Path) -> None:
    state = randomised(OtherTiny())
    torch.save(state, tmp_path / "other.pt")
    kept = create_model("tests.tiny_models:tinynet", 10, weights=tmp_path / "other.pt")
    assert kept.load_report.method == "structure" and torch.equal(
        kept.backbone.fc.weight, state["_fc.weight"]
    )
    fresh = create_model("tests.tiny_models:tinynet", 10, weights=tmp_path / "other.pt", head="fresh")
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
