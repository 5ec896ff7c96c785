"""Tests for transferkit.rename: rules, CLI parsing, wrapper cleaning, and the rename-on-load mixin."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferkit.errors import ConfigError, LoadError
from transferkit.partial import load_partial
from transferkit.rename import (
    Prefix,
    Regex,
    RenameOnLoadMixin,
    apply_rules,
    clean_keys,
    normalize_rules,
    parse_rule,
    rename_keys,
    strip_wrappers,
)

MMDET_RULES = (
    Prefix("backbone.", "img_backbone."),
    Prefix("neck.", "img_neck."),
    Prefix("rpn_head.", "img_rpn_head."),
    Prefix("roi_head.", "img_roi_head."),
)


def _parts(prefix: str, num_classes: int) -> dict[str, nn.Module]:
    return {
        f"{prefix}backbone": nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)),
        f"{prefix}neck": nn.Conv2d(4, 4, 1),
        f"{prefix}rpn_head": nn.Conv2d(4, 3, 1),
        f"{prefix}roi_head": nn.Linear(4, num_classes),
    }


class OldDetector(nn.Module):
    """The layout the checkpoint was saved in (mmdet-style names)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        for name, module in _parts("", num_classes).items():
            self.add_module(name, module)


class Detector(RenameOnLoadMixin, nn.Module):
    """The new layout: every part is prefixed ``img_``; old checkpoints still load."""

    load_rules = MMDET_RULES

    def __init__(self, num_classes: int = 5, on_shape_mismatch: str = "skip") -> None:
        super().__init__()
        self.on_shape_mismatch = on_shape_mismatch
        for name, module in _parts("img_", num_classes).items():
            self.add_module(name, module)


class Outer(nn.Module):
    """Puts a detector two levels deep, next to modules of its own."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.towers = nn.ModuleDict({"det": detector})


def _old_checkpoint(num_classes: int = 5) -> dict[str, torch.Tensor]:
    return Outer(OldDetector(num_classes)).state_dict()


# ------------------------------------------------------------------------------------------------ rules


def test_prefix_regex_and_callable_rules_chain_in_order() -> None:
    rules = [Prefix("encoder.", "backbone."), Regex(r"\.c(\d)\.", r".conv\1."), lambda k: k.upper()]
    assert apply_rules("encoder.c1.weight", rules) == "BACKBONE.CONV1.WEIGHT"
    assert apply_rules("head.weight", [lambda k: None]) is None
    assert Prefix("x.", "y.")("other.x.w") == "other.x.w"


def test_parse_rule_accepts_both_forms() -> None:
    assert parse_rule("encoder.=>backbone.") == Prefix("encoder.", "backbone.")
    assert parse_rule("module.=>") == Prefix("module.", "")
    assert parse_rule("=>backbone.") == Prefix("", "backbone.")
    rule = parse_rule(r"re:^convnet\.c(\d)=>features.\1")
    assert isinstance(rule, Regex)
    assert rule("convnet.c3.weight") == "features.3.weight"
    assert str(rule) == r"re:^convnet\.c(\d)=>features.\1"
    assert parse_rule(str(Prefix("a.", "b."))) == Prefix("a.", "b.")


@pytest.mark.parametrize("text", ["encoder.", "a=>b=>c", "re:nothing", "re:=>x", "re:([=>x", "same=>same"])
def test_parse_rule_rejects_bad_syntax_naming_the_accepted_forms(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rule(text)
    assert "OLD=>NEW" in str(info.value) or "regular expression" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_normalize_rules_mixes_strings_and_objects() -> None:
    assert normalize_rules(None) == ()
    assert normalize_rules("a.=>b.") == (Prefix("a.", "b."),)
    with pytest.raises(ConfigError, match="rename rule must be"):
        normalize_rules([42])


def test_two_keys_landing_on_one_target_is_an_error_naming_both() -> None:
    with pytest.raises(LoadError) as info:
        rename_keys(["enc.w", "backbone.w"], [Prefix("enc.", "backbone.")])
    assert "'enc.w'" in str(info.value) and "'backbone.w'" in str(info.value)


# ------------------------------------------------------------------------------------- wrapper cleaning


@pytest.mark.parametrize(
    "key",
    [
        "module.layer1.0.weight",
        "_orig_mod.layer1.0.weight",
        "_orig_mod.module.layer1.0.weight",
        "module._orig_mod.layer1.0.weight",
        "module.module.layer1.0.weight",
    ],
)
def test_strip_wrappers_in_any_order(key: str) -> None:
    assert strip_wrappers(key) == "layer1.0.weight"


def test_lightning_model_prefix_stripped_only_when_it_makes_keys_match() -> None:
    keys = ["model._orig_mod.fc.weight", "model.fc.bias"]
    mapping, notes = clean_keys(keys, ["fc.weight", "fc.bias"])
    assert mapping == {"model._orig_mod.fc.weight": "fc.weight", "model.fc.bias": "fc.bias"}
    assert notes
    # a model that really has a child called `model` keeps the prefix
    mapping, _ = clean_keys(["model.fc.weight"], ["model.fc.weight"])
    assert mapping == {"model.fc.weight": "model.fc.weight"}
    # with no model to compare against, `model.` is kept (it may be a real name)
    assert clean_keys(["model.fc.weight"])[0] == {"model.fc.weight": "model.fc.weight"}


# ---------------------------------------------------------------------------------------- the mixin


def test_mixin_renames_mmdet_layout_nested_two_deep_without_touching_callers_dict() -> None:
    ckpt = _old_checkpoint()
    before_keys = list(ckpt)
    before_ids = {k: id(v) for k, v in ckpt.items()}
    model = Outer(Detector())
    model.load_state_dict(ckpt)  # strict: every old key is accepted under its new name
    assert list(ckpt) == before_keys and {k: id(v) for k, v in ckpt.items()} == before_ids
    for key, value in model.state_dict().items():
        old = key.replace("img_", "")
        assert torch.equal(value, ckpt[old]), key
    report = model.towers.det.load_report
    assert report.renamed["towers.det.backbone.0.weight"] == "towers.det.img_backbone.0.weight"
    assert "towers.det.img_roi_head.weight" in report.loaded
    assert not report.missing and not report.unexpected and not report.mismatched
    assert report.total_coverage == 1.0


def test_mixin_skips_shape_mismatch_and_records_it() -> None:
    ckpt = _old_checkpoint(num_classes=5)
    model = Outer(Detector(num_classes=7))
    head_before = model.towers.det.img_roi_head.weight.detach().clone()
    result = model.load_state_dict(ckpt, strict=False)
    report = model.towers.det.load_report
    assert report.mismatched == {
        "towers.det.img_roi_head.weight": ((5, 4), (7, 4)),
        "towers.det.img_roi_head.bias": ((5,), (7,)),
    }
    assert set(result.missing_keys) == {"towers.det.img_roi_head.weight", "towers.det.img_roi_head.bias"}
    assert not result.unexpected_keys
    assert torch.equal(model.towers.det.img_roi_head.weight, head_before)
    assert torch.equal(model.towers.det.img_neck.weight, ckpt["towers.det.neck.weight"])
    assert report.coverage["img_roi_head"] == 0.0 and report.coverage["img_neck"] == 1.0


def test_mixin_error_policy_raises_before_writing_its_part() -> None:
    ckpt = _old_checkpoint(num_classes=5)
    model = Outer(Detector(num_classes=7, on_shape_mismatch="error"))
    neck_before = model.towers.det.img_neck.weight.detach().clone()
    with pytest.raises(LoadError, match="img_roi_head.weight"):
        model.load_state_dict(ckpt, strict=False)
    assert torch.equal(model.towers.det.img_neck.weight, neck_before)


def test_mixin_listed_after_nn_module_still_renames() -> None:
    class LateMixin(nn.Module, RenameOnLoadMixin):
        load_rules = ("enc.=>backbone.",)

        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Linear(2, 2)

    model = LateMixin()
    src = {"enc.weight": torch.ones(2, 2), "enc.bias": torch.zeros(2)}
    model.load_state_dict(src)
    assert torch.equal(model.backbone.weight, torch.ones(2, 2))
    assert model.load_report.renamed == {"enc.weight": "backbone.weight", "enc.bias": "backbone.bias"}


def test_mixin_rename_conflict_is_an_error() -> None:
    model = Outer(Detector())
    ckpt = _old_checkpoint()
    ckpt["towers.det.img_neck.weight"] = ckpt["towers.det.neck.weight"].clone()
    with pytest.raises(LoadError, match="neck.weight"):
        model.load_state_dict(ckpt)


def test_load_partial_predicts_the_mixins_renames() -> None:
    ckpt = _old_checkpoint(num_classes=5)
    model = Outer(Detector(num_classes=7))
    report = load_partial(model, {f"module.{k}": v for k, v in ckpt.items()})
    assert report.renamed["module.towers.det.rpn_head.weight"] == "towers.det.img_rpn_head.weight"
    assert set(report.mismatched) == {"towers.det.img_roi_head.weight", "towers.det.img_roi_head.bias"}
    assert not report.unexpected
    assert not report.missing  # skipped-for-shape keys are listed once, under mismatched
    assert torch.equal(model.towers.det.img_rpn_head.weight, ckpt["towers.det.rpn_head.weight"])


def _nest(module: nn.Module, depth: int) -> nn.Module:
    for i in range(depth):
        outer = nn.Module()
        outer.add_module(f"level{i}", module)
        module = outer
    return module


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_mixin_works_at_any_depth_and_leaves_the_callers_dict_alone(depth: int) -> None:
    ckpt = _nest(OldDetector(), depth).state_dict()
    snapshot = {k: (id(v), v.clone()) for k, v in ckpt.items()}
    model = _nest(Detector(), depth)
    model.load_state_dict(ckpt)
    assert {k: id(v) for k, v in ckpt.items()} == {k: i for k, (i, _) in snapshot.items()}
    assert all(torch.equal(ckpt[k], v) for k, (_, v) in snapshot.items())  # values unchanged too
    detector = model.get_submodule(".".join(f"level{i}" for i in reversed(range(depth))))
    prefix = "".join(f"level{i}." for i in reversed(range(depth)))
    assert detector.load_report.renamed[f"{prefix}neck.weight"] == f"{prefix}img_neck.weight"
    assert torch.equal(detector.img_neck.weight, ckpt[f"{prefix}neck.weight"])


def test_a_mixin_inside_a_mixin_renames_twice() -> None:
    class Wrapper(RenameOnLoadMixin, nn.Module):
        load_rules = (Prefix("det.", "detector."),)

        def __init__(self) -> None:
            super().__init__()
            self.detector = Detector()

    old = nn.Module()
    old.det = OldDetector()
    ckpt = old.state_dict()
    model = Wrapper()
    model.load_state_dict(ckpt)
    assert torch.equal(model.detector.img_rpn_head.weight, ckpt["det.rpn_head.weight"])
    assert model.load_report.renamed["det.rpn_head.weight"] == "detector.img_rpn_head.weight"
    # load_partial predicts the same two-step rename before writing
    report = load_partial(Wrapper(), ckpt, strict=True)
    assert report.renamed["det.rpn_head.weight"] == "detector.img_rpn_head.weight"


def test_a_rule_that_raises_is_named_with_the_key() -> None:
    def broken(key: str) -> str:
        raise KeyError(key)

    with pytest.raises(ConfigError, match=r"raised KeyError on key 'weight'"):
        load_partial(nn.Linear(2, 2), nn.Linear(2, 2).state_dict(), rules=[broken])


@pytest.mark.parametrize("bad", [3, {"a.": "b."}])
def test_rules_that_are_not_rules_or_lists_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="rules must be one rule or a list"):
        normalize_rules(bad)  # type: ignore[arg-type]
