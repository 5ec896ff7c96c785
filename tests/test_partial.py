"""Tests for transferkit.partial: load_partial and its reports, transactional checks, real checkpoints.

The report table's own formatting (key grouping, JSON) is tested in test_load_report.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

from transferkit.errors import CheckpointError, ConfigError, LoadError, UnsafeCheckpointError
from transferkit.load_report import LoadReport
from transferkit.partial import load_partial, suggest_prefix_rule
from transferkit.rename import Prefix, Regex, RenameOnLoadMixin

# ------------------------------------------------------------------------------------- test models


class LambdaShortcut(nn.Module):
    """Option-A shortcut of the CIFAR ResNets: subsample by 2 and zero-pad channels; no weights."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = LambdaShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-20 (n=3) / ResNet-56 (n=9) for CIFAR, as described in the fixtures README."""

    def __init__(self, n: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            layer = []
            for i in range(n):
                layer.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            blocks.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3 = blocks
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class LightningCNN(nn.Module):
    """The Lightning 2.5 fixture's network: three conv-relu-pool blocks, dropout, linear 128->10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 128, 3)
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return self.fc1(self.dropout(x.flatten(1)))


def lenet5_original() -> nn.Module:
    """LeNet-5 with the checkpoint's own names (convnet.c1 ..., fc.f6 ...)."""
    model = nn.Module()
    model.convnet = nn.Sequential()
    for name, module in [
        ("c1", nn.Conv2d(1, 6, 5)), ("relu1", nn.ReLU()), ("s2", nn.MaxPool2d(2)),
        ("c3", nn.Conv2d(6, 16, 5)), ("relu3", nn.ReLU()), ("s4", nn.MaxPool2d(2)),
        ("c5", nn.Conv2d(16, 120, 5)), ("relu5", nn.ReLU()),
    ]:  # fmt: skip
        model.convnet.add_module(name, module)
    model.fc = nn.Sequential()
    for name, module in [("f6", nn.Linear(120, 84)), ("relu6", nn.ReLU()), ("f7", nn.Linear(84, 10))]:
        model.fc.add_module(name, module)
    return model


class RenamedLeNet(nn.Module):
    """The same network under different names: features.conv{1,3,5}, classifier.fc{6,7}."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.ModuleDict(
            {"conv1": nn.Conv2d(1, 6, 5), "conv3": nn.Conv2d(6, 16, 5), "conv5": nn.Conv2d(16, 120, 5)}
        )
        self.classifier = nn.ModuleDict({"fc6": nn.Linear(120, 84), "fc7": nn.Linear(84, 10)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features
        x = F.max_pool2d(F.relu(f["conv1"](x)), 2)
        x = F.max_pool2d(F.relu(f["conv3"](x)), 2)
        x = F.relu(f["conv5"](x)).flatten(1)
        return self.classifier["fc7"](F.relu(self.classifier["fc6"](x)))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in after.items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), f"{k} changed"


def two_part(prefix: str = "backbone") -> nn.Module:
    model = nn.Module()
    model.add_module(prefix, nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    model.add_module("head", nn.Linear(4, 3))
    return model


# ----------------------------------------------------------------------------------------- basics


def test_loads_matching_and_reports_every_category() -> None:
    src = two_part()
    src.add_module("extra", nn.Linear(2, 2))
    src.head = nn.Linear(4, 5)
    dst = two_part()
    report = load_partial(dst, src)
    assert report.loaded == [k for k in src.state_dict() if k.startswith("backbone.")]
    assert report.mismatched == {"head.weight": ((5, 4), (3, 4)), "head.bias": ((5,), (3,))}
    assert report.unexpected == ["extra.weight", "extra.bias"]
    assert report.missing == []
    assert report.coverage == {"backbone": 1.0, "head": 0.0}
    assert torch.equal(dst.backbone[0].weight, src.backbone[0].weight)
    assert isinstance(report, LoadReport) and not report.ok


def test_strings_and_rules_and_nested_checkpoint_dicts() -> None:
    src = two_part("encoder").state_dict()
    dst = two_part()
    report = load_partial(dst, {"epoch": 3, "state_dict": src}, rules=["encoder.=>backbone."])
    assert report.renamed["encoder.0.weight"] == "backbone.0.weight"
    assert len(report.mismatched) == 0 and report.total_coverage == 1.0


def test_zero_tensors_is_an_error_with_a_suggested_rule_and_nothing_written() -> None:
    src = two_part("encoder").state_dict()
    src = {k: v for k, v in src.items() if not k.startswith("head.")}
    dst = two_part()
    before = snapshot(dst)
    with pytest.raises(LoadError) as info:
        load_partial(dst, src)
    message = str(info.value)
    assert "Prefix('encoder.', 'backbone.')" in message and "`rules`='encoder.=>backbone.'" in message
    assert info.value.report.loaded == []
    assert_identical(dst, before)


def test_zero_tensors_into_a_renaming_model_quotes_the_files_keys_and_a_rule_that_works() -> None:
    """An adapter adds "backbone." to every key (RenameOnLoadMixin): the error quotes the keys as the file has
    them, and the rule it suggests acts before that rename, so passing it loads everything."""
    from tests.tiny_models import tinynet
    from transferkit.backbones import create_model

    src = {f"enc.{k}": v for k, v in tinynet(num_classes=10).state_dict().items()}
    model = create_model("tests.tiny_models:tinynet", 10, weights=None)
    with pytest.raises(LoadError) as info:
        load_partial(model, src, align="names")  # "auto" would pair them by structure (test_align.py)
    message = str(info.value)
    assert "Checkpoint keys start with 'enc.' (14), e.g. 'enc.stem.conv.weight'" in message
    assert "'backbone.enc." not in message
    assert "`rules`='enc.=>backbone.'" in message
    report = load_partial(model, src, rules=[Prefix("enc.", "backbone.")])
    assert len(report.loaded) == 14 and report.ok

    # a partial load's hint is in the same space: half the keys under "enc.", the head as the network has it
    half = {k: v for k, v in src.items() if not k.startswith("enc.fc.")}
    half.update({k: v for k, v in tinynet(num_classes=10).state_dict().items() if k.startswith("fc.")})
    notes = load_partial(model, half).notes
    assert any("`rules`='enc.=>backbone.'" in n for n in notes), notes


def test_zero_tensors_without_a_prefix_swap_names_both_spellings_of_a_regex_rule() -> None:
    with pytest.raises(LoadError) as info:
        load_partial(nn.Linear(3, 2), {"unrelated.weight": torch.zeros(3, 3)})
    assert "write Regex rules (`rules`='re:PATTERN=>REPL') or a callable" in str(info.value)


def test_suggest_prefix_rule_handles_removal_and_addition() -> None:
    assert suggest_prefix_rule(["model.net.0.weight"], ["net.0.weight"]) == (Prefix("model.", ""), 1)
    assert suggest_prefix_rule(["0.weight", "0.bias"], ["body.0.weight", "body.0.bias"]) == (
        Prefix("", "body."),
        2,
    )
    assert suggest_prefix_rule(["a.weight"], ["b.bias"]) is None


def test_strict_raises_with_the_table_and_writes_nothing() -> None:
    src = two_part()
    src.head = nn.Linear(4, 5)
    dst = two_part()
    before = snapshot(dst)
    with pytest.raises(LoadError) as info:
        load_partial(dst, src, strict=True)
    assert "skipped for shape" in str(info.value) and "head.weight" in str(info.value)
    assert_identical(dst, before)
    # a strict load that fits succeeds
    assert load_partial(dst, two_part(), strict=True).ok


def test_min_coverage_per_module_and_whole_model_is_checked_before_writing() -> None:
    src = two_part()
    src.head = nn.Linear(4, 5)
    dst = two_part()
    before = snapshot(dst)
    with pytest.raises(LoadError, match="'head' is 0.0%"):
        load_partial(dst, src, min_coverage={"backbone": 1.0, "head": 0.5})
    with pytest.raises(LoadError, match="coverage of 'the model'"):
        load_partial(dst, src, min_coverage=0.99)
    with pytest.raises(ConfigError, match="no parameters"):
        load_partial(dst, src, min_coverage={"nope": 0.5})
    assert_identical(dst, before)
    assert load_partial(dst, src, min_coverage={"backbone.0": 1.0}).coverage["backbone"] == 1.0


def test_rename_conflict_names_both_keys_and_writes_nothing() -> None:
    src = two_part().state_dict()
    src["enc.0.weight"] = src["backbone.0.weight"].clone()
    dst = two_part()
    before = snapshot(dst)
    with pytest.raises(LoadError) as info:
        load_partial(dst, src, rules=[Prefix("enc.", "backbone.")])
    assert "'enc.0.weight'" in str(info.value) and "'backbone.0.weight'" in str(info.value)
    assert_identical(dst, before)


def test_unreadable_file_raises_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    dst = two_part()
    before = snapshot(dst)
    with pytest.raises(CheckpointError):
        load_partial(dst, bad)
    assert_identical(dst, before)


def test_dtype_differences_are_cast_and_listed() -> None:
    src = {k: v.half() if v.is_floating_point() else v for k, v in two_part().state_dict().items()}
    dst = two_part()
    report = load_partial(dst, src)
    assert report.cast["backbone.0.weight"] == ("float16", "float32")
    assert dst.backbone[0].weight.dtype == torch.float32
    assert torch.equal(dst.backbone[0].weight, src["backbone.0.weight"].float())
    assert "float16 -> float32" in str(report)


def test_meta_device_dry_run_and_assign_materialise_without_copy() -> None:
    src = two_part()
    src.head = nn.Linear(4, 5)
    with torch.device("meta"):
        dst = two_part()
    dry = load_partial(dst, src, dry_run=True)
    assert (
        dry.dry_run and dst.backbone[0].weight.is_meta and set(dry.mismatched) == {"head.weight", "head.bias"}
    )
    with pytest.raises(ConfigError, match="assign=True"):
        load_partial(dst, src)
    report = load_partial(dst, src, assign=True)
    weight = dst.backbone[0].weight
    assert not weight.is_meta and isinstance(weight, nn.Parameter)
    assert weight.data_ptr() == src.backbone[0].weight.data_ptr()  # adopted, not copied
    assert dst.head.weight.is_meta and report.loaded == dry.loaded


def test_model_hooks_and_wrappers_are_honoured() -> None:
    dst = two_part()
    calls = []
    dst.backbone[1].register_load_state_dict_pre_hook(lambda *args, **kw: calls.append(args[2]))
    wrapped = nn.DataParallel(dst)
    report = load_partial(wrapped, {f"_orig_mod.module.{k}": v for k, v in two_part().state_dict().items()})
    assert calls == ["backbone.1."]
    assert report.total_coverage == 1.0
    assert any("DataParallel" in n for n in report.notes)
    assert report.renamed["_orig_mod.module.head.weight"] == "head.weight"


# ------------------------------------------------------------------------------------ properties


@st.composite
def model_and_checkpoint(draw):  # type: ignore[no-untyped-def]
    n_mod = draw(st.integers(1, 3))
    shapes = st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple)
    model_spec: dict[str, tuple[int, ...]] = {}
    for m in range(n_mod):
        for p in range(draw(st.integers(1, 3))):
            model_spec[f"m{m}.p{p}"] = draw(shapes)
    ckpt_spec: dict[str, tuple[int, ...]] = {}
    for key, shape in model_spec.items():
        fate = draw(st.sampled_from(["same", "same", "reshaped", "absent"]))
        if fate == "same":
            ckpt_spec[key] = shape
        elif fate == "reshaped":
            ckpt_spec[key] = (*shape, 2)
    for i in range(draw(st.integers(0, 2))):
        ckpt_spec[f"extra{i}.w"] = draw(shapes)
    wrapper = draw(st.sampled_from(["", "module.", "_orig_mod.module."]))
    return model_spec, ckpt_spec, wrapper


def build(spec: dict[str, tuple[int, ...]]) -> nn.Module:
    root = nn.Module()
    for key, shape in spec.items():
        mod, name = key.split(".")
        if not hasattr(root, mod):
            root.add_module(mod, nn.Module())
        getattr(root, mod).register_parameter(name, nn.Parameter(torch.randn(shape)))
    return root


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_and_checkpoint())
@example(({"m0.p0": (3, 1)}, {"extra0.w": (3, 1)}, ""))  # no name matches; a structural pairing would load it
def test_property_every_key_is_accounted_for_and_loads_exactly(case) -> None:  # type: ignore[no-untyped-def]
    model_spec, ckpt_spec, wrapper = case
    model = build(model_spec)
    ckpt = {wrapper + k: torch.randn(s) for k, s in ckpt_spec.items()}
    before = snapshot(model)
    loadable = any(model_spec.get(k) == s for k, s in ckpt_spec.items())
    # pairing by names only: with the default align="auto", a checkpoint whose names load nothing is paired
    # by structure instead (tested in test_align.py), which can load what no name matches
    if not loadable:
        with pytest.raises(LoadError):
            load_partial(model, ckpt, align="names")
        assert_identical(model, before)
        return
    report = load_partial(model, ckpt, align="names")
    final = {report.renamed.get(k, k): k for k in ckpt}
    assert sorted([*report.loaded, *report.mismatched, *report.unexpected]) == sorted(final)
    assert sorted([*report.loaded, *report.mismatched, *report.missing]) == sorted(model_spec)
    after = model.state_dict()
    for key in model_spec:
        expected = ckpt[final[key]] if key in report.loaded else before[key]
        assert torch.equal(after[key], expected), key


# ---------------------------------------------------------------------------- real checkpoints


def test_cifar_resnet20_loads_with_full_parameter_coverage(fixtures_dir: Path) -> None:
    model = CifarResNet(n=3)
    report = load_partial(model, fixtures_dir / "cifar10_resnet20_dataparallel.th", strict=True)
    assert len(report.loaded) == 97 and not report.mismatched and not report.unexpected
    assert report.total_coverage == 1.0 and set(report.coverage.values()) == {1.0}
    assert report.loaded_params == 269_722
    assert all(k.endswith("num_batches_tracked") for k in report.missing) and len(report.missing) == 19
    assert report.renamed["module.layer3.2.bn2.running_var"] == "layer3.2.bn2.running_var"
    raw = torch.load(fixtures_dir / "cifar10_resnet20_dataparallel.th", map_location="cpu", weights_only=True)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, raw["state_dict"][f"module.{key}"]), key
    assert "{0..2}" in str(report)


def test_torchvision_squeezenet_corn4_into_ten_classes(fixtures_dir: Path) -> None:
    from torchvision.models import squeezenet1_0

    model = squeezenet1_0(num_classes=10)
    report = load_partial(model, fixtures_dir / "tv_squeezenet1_0_corn4.pth")
    assert report.mismatched == {
        "classifier.1.weight": ((4, 512, 1, 1), (10, 512, 1, 1)),
        "classifier.1.bias": ((4,), (10,)),
    }
    assert len(report.loaded) == 50 and not report.missing and not report.unexpected
    assert report.coverage["features"] == 1.0 and report.coverage["classifier"] == 0.0


def test_timm_mobilenetv3_seedlings12_into_ten_classes(fixtures_dir: Path) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv3_small_050", num_classes=10, pretrained=False)
    report = load_partial(model, fixtures_dir / "timm_mobilenetv3_small_050_seedlings12.pth")
    assert set(report.mismatched) == {"classifier.weight", "classifier.bias"}
    assert len(report.loaded) == 242 and not report.missing and not report.unexpected


def test_lightning25_checkpoint_weights_load(fixtures_dir: Path) -> None:
    model = LightningCNN()
    report = load_partial(model, fixtures_dir / "lightning25_mnist_cnn.ckpt", strict=True)
    assert len(report.loaded) == 8 and report.total_coverage == 1.0
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_lenet5_into_differently_named_model_through_regex_rules(fixtures_dir: Path) -> None:
    path = fixtures_dir / "mnist_lenet5.pth"
    model = RenamedLeNet()
    rules = [Regex(r"^convnet\.c(\d)\.", r"features.conv\1."), Regex(r"^fc\.f(\d)\.", r"classifier.fc\1.")]
    report = load_partial(model, path, rules=rules, strict=True)
    assert report.renamed["convnet.c5.weight"] == "features.conv5.weight"
    assert len(report.loaded) == 10 and report.total_coverage == 1.0
    reference = lenet5_original()
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    x = torch.randn(3, 1, 32, 32)
    out = reference.fc(reference.convnet(x).flatten(1))
    assert torch.allclose(model(x), out, atol=1e-6)


def test_resnet56_into_resnet20_stops_before_writing_when_strict(fixtures_dir: Path) -> None:
    model = CifarResNet(n=3)
    before = snapshot(model)
    with pytest.raises(LoadError) as info:
        load_partial(model, fixtures_dir / "cifar10_resnet56_dataparallel.th", strict=True)
    assert "unexpected" in str(info.value) and "{3..8}" in str(info.value)
    assert_identical(model, before)


def test_callable_rule_drops_keys_and_a_near_miss_gets_a_hint() -> None:
    src = {k.replace("backbone.", "enc."): v for k, v in two_part().state_dict().items()}
    report = load_partial(two_part(), src, rules=[lambda k: None if k == "head.bias" else k])
    assert report.dropped == ["head.bias"] and report.loaded == ["head.weight"]
    assert any("Prefix('enc.', 'backbone.')" in note for note in report.notes)
    with pytest.raises(LoadError, match="dropped all"):
        load_partial(two_part(), src, rules=[lambda k: None])


def test_coverage_lists_the_parts_of_a_single_wrapper_module() -> None:
    src, dst = nn.Module(), nn.Module()
    src.net, dst.net = two_part(), two_part()
    dst.net.head = nn.Linear(4, 7)
    report = load_partial(dst, src)
    assert report.coverage == {"net.backbone": 1.0, "net.head": 0.0}
    assert "net.backbone 100%  net.head 0%" in str(report)


def test_module_versions_reach_version_dependent_loaders() -> None:
    """A plain dict has no ``_metadata``; torchvision's MNASNet refuses ``version=None`` without it."""
    import torchvision

    source = torchvision.models.mnasnet0_5(num_classes=5)
    plain = {k: v.clone() for k, v in source.state_dict().items()}  # e.g. rebuilt by user code
    model = torchvision.models.mnasnet0_5(num_classes=10)
    report = load_partial(model, plain)
    assert sorted(report.mismatched) == ["classifier.1.bias", "classifier.1.weight"]
    assert torch.equal(model.layers[0].weight, source.layers[0].weight)


# ------------------------------------------------------------------------------ transactional safety


class _Guarded(RenameOnLoadMixin, nn.Module):
    """A part whose shape-mismatch policy is 'error'."""

    on_shape_mismatch = "error"

    def __init__(self, out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(4, out)


def _guarded_model(out: int = 3) -> nn.Module:
    model = two_part()
    model.guard = _Guarded(out)
    return model


def _fail_strict(model: nn.Module, tmp: Path) -> None:
    src = two_part()
    src.head = nn.Linear(4, 5)
    load_partial(model, src.state_dict(), strict=True)


def _fail_zero(model: nn.Module, tmp: Path) -> None:
    load_partial(model, {f"encoder.{k}": v for k, v in two_part().backbone.state_dict().items()})


def _fail_coverage(model: nn.Module, tmp: Path) -> None:
    load_partial(model, two_part().backbone.state_dict(), rules=["=>backbone."], min_coverage={"head": 0.5})


def _fail_conflict(model: nn.Module, tmp: Path) -> None:
    sd = _guarded_model().state_dict()
    sd["module.head.weight"] = sd["head.weight"].clone()
    load_partial(model, sd)


def _fail_unreadable(model: nn.Module, tmp: Path) -> None:
    path = tmp / "truncated.pt"
    torch.save(_guarded_model().state_dict(), path)
    path.write_bytes(path.read_bytes()[:-200])
    load_partial(model, path)


def _fail_unsafe(model: nn.Module, tmp: Path) -> None:
    path = tmp / "pickled_module.pt"
    torch.save({"state_dict": _guarded_model().state_dict(), "module": nn.Identity()}, path)
    load_partial(model, path)


def _fail_mixin_policy(model: nn.Module, tmp: Path) -> None:
    load_partial(model, _guarded_model(out=7))


def _fail_bad_rule(model: nn.Module, tmp: Path) -> None:
    load_partial(model, _guarded_model(), rules=[lambda k: 42])


def _fail_coverage_range(model: nn.Module, tmp: Path) -> None:
    load_partial(model, _guarded_model(), min_coverage=1.5)


FAILURES = {
    "strict": (_fail_strict, LoadError),
    "zero tensors": (_fail_zero, LoadError),
    "min_coverage": (_fail_coverage, LoadError),
    "rename conflict": (_fail_conflict, LoadError),
    "unreadable file": (_fail_unreadable, CheckpointError),
    "unsafe file": (_fail_unsafe, UnsafeCheckpointError),
    "mixin on_shape_mismatch=error": (_fail_mixin_policy, LoadError),
    "rule returning a non-string": (_fail_bad_rule, ConfigError),
    "min_coverage out of range": (_fail_coverage_range, ConfigError),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_every_failure_path_leaves_the_model_exactly_as_it_was(case: str, tmp_path: Path) -> None:
    fail, error = FAILURES[case]
    model = _guarded_model()
    model.backbone[1].running_mean.add_(3.0)  # buffers and counters count too
    model.backbone[1].num_batches_tracked.add_(5)
    before = snapshot(model)
    with pytest.raises(error) as info:
        fail(model, tmp_path)
    assert str(info.value)
    assert_identical(model, before)


def test_an_error_inside_the_models_own_loading_code_is_reported_as_such() -> None:
    """transferkit cannot undo writes made before the model's own code raised: the error says so."""

    class Refuses(nn.Linear):
        def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("this layer refuses to load")

    model = nn.Sequential(nn.Linear(2, 2), Refuses(2, 2))
    with pytest.raises(LoadError, match="refuses to load.*may already be written"):
        load_partial(model, nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))


def test_lazy_parameters_are_refused_before_anything_is_read_or_written() -> None:
    model = nn.Sequential(nn.LazyLinear(3), nn.Linear(3, 2))
    before = model[1].weight.detach().clone()
    with pytest.raises(ConfigError, match="lazy.*forward pass"):
        load_partial(model, nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)))
    assert torch.equal(model[1].weight, before)


def test_extra_state_in_a_plain_state_dict_loads_through_set_extra_state() -> None:
    class WithExtra(nn.Module):
        def __init__(self, tag: int) -> None:
            super().__init__()
            self.fc, self.tag = nn.Linear(2, 2), tag

        def get_extra_state(self) -> dict:
            return {"tag": self.tag}

        def set_extra_state(self, state: dict) -> None:
            self.tag = state["tag"]

    model = WithExtra(0)
    report = load_partial(model, dict(WithExtra(7).state_dict()))
    assert model.tag == 7 and "_extra_state" in report.loaded


def test_a_load_from_state_dict_override_of_a_submodule_runs() -> None:
    """Loading goes through the model's own load_state_dict, so a submodule's override sees its keys."""

    class Transposed(nn.Linear):
        def _load_from_state_dict(self, state_dict, prefix, *args):  # type: ignore[no-untyped-def]
            key = prefix + "weight"
            if key in state_dict:
                state_dict[key] = state_dict[key].t()  # stored transposed, like GPT-2's Conv1D
            super()._load_from_state_dict(state_dict, prefix, *args)

    model = nn.Sequential(nn.Linear(3, 3), Transposed(3, 3))
    src = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    report = load_partial(model, src)
    assert report.total_coverage == 1.0
    assert torch.equal(model[1].weight, src["1.weight"].t())


# ------------------------------------------------------------------------------ wrapper prefixes, real file


@pytest.mark.parametrize("wrapper", ["model.", "model._orig_mod.", "model.module.", "_orig_mod.module."])
def test_lightning_25_weights_load_under_every_wrapper_prefix(
    fixtures_dir: Path, tmp_path: Path, wrapper: str
) -> None:
    ckpt = torch.load(fixtures_dir / "lightning25_mnist_cnn.ckpt", map_location="cpu", weights_only=True)
    ckpt["state_dict"] = {wrapper + k: v for k, v in ckpt["state_dict"].items()}
    path = tmp_path / "wrapped.ckpt"
    torch.save(ckpt, path)
    model = LightningCNN()
    report = load_partial(model, path, strict=True)
    assert report.total_coverage == 1.0 and len(report.renamed) == 8
    assert torch.equal(model.fc1.weight, ckpt["state_dict"][wrapper + "fc1.weight"])


def test_a_real_child_called_model_keeps_its_prefix() -> None:
    """Lightning's `model.` is stripped only when that makes keys match, never from a real child `model`."""
    outer = nn.Module()
    outer.model = LightningCNN()
    src = {f"model.{k}": torch.randn_like(v) for k, v in outer.model.state_dict().items()}
    report = load_partial(outer, src, strict=True)
    assert not report.renamed and torch.equal(outer.model.conv1.weight, src["model.conv1.weight"])


# ------------------------------------------------------------------------------ properties with rules, casts


@st.composite
def renamed_model_and_checkpoint(draw):  # type: ignore[no-untyped-def]
    model_spec, ckpt_spec, wrapper = draw(model_and_checkpoint())
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    return model_spec, ckpt_spec, wrapper, dtype


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(renamed_model_and_checkpoint())
def test_property_holds_through_a_rename_rule_and_dtype_casts(case) -> None:  # type: ignore[no-untyped-def]
    """The checkpoint names module m0 `old0` (a Prefix rule maps it back) and stores another dtype."""
    model_spec, ckpt_spec, wrapper, dtype = case
    model = build(model_spec)
    ckpt = {
        wrapper + (k.replace("m0.", "old0.", 1) if k.startswith("m0.") else k): torch.randn(s).to(dtype)
        for k, s in ckpt_spec.items()
    }
    before = snapshot(model)
    if not any(model_spec.get(k) == s for k, s in ckpt_spec.items()):
        with pytest.raises(LoadError):
            load_partial(model, ckpt, rules=[Prefix("old0.", "m0.")])
        assert_identical(model, before)
        return
    report = load_partial(model, ckpt, rules=[Prefix("old0.", "m0.")])
    final = {report.renamed.get(k, k): k for k in ckpt}
    assert sorted([*report.loaded, *report.mismatched, *report.unexpected]) == sorted(final)
    assert sorted([*report.loaded, *report.mismatched, *report.missing]) == sorted(model_spec)
    assert set(report.cast) == (set(report.loaded) if dtype != torch.float32 else set())
    after = model.state_dict()
    for key in model_spec:
        expected = ckpt[final[key]].float() if key in report.loaded else before[key]
        assert after[key].dtype == torch.float32 and torch.equal(after[key], expected), key


# ---------------------------------------------------------------------------------- adversarial API inputs


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.out = nn.Linear(4, 5, bias=False)
        self.out.weight = self.emb.weight


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_non_string_keys_are_refused_with_the_fix() -> None:
    state = {**nn.Linear(2, 2).state_dict(), 5: torch.zeros(2)}
    with pytest.raises(ConfigError, match=r"not strings: 5 \(int\).*str\(k\)"):
        load_partial(nn.Linear(2, 2), state)


def test_model_argument_must_be_a_module() -> None:
    src = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="load_partial\\(model, source\\)"):
        load_partial(src.state_dict(), src)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["0.5", True, [0.5], {"weight": "high"}])
def test_min_coverage_of_the_wrong_type_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="min_coverage"):
        load_partial(nn.Linear(2, 2), nn.Linear(2, 2).state_dict(), min_coverage=bad)  # type: ignore[arg-type]


def test_meta_device_checkpoint_tensors_are_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    model = nn.Linear(2, 2)
    before = _snapshot(model)
    with pytest.raises(ConfigError, match="meta device.*map_location='cpu'"):
        load_partial(model, path, map_location="meta")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert load_partial(model, path, map_location="meta", dry_run=True).loaded == ["weight", "bias"]


def test_sparse_checkpoint_tensors_load_dense() -> None:
    src = nn.Linear(3, 3)
    state = {"weight": src.weight.detach().to_sparse(), "bias": src.bias.detach()}
    model = nn.Linear(3, 3)
    report = load_partial(model, state, strict=True)
    assert torch.equal(model.weight, src.weight) and model.weight.layout == torch.strided
    assert any("sparse" in n for n in report.notes)


def test_tied_weights_stored_once_load_strictly_and_count_once() -> None:
    src, dst = _Tied(), _Tied()
    report = load_partial(dst, {"emb.weight": src.emb.weight.detach().clone()}, strict=True)
    assert report.missing == [] and report.total_params == 20 and report.total_coverage == 1.0
    assert torch.equal(dst.out.weight, src.emb.weight)


def test_assign_keeps_weight_tying() -> None:
    src = _Tied()
    with torch.device("meta"):
        dst = _Tied()
    load_partial(dst, {"out.weight": src.emb.weight.detach().clone()}, assign=True)
    assert dst.out.weight is dst.emb.weight and not dst.emb.weight.is_meta
    both = _Tied()
    load_partial(both, src.state_dict(), assign=True)
    assert both.out.weight is both.emb.weight


def test_tied_weights_given_two_values_are_noted() -> None:
    report = load_partial(_Tied(), {"emb.weight": torch.ones(5, 4), "out.weight": torch.zeros(5, 4)})
    assert any("tied weights emb.weight, out.weight" in n for n in report.notes)


def test_non_tensor_entries_are_named_in_the_error() -> None:
    state = {"weight": None, "bias": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"'weight' \(NoneType\)"):
        load_partial(nn.Linear(2, 2), state)


def test_min_coverage_on_a_model_without_parameters_says_so():
    """Issue 16 item 16: a buffers-only model gave "min_coverage names ''"."""
    model = nn.BatchNorm1d(3, affine=False)
    with pytest.raises(ConfigError, match="this model has none \\(only buffers\\)"):
        load_partial(model, dict(model.state_dict()), min_coverage=0.5)


# ------------------------------------------------------- the model's own loading code sees every key (#16)


class _LegacyNames(nn.Module):
    """Renames its legacy keys (``fc.w``/``fc.b``) in its own ``_load_from_state_dict``, as old code does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2, 3)

    def _load_from_state_dict(self, state_dict, prefix, *args):  # type: ignore[no-untyped-def]
        for old, new in (("fc.w", "fc.weight"), ("fc.b", "fc.bias")):
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args)


def _legacy_checkpoint() -> dict[str, torch.Tensor]:
    src = _LegacyNames()
    state = {k: torch.randn_like(v) for k, v in src.state_dict().items()}
    state["fc.w"], state["fc.b"] = state.pop("fc.weight"), state.pop("fc.bias")
    return state


def test_an_override_that_renames_legacy_keys_sees_them_and_the_report_says_they_loaded() -> None:
    state = _legacy_checkpoint()
    plain = _LegacyNames()
    plain.load_state_dict(state)  # what torch itself does with this model
    model = _LegacyNames()
    report = load_partial(model, state)
    assert torch.equal(model.fc.weight, state["fc.w"]) and torch.equal(model.fc.bias, state["fc.b"])
    assert torch.equal(model.fc.weight, plain.fc.weight)
    assert set(report.loaded) == {"conv.weight", "conv.bias", "fc.weight", "fc.bias"}
    assert report.missing == [] and report.unexpected == [] and report.total_coverage == 1.0
    assert any("consumed 2 key(s)" in n and "fc.{w,b}" in n for n in report.notes), report.notes


def test_an_override_fed_only_legacy_keys_loads_them_instead_of_refusing() -> None:
    """Nothing matches by name, yet the model's own code knows the keys: they are offered, not refused."""
    state = {k: v for k, v in _legacy_checkpoint().items() if k.startswith("fc.")}
    model = _LegacyNames()
    report = load_partial(model, state)
    assert torch.equal(model.fc.weight, state["fc.w"])
    assert sorted(report.loaded) == ["fc.bias", "fc.weight"]


def test_an_override_that_ignores_offered_keys_is_reported_as_not_loaded() -> None:
    """The report says what was written, never what was offered."""

    class Ignores(nn.Linear):
        def _load_from_state_dict(self, *args: object) -> None:
            pass  # an override that drops everything it is given

    model = nn.Sequential(nn.Linear(2, 2), Ignores(2, 2))
    before = model[1].weight.detach().clone()
    src = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    report = load_partial(model, src)
    assert torch.equal(model[1].weight, before)  # unchanged, as the override decided
    assert report.loaded == ["0.weight", "0.bias"]
    assert set(report.missing) == {"1.weight", "1.bias"}
    assert report.total_coverage == pytest.approx(6 / 12)
    assert "loaded 2/4" in report.summary() and "100" not in report.summary()
    assert any("left 2 offered tensor(s) unwritten" in n for n in report.notes), report.notes


def test_an_override_that_ignores_everything_is_a_zero_load_error() -> None:
    class IgnoresAll(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def _load_from_state_dict(self, state_dict, prefix, *args):  # type: ignore[no-untyped-def]
            for key in [k for k in state_dict if k.startswith(prefix)]:
                del state_dict[key]  # consumed and thrown away

    model = IgnoresAll()
    before = model.fc.weight.detach().clone()
    with pytest.raises(LoadError, match="match model keys by name, but the model's own loading code") as info:
        load_partial(model, {k: torch.ones_like(v) for k, v in model.state_dict().items()})
    assert torch.equal(model.fc.weight, before)
    report = info.value.report  # type: ignore[attr-defined]
    assert report.loaded == [] and report.total_coverage == 0.0 and "loaded 0/2" in report.summary()
