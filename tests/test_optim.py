"""Tests for transferkit.optim: named groups of trainable parameters, no-decay rules, discriminative rates."""

from __future__ import annotations

import pytest
import torch
from schedule_models import TiedNet, TinyNet
from torch import nn

from transferkit import create_model
from transferkit.errors import ConfigError
from transferkit.freeze import freeze, freeze_backbone, unfreeze
from transferkit.optim import add_param_group, build_optimizer, no_decay_names, optimizer_names


def _ids(optimizer: torch.optim.Optimizer) -> list[int]:
    return [id(p) for g in optimizer.param_groups for p in g["params"]]


def _trainable_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "nadam", "radam", "AdamW"])
def test_every_optimizer_builds_and_steps(name):
    model = TinyNet()
    opt = build_optimizer(model, name, lr=1e-2, weight_decay=1e-3)
    assert sorted(_ids(opt)) == sorted(_trainable_ids(model))
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    before = model.head.weight.clone()
    opt.step()
    assert not torch.equal(before, model.head.weight)


def test_groups_are_named_and_carry_initial_lr():
    opt = build_optimizer(TinyNet(), "adamw", lr=1e-3, weight_decay=0.05)
    names = [g["name"] for g in opt.param_groups]
    assert names == [
        "stem",
        "stem.no_decay",
        "layer1",
        "layer1.no_decay",
        "layer2",
        "layer2.no_decay",
        "head",
        "head.no_decay",
    ]
    for g in opt.param_groups:
        assert g["initial_lr"] == g["lr"] == 1e-3
        assert g["weight_decay"] == (0.0 if g["name"].endswith("no_decay") else 0.05)
        assert len(g["param_names"]) == len(g["params"])


def test_no_decay_for_bias_and_norm_weights():
    model = TinyNet()
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.1)
    decayed = {n for g in opt.param_groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert decayed == {"stem.0.weight", "layer1.0.weight", "layer2.0.weight", "head.weight"}
    assert "layer1.1.weight" in no_decay_names(model)  # a BN weight
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.1, no_decay_bias_norm=False)
    assert all(g["weight_decay"] == 0.1 for g in opt.param_groups)


def test_only_trainable_parameters_by_identity():
    model = TinyNet()
    freeze_backbone(model)
    opt = build_optimizer(model, "adamw", lr=1e-3)
    assert [g["name"] for g in opt.param_groups] == ["head"]
    assert set(_ids(opt)) == _trainable_ids(model)


def test_tied_weights_appear_once():
    model = TiedNet()
    opt = build_optimizer(model, "sgd", lr=0.1, lr_decay=0.5)
    ids = _ids(opt)
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    # the shared tensor is in "head" (listed there by its alias), so at the head's rate
    head = next(g for g in opt.param_groups if g["name"] == "head")
    assert any(p is model.emb.weight for p in head["params"])
    assert head["lr"] == 0.1


def test_discriminative_rates_by_layer_group():
    model = TinyNet()
    opt = build_optimizer(model, "sgd", lr=0.1, lr_decay=0.5)
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    assert rates == pytest.approx({"stem": 0.0125, "layer1": 0.025, "layer2": 0.05, "head": 0.1})
    # a frozen group keeps its level: layer2 stays at lr * decay even when stem/layer1 are frozen
    freeze(model, "stem", "layer1")
    rates = {g["name"]: g["lr"] for g in build_optimizer(model, "sgd", lr=0.1, lr_decay=0.5).param_groups}
    assert rates == pytest.approx({"layer2": 0.05, "head": 0.1})


def test_custom_groups_and_leftovers():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1))
    opt = build_optimizer(model, "sgd", lr=1.0, lr_decay=0.1, groups={"low": "0", "top": "1"})
    assert [(g["name"], len(g["params"])) for g in opt.param_groups] == [("low", 2), ("top", 4)]
    with pytest.raises(ConfigError, match="layer_groups"):
        build_optimizer(model, "sgd", lr_decay=0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "adamm"}, "adam"),
        ({"name": "lion"}, "expected one of"),
        ({"lr": 0}, "lr must be"),
        ({"lr": float("nan")}, "lr must be"),
        ({"weight_decay": -1}, "weight_decay"),
        ({"lr_decay": 0.0}, "lr_decay"),
        ({"lr_decay": 1.5}, "lr_decay"),
        ({"momentum": 1.0}, "momentum"),
        ({"betas": (0.9,)}, "betas"),
        ({"name": "adam", "nesterov": True}, "nesterov"),
        ({"name": "sgd", "momentum": 0.0, "nesterov": True}, "momentum > 0"),
        # options the chosen optimizer would silently ignore
        ({"name": "sgd", "betas": (0.9, 0.99)}, "'sgd' does not take betas"),
        ({"name": "sgd", "eps": 1e-6}, "'sgd' does not take eps .*rmsprop"),
        ({"name": "adamw", "momentum": 0.5}, "'adamw' does not take momentum .*sgd"),
        ({"name": "rmsprop", "betas": (0.9, 0.99)}, "does not take betas .*adam"),
    ],
)
def test_bad_options_raise_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_optimizer(TinyNet(), **kwargs)


def test_empty_trainable_set_raises():
    model = TinyNet()
    freeze(model)
    with pytest.raises(ConfigError, match="no trainable parameter"):
        build_optimizer(model)
    assert "sgd" in optimizer_names()


def test_add_param_group_skips_present_and_frozen_and_follows_schedule():
    model = TinyNet()
    freeze_backbone(model)
    opt = build_optimizer(model, "adamw", lr=1e-2, weight_decay=0.01)
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * 0.25  # as a schedule would have scaled them
    assert add_param_group(opt, model, "layer2", lr=1e-3, group_name="layer2") == []  # still frozen
    unfreeze(model, "layer2", "head")
    added = add_param_group(opt, model, ["layer2", "head"], lr=1e-3, group_name="layer2")
    assert [g["name"] for g in added] == ["layer2", "layer2.no_decay"]
    assert [g["initial_lr"] for g in added] == [1e-3, 1e-3]
    assert [g["lr"] for g in added] == pytest.approx([2.5e-4, 2.5e-4])
    assert added[0]["weight_decay"] == 0.01 and added[1]["weight_decay"] == 0.0
    ids = _ids(opt)
    assert len(ids) == len(set(ids)) and set(ids) == _trainable_ids(model)


def test_add_param_group_to_a_plain_torch_optimizer():
    model = TinyNet()
    freeze(model, "stem")
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)  # groups without names
    added = add_param_group(opt, model, "layer1", lr=0.01, group_name="layer1", weight_decay=0.0)
    assert [g["name"] for g in added] == ["layer1"] and "param_names" not in added[0]


def test_options_each_optimizer_takes_reach_it():
    model = TinyNet()
    sgd = build_optimizer(model, "sgd", lr=0.1, nesterov=True)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"]
    adam = build_optimizer(model, "adam", lr=0.1, betas=(0.8, 0.9), eps=1e-6)
    assert adam.defaults["betas"] == (0.8, 0.9) and adam.defaults["eps"] == 1e-6
    assert build_optimizer(model, "rmsprop", lr=0.1, momentum=0.0).defaults["momentum"] == 0.0


def test_layer_wise_rates_on_a_real_adapter():
    """ResNet-18's six layer groups: the head at lr, each group below it at the rate above times lr_decay."""
    model = create_model("resnet18", num_classes=10, weights=None)
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05, lr_decay=0.5)
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    expected = {
        g: 1e-3 * 0.5**k for k, g in enumerate(["head", "layer4", "layer3", "layer2", "layer1", "stem"])
    }
    assert rates == pytest.approx({**expected, **{f"{g}.no_decay": r for g, r in expected.items()}})
    decayed = {n for g in opt.param_groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert decayed == {n for n, p in model.named_parameters() if p.ndim > 1}  # convs and fc weight only
    assert set(_ids(opt)) == _trainable_ids(model) and len(_ids(opt)) == len(set(_ids(opt)))


def test_groups_must_be_a_dict_and_the_model_a_module() -> None:
    with pytest.raises(ConfigError, match="groups must be a dict"):
        build_optimizer(TinyNet(), groups=["stem"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="build_optimizer needs the model itself"):
        build_optimizer(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a torch optimizer"):
        add_param_group("adam", TinyNet(), "head", lr=1e-3, group_name="x")  # type: ignore[arg-type]


def test_head_lr_scale_lifts_the_head_only() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1))
    groups = {"low": "0", "mid": "1", "head": "2"}
    opt = build_optimizer(m, "adamw", lr=1e-3, lr_decay=0.5, groups=groups, head_lr_scale=10)
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    assert rates["head"] == pytest.approx(1e-2) and rates["mid"] == pytest.approx(5e-4)
    assert rates["low"] == pytest.approx(2.5e-4)
    with pytest.raises(ConfigError, match="head_lr_scale must be a positive number"):
        build_optimizer(m, "adamw", groups=groups, head_lr_scale=0)
