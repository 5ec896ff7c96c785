"""weights=: torchvision and timm caches, hash checks, the offline policy, meta-device construction."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from transferkit.backbones import create_model, resolve_backbone, resolve_weights, verify_hash
from transferkit.backbones.weight_cache import ALLOW_DOWNLOAD_ENV, torchvision_cache_path
from transferkit.errors import ConfigError, LoadError

SQUEEZE = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, and any download attempt fails the test."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return home


def _imagenet_squeezenet_state() -> dict[str, torch.Tensor]:
    return torchvision.models.squeezenet1_1(num_classes=1000).state_dict()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache_with_matching_hash(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """Write a squeezenet1_1 state dict into the cache under a name carrying its real hash prefix, and
    point the weights enum's URL at that name (the real file's hash cannot be forged)."""
    state = _imagenet_squeezenet_state()
    tmp = home / "staging.pth"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp)
    name = f"squeezenet1_1-{_sha256(tmp)[:8]}.pth"
    monkeypatch.setattr(SQUEEZE.value, "url", f"https://download.pytorch.org/models/{name}")
    path = torchvision_cache_path(SQUEEZE.url)
    assert path == home / "hub" / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(path)
    return path, state


def test_cache_path_follows_torch_home(torch_home: Path) -> None:
    assert (
        torchvision_cache_path(SQUEEZE.url)
        == torch_home / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    )


def test_imagenet_from_cache(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, state = _cache_with_matching_hash(torch_home, monkeypatch)
    adapter = create_model("squeezenet1_1", num_classes=1000, weights="imagenet")
    assert adapter.pretrained and adapter.weights == "torchvision:SqueezeNet1_1_Weights.IMAGENET1K_V1"
    assert any("class names match" in n or "fits" in n for n in adapter.load_report.notes)
    for key, value in state.items():
        torch.testing.assert_close(adapter.backbone.state_dict()[key], value, rtol=0, atol=0)
    # the categories are known, so a subset of ImageNet classes gets head surgery
    cats = SQUEEZE.meta["categories"]
    sub = create_model("squeezenet1_1", num_classes=2, weights="auto", class_names=[cats[7], "not a class"])
    torch.testing.assert_close(sub.head.weight[0], state["classifier.1.weight"][7], rtol=0, atol=0)
    assert verify_hash(path) == path.name.split("-")[1][:8]
    for weights in ("DEFAULT", "IMAGENET1K_V1", "SqueezeNet1_1_Weights.IMAGENET1K_V1", SQUEEZE):
        same = create_model("squeezenet1_1", num_classes=1000, weights=weights)
        assert same.pretrained and same.weights == adapter.weights
        assert torch.equal(same.head.weight, state["classifier.1.weight"])


def test_hash_mismatch_is_an_error(torch_home: Path) -> None:
    path = torchvision_cache_path(SQUEEZE.url)  # the real name: squeezenet1_1-b8a52dc0.pth
    path.parent.mkdir(parents=True)
    torch.save(_imagenet_squeezenet_state(), path)
    for weights in ("imagenet", "auto", "IMAGENET1K_V1"):
        with pytest.raises(LoadError, match=r"fail their hash check.*b8a52dc0.*truncated"):
            create_model("squeezenet1_1", num_classes=3, weights=weights)


def test_truncated_cache_file_is_an_error(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _cache_with_matching_hash(torch_home, monkeypatch)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match="hash check"):
        create_model("squeezenet1_1", num_classes=3, weights="imagenet")


def test_explicit_imagenet_not_cached_names_path_and_alternative(torch_home: Path) -> None:
    expected = torch_home / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    for weights in ("imagenet", "DEFAULT", "SqueezeNet1_1_Weights.IMAGENET1K_V1"):
        with pytest.raises(LoadError) as info:
            create_model("squeezenet1_1", num_classes=3, weights=weights)
        assert str(expected) in str(info.value) and "`weights`=PATH" in str(info.value)
        assert ALLOW_DOWNLOAD_ENV in str(info.value)


def test_auto_not_cached_warns_and_builds_random(torch_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        adapter = create_model("squeezenet1_1", num_classes=3)  # weights="auto"
    assert adapter.pretrained is False and adapter.weights == "random" and adapter.load_report is None
    assert any(
        "RANDOM weights" in r.getMessage() and "squeezenet1_1-b8a52dc0.pth" in r.getMessage()
        for r in caplog.records
    )
    assert any("RANDOM" in n for n in adapter.notes)
    # the CLI passes --weights through: the hint names its spelling too
    assert any("pass `weights`=None to silence this" in r.getMessage() for r in caplog.records)


def test_download_only_when_allowed(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    state = _imagenet_squeezenet_state()

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, hash_prefix))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setattr(
        "transferkit.backbones.torchvision_weights.verify_hash", lambda path: None
    )  # fake bytes, real name
    monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "1")
    monkeypatch.setattr("transferkit.backbones.torchvision_weights.reachable", lambda url: True)
    adapter = create_model("squeezenet1_1", num_classes=3, weights="imagenet")
    assert calls == [(SQUEEZE.url, "b8a52dc0")] and adapter.pretrained


@pytest.mark.parametrize("backbone", ["squeezenet1_1", "timm:resnet18"])
def test_download_without_a_network_fails_fast_in_one_line(
    torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, backbone: str
) -> None:
    """Issue 16 item 9: offline, torchvision gave a URLError traceback and timm hung 51 s, even under auto."""
    import socket
    import time

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "1")
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        adapter = create_model(backbone, num_classes=3)  # weights="auto": falls back, says why
    assert not adapter.pretrained and "no network connection" in caplog.text
    with pytest.raises(LoadError, match=r"cannot download pretrained weights .* \(no network connection\)"):
        create_model(backbone, num_classes=3, weights="imagenet")
    assert time.perf_counter() - start < 10


def test_unknown_weights_names() -> None:
    spec = resolve_backbone("resnet18")
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        resolve_weights(spec, "IMAGENET21K")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_weights(spec, "/no/such/file.pth")
    with pytest.raises(ConfigError, match="another model"):
        resolve_weights(spec, "ResNet50_Weights.IMAGENET1K_V1")
    assert resolve_weights(spec, "none").kind == "none"


def test_timm_weights_from_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    from safetensors.torch import save_file

    hub = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV, raising=False)
    with pytest.raises(LoadError, match="models--timm--test_vit.r160_in1k"):
        create_model("timm:test_vit", num_classes=3, weights="imagenet")
    repo = hub / "models--timm--test_vit.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    state = timm.create_model("test_vit").state_dict()
    save_file(
        {k: v.contiguous() for k, v in state.items()}, repo / "snapshots" / "0123abcd" / "model.safetensors"
    )
    adapter = create_model("timm:test_vit", num_classes=3, weights="auto")
    assert adapter.pretrained and "hf-hub:timm/test_vit.r160_in1k" in adapter.weights
    for key, value in state.items():
        if not key.startswith("head."):
            torch.testing.assert_close(adapter.backbone.state_dict()[key], value, rtol=0, atol=0)
    # timm's ImageNet class names are known too: head surgery by label
    tench = create_model("timm:test_vit", num_classes=2, weights="auto", class_names=["x", "tench"])
    torch.testing.assert_close(tench.head.weight[1], state["head.weight"][0], rtol=0, atol=0)


def test_user_factory_has_no_pretrained_weights() -> None:
    spec = resolve_backbone("torch.nn:Identity")
    assert resolve_weights(spec, "auto").kind == "none"
    with pytest.raises(ConfigError) as info:
        resolve_weights(spec, "imagenet")
    assert "pass `weights`=PATH" in str(info.value)
    assert "`weights`=None" in str(info.value)


# ---- fast (meta-device) construction gives the same weights as the normal build ---------------------------

FAST = [
    ("squeezenet1_1", {}),
    ("mobilenet_v3_small", {}),
    ("shufflenet_v2_x0_5", {}),
    ("regnet_x_400mf", {}),  # SLOW_BUILD: its constructor needs real tensors
    ("timm:test_vit", {"img_size": 32}),
    ("timm:test_convnext", {}),
    ("timm:test_efficientnet", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), FAST, ids=[n for n, _ in FAST])
def test_fast_build_matches_slow_build(tmp_path: Path, name: str, kwargs: dict) -> None:
    source = create_model(name, num_classes=6, weights=None, **kwargs)
    path = tmp_path / "w.pth"
    torch.save(source.backbone.state_dict(), path)
    fast = create_model(name, num_classes=6, weights=path, head="keep", **kwargs)
    slow = create_model(name, num_classes=6, weights=path, head="keep", fast=False, **kwargs)
    fast_state, slow_state = fast.state_dict(), slow.state_dict()
    assert list(fast_state) == list(slow_state)
    for key, value in source.state_dict().items():  # every tensor, the kept head included
        torch.testing.assert_close(fast_state[key], value, rtol=0, atol=0)
        torch.testing.assert_close(slow_state[key], value, rtol=0, atol=0)
    assert not any(t.is_meta for t in fast_state.values())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), slow.eval()(x), rtol=0, atol=0)


def test_fast_build_new_head_uses_family_init(tmp_path: Path) -> None:
    source = torchvision.models.mobilenet_v3_small(num_classes=1000)
    path = tmp_path / "m.pth"
    torch.save(source.state_dict(), path)
    adapter = create_model("mobilenet_v3_small", num_classes=5, weights=path)
    head = adapter.head
    assert not head.weight.is_meta and torch.equal(head.bias, torch.zeros(5))
    assert 0.003 < head.weight.std().item() < 0.02  # torchvision's normal(0, 0.01)
    assert adapter.load_report.mismatched["classifier.3.weight"] == ((1000, 1024), (5, 1024))


def test_fast_build_initialises_what_the_checkpoint_lacks(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(num_classes=4).state_dict()
    del state["layer4.1.bn2.running_var"], state["layer4.1.conv2.weight"]
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "r.pth"
    torch.save(state, path)
    adapter = create_model("resnet18", num_classes=4, weights=path)
    net = adapter.backbone
    assert torch.equal(net.layer4[1].bn2.running_var, torch.ones(512))
    assert torch.equal(net.layer4[1].bn2.running_mean, state["layer4.1.bn2.running_mean"])
    assert net.layer4[1].conv2.weight.std() > 0 and not net.layer4[1].conv2.weight.is_meta
    assert not any(t.is_meta for t in adapter.state_dict().values())
    assert "backbone.layer4.1.conv2.weight" not in adapter.load_report.loaded
    assert isinstance(adapter.eval()(torch.randn(1, 3, 32, 32)), torch.Tensor)


def test_meta_unsafe_families_fall_back(tmp_path: Path) -> None:
    """timm swin holds non-persistent buffers (relative position index, attention mask)."""
    import timm

    class Tiny(nn.Module):
        def __init__(self, num_classes: int = 3) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.register_buffer("index", torch.arange(4), persistent=False)
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).mean((2, 3)) + self.index)

    import sys
    import types

    mod = types.ModuleType("tk_meta_nets")
    mod.tiny = Tiny
    sys.modules["tk_meta_nets"] = mod
    try:
        path = tmp_path / "t.pth"
        torch.save(Tiny().state_dict(), path)
        adapter = create_model("tk_meta_nets:tiny", num_classes=3, weights=path)
        assert torch.equal(adapter.backbone.index, torch.arange(4))
    finally:
        del sys.modules["tk_meta_nets"]
    assert timm  # imported for the docstring's claim; swin itself is too large to build here


# ---- what the checkpoint lacks gets the constructor's initialisation on the fast path ------------------------

INIT = [
    ("resnet18", {}),  # nn.Linear defaults
    ("squeezenet1_1", {}),  # 1x1 conv head, normal(0, 0.01)
    ("mobilenet_v3_small", {}),  # normal(0, 0.01), zero bias
    ("efficientnet_b0", {}),  # uniform(+-1/sqrt(classes)), zero bias
    ("mnasnet0_5", {}),  # kaiming_uniform fan_out sigmoid
    ("googlenet", {}),  # trunc_normal(0.01), aux1.fc2 / aux2.fc2 too
    ("vit_b_32", {"image_size": 32}),  # zeros
    ("timm:test_vit", {"img_size": 32}),  # timm: trunc_normal(0.02), zero bias
    ("timm:test_convnext", {}),
    ("timm:mobilenetv3_small_050", {}),  # timm's _init_weight_goog
]


def _same_distribution(fast: torch.Tensor, normal: torch.Tensor, what: str) -> None:
    assert not fast.is_meta and fast.shape == normal.shape and fast.dtype == normal.dtype, what
    if not normal.any():  # a zero-initialised tensor stays exactly zero
        assert not fast.any(), what
        return
    ratio = fast.float().std().item() / normal.float().std().item()
    assert 0.85 < ratio < 1.15, f"{what}: std {fast.std():.4g} vs {normal.std():.4g} of a normal build"
    assert abs(fast.float().mean().item()) < 0.2 * normal.float().std().item() + 1e-6, what


@pytest.mark.parametrize(("name", "kwargs"), INIT, ids=[n for n, _ in INIT])
def test_a_new_head_on_pretrained_weights_starts_near_zero_on_both_builds(
    tmp_path: Path, name: str, kwargs: dict
) -> None:
    """The checkpoint lacks the head: the fast (meta) and the normal build both start it near zero (the
    fine-tuning init of the default recipe), main and auxiliary heads alike, and nothing stays on meta."""
    source = create_model(name, num_classes=3, weights=None, **kwargs)
    heads = tuple(f"{h.removeprefix('backbone.')}." for h in source.head_names)
    path = tmp_path / "backbone_only.pth"
    torch.save({k: v for k, v in source.backbone.state_dict().items() if not k.startswith(heads)}, path)
    fast = create_model(name, num_classes=96, weights=path, **kwargs)
    slow = create_model(name, num_classes=96, weights=path, fast=False, **kwargs)
    assert fast.pretrained and len(fast.head_names) == len(slow.head_names) == len(source.head_names)
    for model in (fast, slow):
        for head_name in model.head_names:
            head = dict(model.named_modules())[head_name]
            weight = head.weight.detach()
            assert weight.abs().max() <= 0.02 and 0.005 < weight.std() < 0.012, f"{name} {head_name}"
            assert head.bias is None or not head.bias.detach().any(), f"{name} {head_name}.bias"
    assert not any(t.is_meta for t in fast.state_dict().values())


def test_fast_build_missing_tensors_match_the_slow_build(tmp_path: Path) -> None:
    """A conv weight and BatchNorm statistics the checkpoint lacks: the fast path gives them what the slow
    path (normal construction, then load) gives them."""
    state = torchvision.models.resnet18(num_classes=4).state_dict()
    lacking = ["layer4.1.conv2.weight", "layer4.1.bn2.running_var", "bn1.running_mean"]
    lacking += [k for k in state if k.endswith("num_batches_tracked")]
    for key in lacking:
        del state[key]
    path = tmp_path / "r.pth"
    torch.save(state, path)
    fast = create_model("resnet18", num_classes=4, weights=path, head="keep").backbone.state_dict()
    slow = create_model(
        "resnet18", num_classes=4, weights=path, head="keep", fast=False
    ).backbone.state_dict()
    assert list(fast) == list(slow)
    for key, value in state.items():
        assert torch.equal(fast[key], value) and torch.equal(slow[key], value), key
    for key in lacking:
        if key.endswith("conv2.weight"):  # torchvision: kaiming_normal(fan_out), not reset_parameters()
            _same_distribution(fast[key], slow[key], key)
            assert 0.9 < fast[key].std().item() / (2 / (512 * 9)) ** 0.5 < 1.1
        else:
            assert torch.equal(fast[key], slow[key]) and fast[key].dtype == slow[key].dtype, key
    assert fast["bn1.num_batches_tracked"].dtype == torch.long and fast["bn1.num_batches_tracked"] == 0


def test_an_adapter_checkpoint_loads_into_create_model(tmp_path: Path) -> None:
    """save_weights(adapter) / a run's model.safetensors and best.pt hold backbone.* keys."""
    from transferkit.checkpoint import save_checkpoint, save_weights

    source = create_model("resnet18", num_classes=3, weights=None)
    for path in (
        save_weights(tmp_path / "model.safetensors", source),
        save_checkpoint(tmp_path / "best.pt", model=source),
    ):
        adapter = create_model("resnet18", num_classes=3, weights=path, head="keep")  # labels unknown
        report = adapter.load_report
        assert report.missing == [] and report.unexpected == [] and not report.mismatched
        assert any("adapter checkpoint" in n for n in report.notes)
        for key, value in source.state_dict().items():
            assert torch.equal(adapter.state_dict()[key], value), key
