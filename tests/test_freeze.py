"""Tests for transferkit.freeze: selectors, freeze/unfreeze, the BatchNorm policy, summary."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
import torch
from schedule_models import TiedNet, TinyNet, tiny_data
from torch import nn

from transferkit import create_model
from transferkit.errors import ConfigError
from transferkit.freeze import (
    convert_frozen_bn,
    freeze,
    freeze_backbone,
    is_bn_locked,
    select_parameters,
    summary,
    trainable_parameters,
    unfreeze,
)
from transferkit.optim import build_optimizer


def _trainable(model: nn.Module) -> list[str]:
    return [n for n, _ in trainable_parameters(model)]


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("layer1", ["layer1.0.weight", "layer1.1.weight", "layer1.1.bias"]),
        ("layer2.0", ["layer2.0.weight", "layer2.0.bias"]),
        ("head.bias", ["head.bias"]),
        ("layer[1-2].0.*", ["layer1.0.weight", "layer2.0.weight", "layer2.0.bias"]),
        (
            "layer[12]",
            [
                "layer1.0.weight",
                "layer1.1.weight",
                "layer1.1.bias",
                *[f"layer2.{s}" for s in ("0.weight", "0.bias", "1.weight", "1.bias")],
            ],
        ),
        (re.compile(r"\.1\.bias$"), ["stem.1.bias", "layer1.1.bias", "layer2.1.bias"]),
        (lambda n, p: p.ndim == 4, ["stem.0.weight", "layer1.0.weight", "layer2.0.weight"]),
        (["head.weight", "stem.0"], ["stem.0.weight", "head.weight"]),
    ],
)
def test_selectors(selector, expected):
    model = TinyNet()
    assert select_parameters(model, selector) == expected
    assert freeze(model, selector) == expected
    assert freeze(model, selector) == []  # already frozen: nothing changed
    assert unfreeze(model, selector) == expected
    assert len(_trainable(model)) == len(list(model.parameters()))


def test_module_and_layer_group_selectors():
    model = TinyNet()
    assert freeze(model, model.layer1) == select_parameters(model, "layer1")
    # "head" is a layer group here, and also a module: both mean the same parameters
    assert select_parameters(model, "head") == ["head.weight", "head.bias"]
    with pytest.raises(ConfigError, match="not a submodule"):
        freeze(model, nn.Linear(2, 2))


def test_unknown_selector_suggests_close_matches():
    with pytest.raises(ConfigError, match="layer1") as err:
        freeze(TinyNet(), "layr1")
    assert "Close matches" in str(err.value)
    with pytest.raises(ConfigError, match="matched no"):
        freeze(TinyNet(), "block*")
    with pytest.raises(ConfigError, match="regex"):
        freeze(TinyNet(), re.compile("nothing_like_this"))
    with pytest.raises(ConfigError, match="selector must be"):
        freeze(TinyNet(), 3)


@pytest.mark.parametrize("selector", ["", " ", ["layer1", ""]])
def test_an_empty_selector_is_an_error_and_freezes_nothing(selector):
    """Issue 16 item 5: "" named the root module and froze every parameter, the head included."""
    model = TinyNet()
    with pytest.raises(ConfigError, match="is empty"):
        freeze(model, selector)
    assert len(_trainable(model)) == len(list(model.parameters()))


def test_no_selector_means_everything():
    model = TinyNet()
    assert len(freeze(model)) == len(list(model.parameters()))
    assert _trainable(model) == []
    assert len(unfreeze(model)) == len(list(model.parameters()))


def test_tied_weights_counted_once_and_found_by_alias():
    model = TiedNet()
    assert freeze(model, "out.weight") == ["emb.weight"]  # the alias reaches the shared tensor
    assert not model.emb.weight.requires_grad
    assert "emb.weight" not in _trainable(model)
    assert len(trainable_parameters(model)) == len(list(model.parameters())) - 1


def test_freeze_backbone_leaves_only_the_head():
    model = TinyNet()
    freeze(model, "head")
    changed = freeze_backbone(model)
    assert "head.weight" not in changed and len(changed) == len(list(model.parameters())) - 2
    assert _trainable(model) == ["head.weight", "head.bias"]
    with pytest.raises(ConfigError, match="head"):
        freeze_backbone(nn.Sequential(nn.Linear(2, 2)))


@pytest.fixture(scope="module")
def resnet18_adapter():
    """A real torchvision ResNet-18 in an Adapter (random weights, nothing downloaded)."""
    return create_model("resnet18", num_classes=10, weights=None)


def _under(model: nn.Module, *prefixes: str) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith(prefixes)]


def test_every_selector_kind_on_a_real_adapter(resnet18_adapter):
    """Module, qualified name, glob, regex, predicate and layer group, on the names a user sees."""
    model = resnet18_adapter
    layers13 = _under(model, "backbone.layer1.", "backbone.layer2.", "backbone.layer3.")
    cases = [
        (model.backbone.layer2, _under(model, "backbone.layer2.")),  # a module object
        ("backbone.layer1", _under(model, "backbone.layer1.")),  # qualified module name
        ("backbone.layer1.0.conv1.weight", ["backbone.layer1.0.conv1.weight"]),  # a parameter
        ("layer1.0", _under(model, "backbone.layer1.0.")),  # relative to the wrapped ResNet
        ("layer[1-3].*", layers13),  # the glob, as on the bare torchvision model
        ("backbone.layer[1-3].*", layers13),
        (
            re.compile(r"layer4\..*\.bn\d\.weight$"),
            [f"backbone.layer4.{b}.bn{i}.weight" for b in (0, 1) for i in (1, 2)],
        ),
        (lambda n, p: "downsample" in n, [n for n in _under(model, "backbone.") if "downsample" in n]),
        ("layer4", model.layer_groups()["layer4"]),  # an adapter layer group
        ("stem", ["backbone.conv1.weight", "backbone.bn1.weight", "backbone.bn1.bias"]),
        ("head", ["backbone.fc.weight", "backbone.fc.bias"]),
    ]
    for selector, expected in cases:
        assert expected, selector
        assert select_parameters(model, selector) == expected, selector
        assert freeze(model, selector) == expected, selector
        assert {n for n, p in model.named_parameters() if not p.requires_grad} == set(expected)
        assert unfreeze(model, selector) == expected, selector
    with pytest.raises(ConfigError, match="Close matches: layer"):
        freeze(model, "layr[1-3].*")


def test_freeze_backbone_and_summary_on_a_real_adapter():
    model = create_model("resnet18", num_classes=10, weights=None)
    freeze_backbone(model)
    assert _trainable(model) == ["backbone.fc.weight", "backbone.fc.bias"]
    unfreeze(model, "layer4")
    model.train()
    rows = {line.split()[0]: line for line in summary(model, by="module").splitlines()}
    # one row per top-level module of the wrapped network, with the mode of its BatchNorm layers
    assert list(rows) == [
        "module",
        *(f"backbone.{m}" for m in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")),
        "total",
    ]
    assert rows["backbone.layer1"].split()[1:] == ["147968", "0", "147968", "4", "frozen(eval)"]
    assert rows["backbone.layer4"].split()[1:] == ["8393728", "8393728", "0", "5", "train"]
    assert rows["backbone.bn1"].endswith("1 frozen(eval)") and rows["backbone.fc"].endswith("-")
    n = sum(p.numel() for p in model.parameters())
    assert rows["total"].split() == ["total", str(n), str(8393728 + 5130), str(n - 8393728 - 5130)]
    groups = {line.split()[0]: line.split()[1:] for line in summary(model).splitlines()}
    assert list(groups) == ["group", "stem", "layer1", "layer2", "layer3", "layer4", "head", "total"]
    assert groups["head"] == ["5130", "5130", "0", "-"]


def _train_steps(model: nn.Module, steps: int = 4) -> None:
    opt = build_optimizer(model, "sgd", lr=0.5, weight_decay=1e-2)
    loader = torch.utils.data.DataLoader(tiny_data(32), batch_size=8, shuffle=True)
    model.train()
    for _, (x, y) in zip(range(steps), loader):
        model.train()  # what a training loop does every epoch: must not wake frozen BN
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("bn", ["eval", "frozen"])
def test_frozen_bn_stats_and_weights_bit_identical_in_train_mode(bn):
    """Several SGD steps (weight decay on) in train mode: the frozen part's weights, running statistics
    and ``num_batches_tracked`` stay bit-identical -- the "frozen" backbone whose BN stats still drift
    (Lightning's BackboneFinetuning never passes ``train_bn``), both for the eval lock and FrozenBatchNorm2d."""
    model = TinyNet()
    _train_steps(model, 2)  # non-trivial running stats
    freeze(model, "stem", "layer1", bn=bn)
    before = copy.deepcopy(model.state_dict())
    _train_steps(model, 4)
    after = model.state_dict()
    frozen_keys = [k for k in before if k.startswith(("stem.", "layer1."))]
    assert any("running_var" in k for k in frozen_keys)
    for key in frozen_keys:
        assert torch.equal(before[key], after[key]), key
    # the trainable part did train, its BN did update
    assert not torch.equal(before["layer2.1.running_mean"], after["layer2.1.running_mean"])
    assert not torch.equal(before["head.weight"], after["head.weight"])
    if bn == "eval":
        assert is_bn_locked(model.stem[1]) and not model.stem[1].training
    else:
        assert type(model.stem[1]).__name__ == "FrozenBatchNorm2d"
    assert model.layer2[1].training


def test_frozen_bn_reports_eval_right_after_model_train_and_in_copies():
    """``model.train()`` leaves a frozen BN layer in eval mode even before any forward pass, and the
    lock survives deepcopy and pickling; ``model.eval()`` / ``train()`` keep working for the rest."""
    model = TinyNet()
    freeze(model, "stem")
    for _ in range(2):
        model.train()
        assert not model.stem[1].training and model.layer1[1].training and model.training
        model.eval()
        assert not model.stem[1].training and not model.layer1[1].training
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        clone.train()
        assert not clone.stem[1].training and clone.layer1[1].training
        assert is_bn_locked(clone.stem[1])
        unfreeze(clone, "stem")
        clone.train()
        assert clone.stem[1].training and not is_bn_locked(clone.stem[1])
    model.stem[1].training = True  # set by hand: the forward pre-hook still normalises with running stats
    before = model.stem[1].running_mean.clone()
    model(torch.randn(2, 3, 16, 16))
    assert torch.equal(before, model.stem[1].running_mean)


def test_train_bn_keeps_frozen_bn_training():
    model = TinyNet()
    freeze(model, "stem", train_bn=True)
    before = model.stem[1].running_mean.clone()
    _train_steps(model, 2)
    assert not torch.equal(before, model.stem[1].running_mean)
    assert not model.stem[1].weight.requires_grad


def test_unfreeze_releases_bn_and_copies_keep_the_policy():
    model = TinyNet()
    freeze(model, "layer1")
    clone = copy.deepcopy(model)
    unfreeze(model, "layer1")
    model.train()
    assert not is_bn_locked(model.layer1[1]) and model.layer1[1].training
    clone.train()
    clone(torch.randn(2, 3, 16, 16))
    assert is_bn_locked(clone.layer1[1]) and not clone.layer1[1].training


def test_partial_bn_freeze_does_not_lock_it():
    model = TinyNet()
    freeze(model, "stem.1.weight")
    assert not is_bn_locked(model.stem[1])


def test_affine_free_bn_follows_its_block():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)), nn.Conv2d(4, 2, 1)
    )
    freeze(model, "0")
    model.train()
    before = model[0][1].running_mean.clone()
    model(torch.randn(2, 3, 8, 8))
    assert torch.equal(before, model[0][1].running_mean)


def test_convert_frozen_bn_keeps_outputs():
    model = TinyNet()
    _train_steps(model, 2)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    freeze(model, "stem", "layer1", bn="frozen")
    assert type(model.stem[1]).__name__ == "FrozenBatchNorm2d"
    assert type(model.layer2[1]) is nn.BatchNorm2d
    torch.testing.assert_close(model(x), ref)
    assert convert_frozen_bn(model) == []  # layer2 is trainable: left alone
    assert "FrozenBN" in summary(model, by="module")


def test_summary_table():
    model = TinyNet()
    freeze_backbone(model)
    text = summary(model)
    lines = text.splitlines()
    assert lines[0].split() == ["group", "params", "trainable", "frozen", "batchnorm"]
    head = next(line for line in lines if line.startswith("head"))
    assert head.split()[:4] == ["head", "27", "27", "0"]
    assert "1 frozen(eval)" in next(line for line in lines if line.startswith("stem"))
    total = lines[-1].split()
    n = sum(p.numel() for p in model.parameters())
    assert total == ["total", str(n), "27", str(n - 27)]
    by_module = summary(model, by="module")
    assert by_module.splitlines()[0].startswith("module")
    with pytest.raises(ConfigError):
        summary(nn.Linear(2, 2), by="group")


def test_a_parameter_object_is_a_selector() -> None:
    model = TinyNet()
    assert freeze(model, model.head.weight) == ["head.weight"]
    with pytest.raises(ConfigError, match="not a parameter of the model"):
        freeze(model, torch.zeros(2, requires_grad=True))


@pytest.mark.parametrize("fn", [freeze, unfreeze, summary])
def test_the_model_must_be_a_module(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="needs the model itself"):
        fn(None)
