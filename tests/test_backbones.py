"""Registry, every torchvision classification builder, representative timm models, user factories."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from transferkit.backbones import Adapter, create_model, list_backbones
from transferkit.backbones.heads import HEADS
from transferkit.backbones.registry import resolve_backbone, torchvision_names
from transferkit.errors import ConfigError

# the heaviest builders (hundreds of millions of parameters, seconds each to initialise on 2 cores)
SLOW = {
    "vit_h_14",
    "regnet_y_128gf",
    "vit_l_16",
    "vit_l_32",
    "convnext_large",
    "regnet_y_32gf",
    "regnet_x_32gf",
}
SLOW |= {
    "convnext_base",
    "efficientnet_v2_l",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
}
# larger siblings of a family member that stays in the default run (each family keeps at least one)
SLOW |= {"vgg16", "wide_resnet101_2", "resnext101_32x8d", "resnext101_64x4d", "swin_b", "swin_v2_b"}
SLOW |= {"efficientnet_b6", "efficientnet_b7", "regnet_x_16gf", "regnet_y_16gf", "resnet152"}

# the smallest input each family accepts (ViTs are built for it via image_size)
SIZE = {"inception_v3": 75, "maxvit_t": 224}
KWARGS = {"vit_h_14": {"image_size": 28}}


def _case(name: str):
    marks = [pytest.mark.slow] if name in SLOW else []
    return pytest.param(name, marks=marks, id=name)


def _kwargs(name: str) -> dict:
    if name.startswith("vit_"):
        return KWARGS.get(name, {"image_size": 32})
    return {}


def _check_adapter(adapter: Adapter, x: torch.Tensor, num_classes: int) -> None:
    adapter.eval()
    with torch.no_grad():
        logits = adapter(x)
        feats = adapter.forward_features(x)
    assert logits.shape == (x.shape[0], num_classes)
    torch.testing.assert_close(adapter.forward_head(feats), logits)
    # the new head is trainable: a loss on it gives every head parameter a gradient
    loss = adapter.forward_head(feats).logsumexp(1).sum()
    loss.backward()
    head = adapter.head_parameter_names()
    params = dict(adapter.named_parameters())
    assert head and all(params[n].requires_grad for n in head)  # auxiliary heads too
    main = [f"{adapter.head_names[0]}.weight"]
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in main)
    groups = adapter.layer_groups()
    assert list(groups)[-1] == "head" and groups["head"] == head
    flat = [n for names in groups.values() for n in names]
    assert sorted(flat) == sorted(params) and len(flat) == len(set(flat))


@pytest.mark.parametrize(
    "name", [_case(n) for n in torchvision.models.list_models(module=torchvision.models)]
)
def test_every_torchvision_builder(name: str) -> None:
    adapter = create_model(name, num_classes=5, weights=None, **_kwargs(name))
    size = SIZE.get(name, _kwargs(name).get("image_size", 64))
    _check_adapter(adapter, torch.randn(2, 3, size, size), 5)
    assert adapter.name == name and adapter.pretrained is False and adapter.weights == "random"
    assert type(adapter.backbone).__name__ in HEADS


def test_the_parametrized_list_is_the_live_list() -> None:
    """The builders above come from torchvision at collection time; the registry resolves the same set."""
    live = torchvision.models.list_models(module=torchvision.models)
    assert list(torchvision_names()) == live and len(live) > 70
    assert all(resolve_backbone(n).source == "torchvision" for n in live)
    assert set(live) <= set(list_backbones("*"))


def test_every_torchvision_builder_is_covered_by_the_head_table() -> None:
    classes = {
        torchvision.models.get_model_builder(n).__annotations__.get("return") for n in torchvision_names()
    }
    classes = {c if isinstance(c, str) else c.__name__ for c in classes}
    assert classes <= set(HEADS), classes - set(HEADS)


TIMM = {
    "timm:test_resnet": {},
    "timm:test_vit": {"img_size": 32},
    "timm:test_efficientnet": {},
    "timm:test_convnext": {},
    "timm:mobilenetv3_small_050": {},
    "timm:convnext_atto": {},
    "timm:vit_tiny_patch16_224": {"img_size": 32},
}


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_models(name: str) -> None:
    adapter = create_model(name, num_classes=7, weights=None, **TIMM[name])
    size = TIMM[name].get("img_size", 64)
    _check_adapter(adapter, torch.randn(2, 3, size, size), 7)
    assert adapter.backbone.get_classifier() is adapter.head
    assert adapter.data_config["input_size"][1] == TIMM[name].get(
        "img_size", adapter.data_config["input_size"][1]
    )


def test_timm_groups_follow_group_matcher() -> None:
    groups = create_model("timm:test_vit", num_classes=3, weights=None, img_size=32).layer_groups()
    names = list(groups)
    assert names[0] == "stem" and names[1] == "blocks.0" and names[-1] == "head"
    assert "backbone.patch_embed.proj.weight" in groups["stem"]
    assert groups["head"] == ["backbone.head.weight", "backbone.head.bias"]


def test_resnet_and_vit_groups() -> None:
    groups = create_model("resnet18", num_classes=3, weights=None).layer_groups()
    assert list(groups) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert groups["stem"] == ["backbone.conv1.weight", "backbone.bn1.weight", "backbone.bn1.bias"]
    assert "backbone.layer1.0.conv1.weight" in groups["layer1"]
    vit = create_model("vit_b_32", num_classes=3, weights=None, image_size=32).layer_groups()
    assert list(vit) == ["embed", *[f"blocks.{i}" for i in range(12)], "norm", "head"]
    assert set(vit["embed"]) == {
        "backbone.class_token",
        "backbone.conv_proj.weight",
        "backbone.conv_proj.bias",
        "backbone.encoder.pos_embedding",
    }


def test_inception_and_googlenet_train_mode_return_main_logits() -> None:
    g = create_model("googlenet", num_classes=4, weights=None).train()
    out = g(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)
    assert g.backbone.aux1.fc2.out_features == 4 and g.backbone.aux2.fc2.out_features == 4
    assert "backbone.aux1.fc2.weight" in g.head_parameter_names()
    inc = create_model("inception_v3", num_classes=4, weights=None)
    assert inc.backbone.AuxLogits.fc.out_features == 4
    assert "backbone.AuxLogits.fc.weight" in inc.head_parameter_names()


def test_list_backbones() -> None:
    assert "resnet50" in list_backbones("resnet*")
    assert all(n.startswith("timm:") for n in list_backbones("timm:convnext_a*"))
    assert "timm:convnext_atto" in list_backbones("convnext_a*")
    assert len(list_backbones()) > len(torchvision_names())


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ConfigError, match="resnet50") as info:
        create_model("resnet5O", num_classes=3, weights=None)
    # the API's spelling, and the same listing from a shell (a CLI user has no Python prompt open)
    assert "list_backbones('pattern*')" in str(info.value)
    assert """python -c "import transferkit; print(transferkit.list_backbones('res*'))""" in str(info.value)
    with pytest.raises(ConfigError, match="timm:convnext_atto"):
        resolve_backbone("timm:convnext_attto")


@pytest.fixture
def user_module(monkeypatch: pytest.MonkeyPatch) -> str:
    """A module with a model factory, importable as 'tk_user_nets'."""
    mod = types.ModuleType("tk_user_nets")

    class LeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convnet = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
            self.fc = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.convnet(x))

    def lenet() -> nn.Module:
        return LeNet()

    def odd(width: int = 8) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2)
        )

    mod.lenet, mod.odd = lenet, odd
    monkeypatch.setitem(sys.modules, "tk_user_nets", mod)
    return "tk_user_nets"


def test_user_factory_head_found_by_rule(user_module: str) -> None:
    adapter = create_model(f"{user_module}:lenet", num_classes=3, weights=None)
    assert adapter.head is adapter.backbone.fc[2] and adapter.head.out_features == 3
    assert adapter.in_chans == 1 and adapter.in_chans_strategy == "none"
    _check_adapter(adapter, torch.randn(2, 1, 28, 28), 3)


def test_user_factory_head_named_explicitly(user_module: str) -> None:
    with pytest.raises(ConfigError, match="head_name"):
        create_model(f"{user_module}:odd", num_classes=3, weights=None)
    adapter = create_model(f"{user_module}:odd", num_classes=3, weights=None, head_name="3", width=4)
    assert adapter.head.out_features == 3 and adapter.head.in_features == 4
    _check_adapter(adapter, torch.randn(2, 3, 16, 16), 3)


def test_load_report_of_a_weights_file_is_headed_by_its_name(tmp_path: Path) -> None:
    from tests.tiny_models import tinynet

    torch.save(tinynet(num_classes=10).state_dict(), tmp_path / "tiny.pth")
    model = create_model("tests.tiny_models:tinynet", 10, weights=tmp_path / "tiny.pth")
    assert model.load_report.source == "tiny.pth"
    assert str(model.load_report).startswith("LoadReport (tiny.pth)\n")


def test_user_factory_errors(user_module: str) -> None:
    with pytest.raises(ConfigError, match="lenet"):
        create_model(f"{user_module}:lenett", num_classes=3, weights=None)
    with pytest.raises(ConfigError, match="cannot import"):
        create_model("no_such_pkg.nets:f", num_classes=3, weights=None)
    for empty in (":lenet", f"{user_module}:", f"{user_module}:a..b"):
        with pytest.raises(ConfigError, match="both parts non-empty"):
            create_model(empty, num_classes=3, weights=None)
    with pytest.raises(
        ConfigError, match=r"no known pretrained weights; pass `weights`=PATH .* or `weights`=None"
    ):
        create_model(f"{user_module}:lenet", num_classes=3, weights="imagenet")
    # "auto" falls back to the factory's own initialisation and says so
    assert create_model(f"{user_module}:lenet", num_classes=3, weights="auto").pretrained is False


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet18", num_classes=0, weights=None)
    with pytest.raises(ConfigError, match="class_names"):
        create_model("resnet18", num_classes=3, weights=None, class_names=["a"])
    with pytest.raises(ConfigError, match="head must be"):
        create_model("resnet18", num_classes=3, weights=None, head="maybe")


def test_an_argument_the_builder_does_not_take_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'resnet18' does not accept.*'foo'"):
        create_model("resnet18", num_classes=2, weights=None, foo=1)


def test_list_backbones_needs_a_string() -> None:
    with pytest.raises(ConfigError, match="glob string"):
        list_backbones(3)  # type: ignore[arg-type]
    assert list_backbones("no-such-backbone-*") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 2, "class_names": ["a", "a"]}, "duplicate labels"),
        ({"num_classes": 3, "class_names": "abc"}, "list of labels"),
        ({"num_classes": 2, "in_chans": True}, "in_chans must be a positive int"),
    ],
)
def test_create_model_refuses_bad_labels_and_channels(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_model("resnet18", weights=None, **kwargs)


def test_replace_head_argument_errors() -> None:
    from transferkit.backbones import replace_head

    with pytest.raises(ConfigError, match="num_classes must be a positive int"):
        replace_head(nn.Sequential(nn.Linear(2, 2)), "2", head_name="0")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a submodule.*0 \\(Linear\\)"):
        replace_head(nn.Sequential(nn.Linear(2, 2)), 2, head_name="5")
    with pytest.raises(ConfigError, match="is a ReLU; the head must be an nn.Linear"):
        replace_head(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), 2, head_name="1")


def test_timm_groups_have_names_users_can_read() -> None:
    """timm's sentinel block index (99999, for conv_head/bn2 after the last block) never reaches a name."""
    groups = create_model("timm:efficientnet_lite0", num_classes=3, weights=None).layer_groups()
    assert list(groups) == ["stem", *[f"blocks.{i}" for i in range(7)], "conv_head+bn2", "head"]
    assert not any("99999" in g for g in groups)
    assert groups["conv_head+bn2"] == [
        "backbone.conv_head.weight", "backbone.bn2.weight", "backbone.bn2.bias",
    ]  # fmt: skip


class _CifarLike(nn.Module):
    """A stem, three stages of blocks in Sequentials (the second and third downsample), a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)

        def stage(stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(4, 4, 3, stride, 1), nn.Conv2d(4, 4, 3, 1, 1))

        self.layer1, self.layer2, self.layer3 = stage(1), stage(2), stage(2)
        self.linear = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.bn1(self.conv1(x)))))
        return self.linear(x.mean((2, 3)))


def test_groups_of_an_unknown_network_are_stages() -> None:
    """No family rule: the units merge into stages cut where the resolution falls, named after them."""
    from transferkit.backbones.groups import network_groups

    groups = network_groups(_CifarLike(), ["linear"])
    assert list(groups) == ["conv1+bn1+layer1", "layer2", "layer3", "head"]
    assert groups["layer2"] == ["layer2.0.weight", "layer2.0.bias", "layer2.1.weight", "layer2.1.bias"]
    squeeze = create_model("squeezenet1_0", num_classes=3, weights=None).layer_groups()
    assert list(squeeze) == ["features.0", "features.3-5", "features.7-10", "features.12", "head"]
    # nothing to cut at (an MLP): each unit stays its own group
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    assert list(network_groups(mlp, ["3"])) == ["0", "2", "head"]
