"""The training plan of a run: its learning rates, what is frozen when, the optimizer and the LR schedule.

The defaults are the measured recipe (``benchmarks/bench_transfer.py``; the evidence is in
``benchmarks/RESULTS.md``): with pretrained weights every layer group trains from the first step, at rates
spread geometrically by level below the head down to :data:`PRETRAINED_LR_SPAN` x ``lr``, the new head at
up to :data:`HEAD_LR_SCALE` x ``lr``. :func:`plan_freeze` turns the ``freeze``, ``unfreeze_at``,
``unfreeze_every``, ``linear_probe``, ``lr_decay`` and ``layer_decay`` options into a :class:`FreezePlan`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transferkit.errors import ConfigError

__all__ = [
    "PRETRAINED_LR_SPAN",
    "PRETRAINED_LR",
    "SCRATCH_LR",
    "HEAD_FAN_IN",
    "HEAD_LR_SCALE",
    "FreezePlan",
    "span_decay",
    "resolve_lr",
    "head_lr_scale",
    "parse_unfreeze_at",
    "plan_freeze",
    "build_training",
]

# The default recipe with pretrained weights, each value chosen by benchmarks/bench_transfer.py (the evidence
# is in benchmarks/RESULTS.md): every layer group trains from the first step (a head-only first epoch, the
# shape of fastai's fine_tune, reached 65.6 % on ResNet-20 where training everything from the start reached
# 71-74 % at the same base rate), at rates spread geometrically by level below the head, down to
# PRETRAINED_LR_SPAN x `lr` for the lowest group, whatever the number of groups.
PRETRAINED_LR_SPAN = 0.1
# AdamW's base rate: fine-tuning a pretrained network on a small data set in a few hundred steps needs a
# rate high enough for its upper layers to move (1e-3 left EfficientNet-Lite0 at 64 % where 1e-2 gave 80 %);
# from random weights the usual 1e-3
PRETRAINED_LR = 1e-2
SCRATCH_LR = 1e-3
# The new head starts near zero and has the farthest to go. Adam moves every weight by about the rate, so a
# logit moves in proportion to the head's fan-in: a narrow head (ResNet-20's 64 features) needs a higher rate
# to move its logits as fast as a wide one (Lite0's 1,280), where a higher rate destabilises (97 % -> 92 %
# on the digits at 3x). The head trains at HEAD_FAN_IN / fan-in x `lr`, between 1x and HEAD_LR_SCALE x.
HEAD_FAN_IN = 256
HEAD_LR_SCALE = 3.0


@dataclass(frozen=True)
class FreezePlan:
    """What is frozen when, and at which rates the groups below the head start.

    Attributes:
        schedule: the :class:`~transferkit.schedule.GradualUnfreeze` that thaws groups during the run (it
            gives each thawed group its rate), or ``None`` when what is frozen stays frozen.
        description: the plan in words (the console's freeze line, ``args.yaml``'s ``resolved.freeze``).
        optimizer_lr_decay: the per-level rate factor the optimizer applies to the groups that train from
            the start; ``None`` for one rate (or when only the head starts trainable).
        warnings: what the plan cannot do as asked (a thaw past the last epoch, frozen random weights).
    """

    schedule: Any
    description: str
    optimizer_lr_decay: float | None = None
    warnings: tuple[str, ...] = ()


def span_decay(num_groups: int, span: float = PRETRAINED_LR_SPAN) -> float:
    """The per-level rate factor that spreads ``num_groups`` groups' rates over ``span``.

    Example:
        >>> round(span_decay(4), 3)  # 3 levels below the head: 1, 0.464, 0.215, 0.1
        0.464
    """
    return 1.0 if num_groups < 2 else float(span ** (1.0 / (num_groups - 1)))


def resolve_lr(options: Mapping[str, Any], pretrained: bool) -> float:
    """``lr``, or the default for the weights: :data:`PRETRAINED_LR` or :data:`SCRATCH_LR`."""
    if options["lr"] is not None:
        return float(options["lr"])
    return PRETRAINED_LR if pretrained else SCRATCH_LR


def head_lr_scale(options: Mapping[str, Any], model: Any, pretrained: bool) -> float:
    """``head_lr_scale``, or the default on pretrained weights: ``HEAD_FAN_IN / fan-in`` clipped to
    ``[1, HEAD_LR_SCALE]`` (3 for a 64-feature head, 1 from 256 features up); 1 on random weights.

    Example:
        >>> import torch
        >>> class Net(torch.nn.Module):
        ...     head = torch.nn.Linear(64, 10)
        >>> head_lr_scale({"head_lr_scale": None}, Net(), pretrained=True)
        3.0
    """
    if options["head_lr_scale"] is not None:
        return float(options["head_lr_scale"])
    if not pretrained:
        return 1.0
    head = getattr(model, "head", None)
    fan_in = getattr(head, "in_features", None) or getattr(head, "in_channels", None)
    if not fan_in:
        return 1.0
    return float(min(HEAD_LR_SCALE, max(1.0, HEAD_FAN_IN / fan_in)))


def parse_unfreeze_at(specs: Sequence[str]) -> dict[int, list[str] | None]:
    """``["2:layer4,4:layer3", "6"]`` -> ``{2: ["layer4"], 4: ["layer3"], 6: None}`` (None: the rest)."""
    plan: dict[int, list[str] | None] = {}
    for spec in specs:
        for item in (i.strip() for i in str(spec).split(",")):
            if not item:
                continue
            epoch_s, _, group = item.partition(":")
            try:
                epoch = int(epoch_s)
            except ValueError:
                raise ConfigError(
                    f"`unfreeze_at` {item!r}: expected EPOCH or EPOCH:GROUP (e.g. 2:layer4), epoch not an integer",
                    param="unfreeze_at",
                ) from None
            if epoch < 0:
                raise ConfigError(f"`unfreeze_at` {item!r}: the epoch must be >= 0", param="unfreeze_at")
            if not group:
                if epoch in plan:
                    raise ConfigError(f"`unfreeze_at`: epoch {epoch} given twice", param="unfreeze_at")
                plan[epoch] = None
                continue
            current = plan.setdefault(epoch, [])
            if current is None:
                raise ConfigError(
                    f"`unfreeze_at`: epoch {epoch} already thaws every remaining group", param="unfreeze_at"
                )
            current.append(group.strip())
    return plan


def _decays(options: Mapping[str, Any], model: Any, pretrained: bool) -> tuple[float | None, float]:
    """``(lr_decay for the groups training from the start, the thaw schedule's per-level factor)``."""
    lr_decay, layer_decay = options["lr_decay"], options["layer_decay"]
    if lr_decay is None and pretrained and layer_decay is None:
        lr_decay = span_decay(len(list(model.layer_groups())))
    # with layer_decay a thawed parameter's rate comes from its layer (build_optimizer's layer_decay)
    schedule_decay = 1.0 if layer_decay is not None or lr_decay is None else lr_decay
    return lr_decay, schedule_decay


def plan_freeze(options: Mapping[str, Any], model: Any, pretrained: bool) -> FreezePlan:
    """Freeze ``model`` as the options say, and plan its thaws.

    Raises:
        ConfigError: a thaw plan without a frozen start, or a group the model does not have.
    """
    return _checked(options, model, pretrained, _plan(options, model, pretrained))


def _plan(options: Mapping[str, Any], model: Any, pretrained: bool) -> FreezePlan:
    from transferkit.freeze import freeze, freeze_backbone

    mode = str(options["freeze"]).strip()
    thaws = parse_unfreeze_at(options["unfreeze_at"]) or options["unfreeze_every"]
    if options["linear_probe"]:
        freeze_backbone(model)
        return FreezePlan(None, "linear probe: backbone frozen, head trains")
    if mode == "auto":
        mode = "backbone" if thaws else "none"
    if mode == "none":
        if thaws:
            raise ConfigError(
                "`unfreeze_at`/`unfreeze_every` need a frozen start; use `freeze`=backbone (or auto)",
                param="unfreeze_at",
            )
        return _trains_everything(options, model, pretrained)
    if mode == "backbone":
        if not thaws:
            freeze_backbone(model)
            return FreezePlan(None, "backbone frozen for the whole run: the head trains")
        return _thaw_schedule(options, model, pretrained)
    if thaws:
        raise ConfigError(
            "`unfreeze_at`/`unfreeze_every` start from a frozen backbone; use `freeze`=backbone",
            param="unfreeze_at",
        )
    groups = _known_groups(mode, model)
    freeze(model, *groups)
    lr_decay = _decays(options, model, pretrained)[0]
    return FreezePlan(None, f"frozen for the whole run: {', '.join(groups)}", lr_decay)


def _trains_everything(options: Mapping[str, Any], model: Any, pretrained: bool) -> FreezePlan:
    lr_decay = _decays(options, model, pretrained)[0]
    scale = head_lr_scale(options, model, pretrained)
    rates = [f"head at {scale:g} x lr"] if scale != 1.0 else []
    rates += [f"lr x{lr_decay:.3g} per group level below the head"] if lr_decay not in (None, 1.0) else []
    shown = f" ({', '.join(rates)})" if rates else ""
    return FreezePlan(None, f"nothing frozen: every layer trains{shown}", lr_decay)


def _known_groups(mode: str, model: Any) -> list[str]:
    """The layer groups ``freeze`` names (comma-separated), each one the model has."""
    groups = [g.strip() for g in mode.split(",") if g.strip()]
    known = list(model.layer_groups())
    unknown = [g for g in groups if g not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"`freeze`={mode}: unknown layer group(s) {unknown}; expected none, backbone, auto or groups of "
            f"{', '.join(known)}.{hint}",
            param="freeze",
        )
    return groups


def _thaw_schedule(options: Mapping[str, Any], model: Any, pretrained: bool) -> FreezePlan:
    """A frozen backbone whose groups thaw on ``unfreeze_at``'s epochs or every ``unfreeze_every``."""
    from transferkit.schedule import GradualUnfreeze

    schedule_decay = _decays(options, model, pretrained)[1]
    layer_decay, every = options["layer_decay"], options["unfreeze_every"]
    rates = dict(lr_decay=schedule_decay, layer_decay=layer_decay, lr=options["lr"])
    if every:
        sched = GradualUnfreeze(model, every=every, **rates)
    else:
        plan = parse_unfreeze_at(options["unfreeze_at"])
        below = list(model.layer_groups())[:-1]
        named = {g for gs in plan.values() if gs for g in gs}
        at = {
            e: (gs if gs is not None else [g for g in reversed(below) if g not in named])
            for e, gs in plan.items()
        }
        # a group the model lacks is the schedule's to refuse (LayerGroupError, param "at" = `unfreeze_at`)
        sched = GradualUnfreeze(model, at={e: g for e, g in at.items() if g}, **rates)
    per = (
        f"lr x{layer_decay:g} per layer" if layer_decay is not None else f"lr x{schedule_decay:.3g} per level"
    )
    return FreezePlan(sched, f"head only, then thaw {_thaws(sched.plan)} ({per})")


def _thaws(plan: Mapping[int, list[str]]) -> str:
    # plan key e (0-based) = thawed after e epochs, i.e. from console epoch e + 1 on
    return ", ".join(
        f"{'+'.join(g)} after epoch {e}" if e else f"{'+'.join(g)} from the start"
        for e, g in sorted(plan.items())
    )


def _checked(options: Mapping[str, Any], model: Any, pretrained: bool, plan: FreezePlan) -> FreezePlan:
    """``plan`` as it can happen: a thaw due at or after the last epoch ("stem after epoch 10" in a 4-epoch
    run) is dropped (the group stays frozen) and said once; a backbone frozen on random weights only feeds
    the head random features: said too."""
    sched, description, warnings = plan.schedule, plan.description, []
    epochs = options["epochs"]
    late = {e: g for e, g in (getattr(sched, "plan", None) or {}).items() if e >= epochs}
    if late:
        for e in late:
            del sched.plan[e]
        names = [g for e in sorted(late) for g in late[e]]
        count = f"{epochs} epoch{'' if epochs == 1 else 's'}"
        warnings.append(
            f"{', '.join(names)} would thaw only after epoch {min(late)}, past the run's {count}: left frozen "
            "for the whole run (thaw earlier with `unfreeze_at`/`unfreeze_every`, or train longer)"
        )
        if sched.plan:
            description = (
                f"head only, then thaw {_thaws(sched.plan)}; frozen for the whole run: {', '.join(names)} "
                f"(lr x{sched.lr_decay:g} per level)"
            )
        else:  # nothing left to thaw: a fixed freeze
            sched = None
            description = (
                f"backbone frozen for the whole run: the head trains (never thawed: {', '.join(names)})"
            )
    head = set(model.head_parameter_names())
    frozen = [n for n, p in model.named_parameters() if n not in head and not p.requires_grad]
    if frozen and not pretrained:
        span = "until their thaw" if sched is not None and sched.plan else "for the whole run"
        warnings.append(
            f"layers of {options['backbone']} start frozen on RANDOM weights ({span}): they only feed the head "
            "random features, so accuracy stays low; use `freeze`=none, or pretrained weights (`weights`=PATH)"
        )
    return FreezePlan(sched, description, plan.optimizer_lr_decay, tuple(warnings))


def build_training(
    options: Mapping[str, Any], model: Any, plan: FreezePlan, pretrained: bool, steps: int
) -> tuple[Any, Any]:
    """``(optimizer, per-step LR schedule)`` for ``steps`` optimizer steps an epoch."""
    from transferkit.optim import build_optimizer
    from transferkit.schedule import LRSchedule

    optimizer = build_optimizer(
        model,
        options["optimizer"],
        lr=options["lr"],
        weight_decay=options["weight_decay"],
        lr_decay=plan.optimizer_lr_decay,
        head_lr_scale=head_lr_scale(options, model, pretrained),
        layer_decay=options["layer_decay"],
    )
    kind, epochs = options["scheduler"], options["epochs"]
    kwargs: dict[str, Any] = {"step_size": max(1, epochs // 3) * steps} if kind == "step" else {}
    schedule = LRSchedule(
        optimizer, kind, total_steps=epochs * steps, warmup_steps=options["warmup_epochs"] * steps, **kwargs
    )
    return optimizer, schedule
