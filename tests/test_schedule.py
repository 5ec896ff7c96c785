"""Tests for transferkit.schedule: gradual unfreezing, LR schedules over late groups, exact resume.

Also the failures measured in Lightning's BackboneFinetuning (issue 5): a backbone that stays frozen after
resume, schedulers that crash or overwrite a group added mid-run, drifting "frozen" BatchNorm statistics,
and a different data order after resume.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from schedule_models import TiedNet, TinyNet, tiny_data
from schedule_resume import run
from torch import nn

from transferkit import create_model
from transferkit.errors import CheckpointError, ConfigError
from transferkit.freeze import is_bn_locked
from transferkit.optim import build_optimizer
from transferkit.schedule import GradualUnfreeze, LRSchedule

HERE = Path(__file__).resolve().parent


def _assert_optimizer_matches_trainable(opt: torch.optim.Optimizer, model: nn.Module) -> None:
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in the optimizer twice"
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


def _assert_same(a, b, path="") -> None:
    """Bit-identical nested state (tensors with torch.equal, everything else with ==)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# --------------------------------------------------------------------------------------------------------
# gradual unfreezing


def test_every_k_epochs_thaws_top_down_with_discriminative_rates():
    model = TinyNet()
    sched = GradualUnfreeze(model, every=2, lr_decay=0.5)
    assert sched.plan == {2: ["layer2"], 4: ["layer1"], 6: ["stem"]}
    opt = build_optimizer(model, "sgd", lr=0.1)
    assert [g["name"] for g in opt.param_groups] == ["head"]
    thawed = {e: sched.step(e, opt) for e in range(8)}
    assert thawed == {0: [], 1: [], 2: ["layer2"], 3: [], 4: ["layer1"], 5: [], 6: ["stem"], 7: []}
    assert {g["name"]: g["initial_lr"] for g in opt.param_groups} == pytest.approx(
        {"head": 0.1, "layer2": 0.05, "layer1": 0.025, "stem": 0.0125}
    )
    _assert_optimizer_matches_trainable(opt, model)


def test_thaw_log_line_counts_epochs_from_one(caplog):
    """``step(2)`` is the third epoch: the log line says so, as a training console counts; the plan stays 0-based."""
    import logging

    model = TinyNet()
    sched = GradualUnfreeze(model, at={2: "layer2"})
    opt = build_optimizer(model, "sgd", lr=0.1)
    with caplog.at_level(logging.INFO, logger="transferkit.schedule"):
        assert sched.step(2, opt) == ["layer2"]
    assert sched.plan == {2: ["layer2"]}
    assert [r.getMessage() for r in caplog.records if r.name == "transferkit.schedule"] == [
        "epoch 3: thawed layer2"
    ]


def test_optimizer_holds_exactly_the_trainable_parameters_after_every_thaw():
    model = TinyNet()
    sched = GradualUnfreeze(model, at={1: "layer2", 3: ["layer1", "stem"]})
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    _assert_optimizer_matches_trainable(opt, model)
    for epoch in range(5):
        sched.step(epoch, opt)
        _assert_optimizer_matches_trainable(opt, model)
    assert sched.step(4, opt) == []  # idempotent
    names = [g["name"] for g in opt.param_groups]
    assert names == [
        "head",
        "head.no_decay",
        "layer2",
        "layer2.no_decay",
        "layer1",
        "layer1.no_decay",
        "stem",
        "stem.no_decay",
    ]


def test_tied_weights_never_enter_twice():
    """A weight shared by two modules is one parameter: never in two groups, also after a resume (peers that
    de-duplicate by comparing values, not identity, get this wrong)."""
    model = TiedNet()
    sched = GradualUnfreeze(model, every=1)
    assert model.emb.weight.requires_grad  # the head's alias of the shared tensor
    opt = build_optimizer(model, "sgd", lr=0.1)
    for epoch in range(3):
        sched.step(epoch, opt)
        _assert_optimizer_matches_trainable(opt, model)
        fresh = TiedNet()
        fresh_sched = GradualUnfreeze(fresh, every=1)
        fresh_opt = build_optimizer(fresh, "sgd", lr=0.1)
        fresh_sched.load_state_dict(sched.state_dict(), fresh_opt)
        fresh_opt.load_state_dict(opt.state_dict())
        _assert_optimizer_matches_trainable(fresh_opt, fresh)
    assert len([p for g in opt.param_groups for p in g["params"]]) == len(list(model.parameters()))


def test_explicit_plan_on_a_real_adapter():
    """The issue's plan ``{1: "layer4", 3: "layer3"}`` on ResNet-18: each thaw is a new named group at a
    reduced rate, and after every thaw the optimizer holds exactly the trainable parameters."""
    model = create_model("resnet18", num_classes=10, weights=None)
    sched = GradualUnfreeze(model, at={1: "layer4", 3: "layer3"}, lr_decay=0.5)
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    assert {g["name"] for g in opt.param_groups} == {"head", "head.no_decay"}
    thawed = {}
    for epoch in range(5):
        thawed[epoch] = sched.step(epoch, opt)
        _assert_optimizer_matches_trainable(opt, model)
    assert thawed == {0: [], 1: ["layer4"], 2: [], 3: ["layer3"], 4: []}
    rates = {g["name"]: g["initial_lr"] for g in opt.param_groups if not g["name"].endswith("no_decay")}
    assert rates == pytest.approx({"head": 1e-3, "layer4": 5e-4, "layer3": 2.5e-4})
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("backbone.layer2"))


def test_skipped_epochs_still_thaw_and_groups_never_named_stay_frozen():
    model = TinyNet()
    sched = GradualUnfreeze(model, at={1: "layer2", 2: "layer1"})
    opt = build_optimizer(model, "sgd", lr=0.1)
    assert sched.step(5, opt) == ["layer2", "layer1"]
    assert not model.stem[0].weight.requires_grad and is_bn_locked(model.stem[1])


def test_fine_tune_is_head_only_then_everything():
    """fastai's ``fine_tune``: head-only epochs, then every group at once with lower rates below."""
    model = TinyNet()
    sched = GradualUnfreeze.fine_tune(model, freeze_epochs=2, lr_decay=0.1)
    opt = build_optimizer(model, "adam", lr=1.0)
    assert sched.step(0, opt) == [] and sched.step(1, opt) == []
    assert sched.step(2, opt) == ["layer2", "layer1", "stem"]
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(
        {"head": 1.0, "layer2": 0.1, "layer1": 0.01, "stem": 0.001}
    )
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"every": 1, "at": {1: "layer1"}}, "exactly one"),
        ({"every": 0}, "every"),
        ({"at": {1: "layr1"}}, "layer1"),
        ({"at": {1: "head"}}, "below the head"),
        ({"at": {1: "layer1", 2: ["layer1"]}}, "twice"),
        ({"at": {-1: "layer1"}}, "epochs"),
        ({"every": 1, "lr_decay": 0}, "lr_decay"),
    ],
)
def test_bad_schedules_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GradualUnfreeze(TinyNet(), **kwargs)


def test_needs_layer_groups():
    with pytest.raises(ConfigError, match="layer_groups"):
        GradualUnfreeze(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), every=1)
    sched = GradualUnfreeze(
        nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), every=1, groups={"a": "0", "b": "1"}
    )
    assert sched.plan == {1: ["a"]}


def test_frozen_bn_does_not_drift_until_its_group_thaws():
    """Lightning's BackboneFinetuning never passes ``train_bn``, so its "frozen" BN keeps updating running
    statistics. Here a frozen group's BN stats stay put through epochs in train mode, until it thaws."""
    model = TinyNet()
    sched = GradualUnfreeze(model, at={2: "layer1"})
    opt = build_optimizer(model, "sgd", lr=0.1)
    loader = torch.utils.data.DataLoader(tiny_data(16), batch_size=8, shuffle=True)
    stats = {}
    for epoch in range(3):
        sched.step(epoch, opt)
        stats[epoch] = model.layer1[1].running_mean.clone()
        model.train()
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert torch.equal(stats[0], stats[1]) and torch.equal(stats[1], stats[2])  # frozen epochs 0-1
    assert not torch.equal(stats[2], model.layer1[1].running_mean)  # thawed at 2: it trains
    assert model.stem[1].num_batches_tracked.item() == 0


# --------------------------------------------------------------------------------------------------------
# LR schedules


@pytest.mark.parametrize(
    "kind, kw, torch_sched",
    [
        ("cosine", {}, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12)),
        (
            "step",
            {"milestones": [3, 7], "gamma": 0.5},
            lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [3, 7], gamma=0.5),
        ),
        (
            "onecycle",
            {},
            lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 1.0, total_steps=12, cycle_momentum=False),
        ),
    ],
)
def test_curves_match_torch_for_a_single_group(kind, kw, torch_sched):
    ours = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, ref = LRSchedule(ours, kind, total_steps=12, **kw), torch_sched(theirs)
    for _ in range(12):
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], abs=1e-12)
        ours.step(), theirs.step(), sched.step(), ref.step()


def test_warmup_then_cosine():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = LRSchedule(opt, "cosine", total_steps=10, warmup_steps=4, warmup_start_factor=0.0, min_factor=0.1)
    assert [sched.factor(s) for s in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert sched.factor(10) == pytest.approx(0.1) and sched.factor(50) == pytest.approx(0.1)
    assert sched.factor(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.parametrize("kind", ["cosine", "step", "onecycle", "linear", "none"])
def test_every_group_follows_the_schedule_including_groups_added_later(kind):
    """Lightning #8720 / #12141, torch #79888: after BackboneFinetuning adds a group, ``LambdaLR`` and
    ``OneCycleLR`` crash at the next step (the new group lacks their keys) and cosine overwrites the new
    group's decayed rate. Here, at every optimizer step, every group -- old and new -- runs at its own
    ``initial_lr`` (head: lr, thawed groups: lr * decay**depth) times the schedule's factor."""
    model = TinyNet()
    unfreeze_sched = GradualUnfreeze(model, every=1, lr_decay=0.3)
    opt = build_optimizer(model, "sgd", lr=0.1)
    kw = {"step": {"step_size": 5, "gamma": 0.5}, "cosine": {"warmup_steps": 2}}.get(kind, {})
    lr_sched = LRSchedule(opt, kind, total_steps=16, **kw)
    x, y = tiny_data(8).tensors
    for epoch in range(4):
        unfreeze_sched.step(epoch, opt)
        for _ in range(4):
            f = lr_sched.factor(lr_sched.last_step)
            for g in opt.param_groups:  # the rate each group uses in this optimizer step
                assert g["lr"] == pytest.approx(g["initial_lr"] * f, rel=1e-12), (epoch, g["name"])
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            lr_sched.step()
    # the decayed initial rates were not overwritten by the head's rate
    assert {g["name"]: g["initial_lr"] for g in opt.param_groups} == pytest.approx(
        {"head": 0.1, "layer2": 0.03, "layer1": 0.009, "stem": 0.0027}
    )
    assert len(lr_sched.get_last_lr()) == 4


def test_groups_added_by_hand_get_their_lr_as_initial_lr():
    p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = LRSchedule(opt, "linear", total_steps=4)
    sched.step()
    opt.add_param_group({"params": [q], "lr": 0.5})
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.25])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "cosinus", "total_steps": 3}, "cosine"),
        ({"kind": "cosine"}, "total_steps"),
        ({"kind": "cosine", "total_steps": 3, "warmup_steps": 3}, "warmup_steps"),
        ({"kind": "onecycle", "total_steps": 9, "warmup_steps": 2}, "pct_start"),
        ({"kind": "step"}, "milestones"),
    ],
)
def test_bad_lr_schedules_raise(kwargs, match):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match=match):
        LRSchedule(opt, **kwargs)


# --------------------------------------------------------------------------------------------------------
# state and resume


def test_load_state_dict_rebuilds_groups_requires_grad_and_bn_before_optimizer_state():
    """Lightning #6891: resuming after the unfreeze, the optimizer's saved groups do not match the fresh
    optimizer's, and the backbone silently stays frozen. The schedule's state rebuilds both, by name."""
    model = TinyNet()
    sched = GradualUnfreeze(model, every=1)
    opt = build_optimizer(model, "adamw", lr=1e-2, weight_decay=0.1)
    x, y = tiny_data(8).tensors
    for epoch in range(3):
        sched.step(epoch, opt)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    state, opt_state = sched.state_dict(), opt.state_dict()

    fresh = TinyNet()
    fresh_sched = GradualUnfreeze(fresh, every=1)
    fresh_opt = build_optimizer(fresh, "adamw", lr=1e-2, weight_decay=0.1)
    assert len(fresh_opt.param_groups) == 2
    with pytest.raises(ValueError):  # what the Lightning bug looks like: group counts differ
        fresh_opt.load_state_dict(opt_state)
    fresh_sched.load_state_dict(state, fresh_opt)
    fresh_opt.load_state_dict(opt_state)
    # the backbone thawed before the save is trainable again, in the same groups, by name
    assert [n for n, p in fresh.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad
    ]
    assert [g["param_names"] for g in fresh_opt.param_groups] == [g["param_names"] for g in opt.param_groups]
    assert [g["lr"] for g in fresh_opt.param_groups] == [g["lr"] for g in opt.param_groups]
    _assert_optimizer_matches_trainable(fresh_opt, fresh)
    assert is_bn_locked(fresh.stem[1]) and not is_bn_locked(fresh.layer1[1])
    assert fresh_sched.thawed == ["layer2", "layer1"] and fresh_sched.step(3, fresh_opt) == ["stem"]


def test_bad_states_raise():
    sched = GradualUnfreeze(TinyNet(), every=1)
    with pytest.raises(CheckpointError, match="GradualUnfreeze"):
        sched.load_state_dict({"epoch": 3})
    state = GradualUnfreeze(TinyNet(), every=1).state_dict()
    state["frozen"] = ["backbone.conv9.weight"]
    with pytest.raises(CheckpointError, match="lacks"):
        sched.load_state_dict(state)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(CheckpointError, match="LRSchedule"):
        LRSchedule(opt, "none").load_state_dict({"last_step": 3})


@pytest.mark.parametrize("kind, optim", [("onecycle", "sgd"), ("step", "rmsprop")])
def test_resume_mid_schedule_is_bit_identical(tmp_path, kind, optim):
    full = run(epochs=4, kind=kind, optim=optim)
    run(epochs=4, stop=2, save_to=tmp_path / "half.pt", kind=kind, optim=optim)
    resumed = run(epochs=4, resume=tmp_path / "half.pt", kind=kind, optim=optim)
    _assert_same(full["model"], resumed["model"], "model")
    _assert_same(full["optimizer"], resumed["optimizer"], "optimizer")
    assert resumed["order"] == full["order"][-len(resumed["order"]) :]


@pytest.mark.parametrize("global_rng_loader", [False, True], ids=["loader-generator", "global-rng-loader"])
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path, global_rng_loader):
    """N epochs in one go == N/2 epochs, save, restore in a new interpreter, N/2 more (CPU): bit-identical
    weights and optimizer state. Guards the peer failures measured in issue 5: the resumed backbone stays
    frozen (Lightning re-freezes it in ``setup``), and with no RNG state in the checkpoint a shuffled loader
    sees another order (``global-rng-loader``: a DataLoader without its own generator, plus dropout)."""
    kw = {"own_generator": not global_rng_loader}
    full = run(epochs=4, **kw)
    half = run(epochs=4, stop=2, save_to=tmp_path / "half.pt", **kw)
    # saved after the layer2 thaw (epoch 1), resumed before the layer1 thaw (epoch 2)
    assert half["trainable"] == [n for n in full["trainable"] if n.startswith(("layer2", "head"))]
    subprocess.run(
        [
            sys.executable,
            str(HERE / "schedule_resume.py"),
            "--resume",
            str(tmp_path / "half.pt"),
            "--out",
            str(tmp_path / "resumed.pt"),
            *(["--global-rng-loader"] if global_rng_loader else []),
        ],
        check=True,
        timeout=120,
    )
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert resumed["trainable"] == full["trainable"]  # the backbone did not silently stay frozen
    assert resumed["order"] == full["order"][len(half["order"]) :]  # same data order after resume
    _assert_same(full["model"], resumed["model"], "model")
    _assert_same(full["optimizer"], resumed["optimizer"], "optimizer")
    assert not torch.equal(full["model"]["stem.0.weight"], TinyNet().state_dict()["stem.0.weight"])


def test_resume_without_rng_state_changes_the_data_order(tmp_path):
    """The negative control of the RNG guard: resuming the same checkpoint *without* putting back its RNG
    state (what a Lightning checkpoint offers) gives a shuffled loader another order and other weights, so
    the bit-identical resume above really rests on the RNG state in the checkpoint."""
    full = run(epochs=4, own_generator=False)
    run(epochs=4, stop=2, save_to=tmp_path / "half.pt", own_generator=False)
    with_rng = run(epochs=4, resume=tmp_path / "half.pt", own_generator=False)
    without = run(epochs=4, resume=tmp_path / "half.pt", own_generator=False, restore_rng=False)
    assert with_rng["order"] == full["order"][-len(with_rng["order"]) :]
    assert without["order"] != with_rng["order"]
    assert not torch.equal(without["model"]["head.weight"], full["model"]["head.weight"])
    assert without["trainable"] == full["trainable"]  # the schedule state alone still rethaws the backbone


def test_step_arguments_are_checked() -> None:
    model = TinyNet()
    thaw = GradualUnfreeze(model, every=1)
    with pytest.raises(ConfigError, match="epoch must be an integer >= 0"):
        thaw.step("2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="optimizer must be a torch optimizer"):
        thaw.step(1, "adam")  # type: ignore[arg-type]


def test_damaged_or_foreign_unfreeze_states_are_refused() -> None:
    model = TinyNet()
    thaw = GradualUnfreeze(model, every=1)
    with pytest.raises(CheckpointError, match="lacks \\['plan'"):
        thaw.load_state_dict({"type": "GradualUnfreeze"})
    state = thaw.state_dict()
    state["plan"] = {1: ["layer9"]}
    with pytest.raises(CheckpointError, match="layer groups \\['layer9'\\]"):
        thaw.load_state_dict(state)


def test_lr_schedule_arguments_and_states_are_checked() -> None:
    optimizer = build_optimizer(TinyNet())
    with pytest.raises(ConfigError, match="needs a torch optimizer"):
        LRSchedule("adam", "cosine", total_steps=10)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="min_factor must be a finite number"):
        LRSchedule(optimizer, "cosine", total_steps=10, min_factor="0")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="milestones must be a list of integer steps"):
        LRSchedule(optimizer, "step", milestones=[5, -1])
    sched = LRSchedule(optimizer, "cosine", total_steps=10)
    state = sched.state_dict()
    del state["last_step"]
    with pytest.raises(CheckpointError, match="last_step=None"):
        sched.load_state_dict(state)
