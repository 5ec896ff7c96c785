"""The training loop: epochs, AMP, channels-last, torch.compile, DDP, metrics, events, exact resume.

:class:`Trainer` runs a fine-tuning job on an adapter built by
:func:`~transferkit.backbones.create_model`, with an optimizer from
:func:`~transferkit.optim.build_optimizer` and the schedules of :mod:`transferkit.schedule`. Each epoch
it steps the unfreeze schedule (thawed groups join the optimizer), trains with the LR schedule stepped
after every optimizer step, evaluates, and emits an :class:`EpochEnd` event (the history row, the
evaluation, whether the epoch improved on the best) to ``on_epoch_end``.

The Trainer writes nothing. What goes into a checkpoint -- model, EMA, optimizer, grad scaler, and in
``extra`` the schedules' states and the metric history -- is :meth:`Trainer.checkpoint_state`; a run
folder's writer (:meth:`transferkit.run.RunFolder.save_epoch`, given as ``on_epoch_end``) turns each event
into ``last.pt`` and, when the epoch improved, ``best.pt``, on rank 0 only.

Recipe hooks (:mod:`transferkit.recipes`): ``mixup=`` mixes each training batch and trains on soft
targets; ``ema_decay=`` keeps a :class:`~transferkit.recipes.ModelEma` of the weights, updated after every
optimizer step and validated each epoch beside the model; the epoch's better of the two competes for
``best.pt`` and :attr:`Trainer.best_weights` says which one won (``"model"`` or ``"ema"``).

Resume is exact: the unfreeze schedule rebuilds the optimizer's groups by parameter name, then model,
EMA, optimizer, scaler and RNG states are restored (NumPy's too, which mixup draws from), then the LR
schedule's step counter; the loaders' shuffling and worker seeds depend only on ``(seed, epoch)`` (see
:func:`transferkit.data.set_loader_epoch`).

Multi-process: launch with ``torchrun --standalone --nproc_per_node=2 scripts/finetune.py ...``.
:func:`transferkit.distributed.init_distributed` joins torchrun's process group; the model is wrapped in
``DistributedDataParallel``
(re-wrapped whenever a group thaws, since DDP only syncs parameters that were trainable when it was
built), and metrics are summed across ranks.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body, self.fc = nn.Linear(4, 8), nn.Linear(8, 2)
    ...         self.head = self.fc
    ...     def forward(self, x):
    ...         return self.fc(self.body(x).relu())
    >>> ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    >>> model = Net()
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> trainer = Trainer(model, opt, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8), epochs=2,
    ...                   num_classes=2)
    >>> result = trainer.fit()
    >>> len(result.history), 0.0 <= result.best_acc <= 1.0
    (2, True)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from transferkit.data import set_loader_epoch
from transferkit.distributed import DistContext, amp_dtype_for
from transferkit.errors import CheckpointError, ConfigError
from transferkit.evaluation import EvalResult, evaluate
from transferkit.recipes import MixupCutmix, ModelEma

__all__ = ["EpochEnd", "FitResult", "Trainer"]

logger = logging.getLogger(__name__)

Progress = Callable[..., Iterable]


# ----------------------------------------------------------------------------------------------------------
# results


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns; ``best_epoch`` and the history's ``epoch`` count from 0.

    ``best_weights`` is ``"ema"`` when the best epoch's EMA weights validated better than the model's.
    """

    best_acc: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: EvalResult | None = None
    best_weights: str = "model"


@dataclass(frozen=True)
class EpochEnd:
    """What :meth:`Trainer.fit` reports after each epoch (``on_epoch_end(trainer, event)``).

    Attributes:
        epoch: the epoch just trained, from 0.
        row: its history row (losses, accuracies, rates, seconds).
        result: the model's evaluation (loss, accuracy, confusion matrix).
        improved: the epoch's better of the model and its EMA beat every earlier epoch: its weights are now
            the best (:attr:`Trainer.best_weights` says which of the two).
    """

    epoch: int
    row: dict[str, Any]
    result: EvalResult
    improved: bool


class _HeadOnly(nn.Module):
    """Forward = the adapter's head on cached features, so DDP/compile see one module either way."""

    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, features: Tensor) -> Tensor:
        return self.adapter.forward_head(features)


def _identity_progress(iterable: Iterable, **_: Any) -> Iterable:
    return iterable


# ----------------------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """Fine-tune ``model`` for ``epochs``; evaluate; report each epoch; resume.

    Args:
        model: the network (an :class:`~transferkit.backbones.Adapter` for ``inputs="features"``).
        optimizer: over its trainable parameters.
        train_loader, val_loader: from :func:`transferkit.data.make_loaders` (any loaders work; a
            ``set_epoch`` sampler and a loader ``generator`` make epochs reproducible).
        epochs: total epochs (a resumed run continues up to it).
        num_classes: for the confusion matrix (default: ``model.num_classes``).
        device: where to train.
        lr_schedule: stepped after every optimizer step (``step()``, ``state_dict()``).
        freeze_schedule: stepped at the start of every epoch (``step(epoch, optimizer) -> thawed``).
        amp: autocast (bfloat16 on CPU; float16 with loss scaling on GPUs without bfloat16).
        channels_last: NHWC memory format for model and inputs (faster convolutions on recent hardware).
        compile: ``torch.compile`` the forward pass.
        dist: this process's :class:`~transferkit.distributed.DistContext`.
        inputs: ``"images"``, or ``"features"`` when the loaders yield cached backbone features.
        frozen_backbone: keep everything but the head in eval mode (linear probe; the cached and the
            recomputed paths then compute the same thing).
        meta: extra facts for the checkpoints' ``meta`` (backbone, class names, ...).
        seed: the loaders' shuffle seed.
        label_smoothing: cross-entropy label smoothing (with ``mixup``, give it to the mixup instead).
        mixup: a :class:`~transferkit.recipes.MixupCutmix`: each training batch is mixed and the loss is
            its soft-target cross-entropy (training accuracy is then counted against the unmixed labels).
        ema_decay: keep a :class:`~transferkit.recipes.ModelEma` of the weights with this decay, validate
            it every epoch (``ema_val_loss``/``ema_val_acc`` in the history), put it in the checkpoint state
            (``models["ema"]``) and let it compete for the best epoch.
        grad_clip: clip the global gradient norm to this value.
        progress: ``progress(iterable, total=, desc=)`` -> iterable (e.g. tqdm); identity by default.
        on_epoch_end: ``callback(trainer, event)`` with an :class:`EpochEnd` after each epoch (e.g.
            :meth:`transferkit.run.RunFolder.save_epoch`, which writes the checkpoints).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader: DataLoader,
        val_loader: DataLoader,
        *,
        epochs: int,
        num_classes: int | None = None,
        device: torch.device | str = "cpu",
        lr_schedule: Any = None,
        freeze_schedule: Any = None,
        amp: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        dist: DistContext | None = None,
        inputs: str = "images",
        frozen_backbone: bool = False,
        meta: Mapping[str, Any] | None = None,
        seed: int = 0,
        label_smoothing: float = 0.0,
        mixup: MixupCutmix | None = None,
        ema_decay: float | None = None,
        grad_clip: float | None = None,
        progress: Progress | None = None,
        on_epoch_end: Callable[[Trainer, EpochEnd], None] | None = None,
    ) -> None:
        if inputs not in ("images", "features"):
            raise ConfigError(f"inputs must be 'images' or 'features', got {inputs!r}")
        if not (isinstance(epochs, int) and epochs >= 1):
            raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
        if mixup is not None and inputs == "features":
            raise ConfigError("mixup/cutmix mix images; with cached features (inputs='features') drop mixup")
        if mixup is not None and label_smoothing:
            raise ConfigError(
                "with mixup, label smoothing belongs in the soft targets: pass it as "
                "MixupCutmix(label_smoothing=...) and leave the Trainer's label_smoothing at 0"
            )
        self.device = torch.device(device)
        self.dist = dist or DistContext()
        self.channels_last = channels_last and inputs == "images"
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = optimizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.epochs = epochs
        self.num_classes = int(num_classes if num_classes is not None else model.num_classes)
        self.lr_schedule, self.freeze_schedule = lr_schedule, freeze_schedule
        self.amp = amp
        self.amp_dtype = amp_dtype_for(self.device) if amp else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp and self.amp_dtype == torch.float16)
        self.compile = compile
        self.inputs = inputs
        self.frozen_backbone = frozen_backbone
        self.meta = dict(meta or {})
        self.seed = seed
        self.label_smoothing = label_smoothing
        self.mixup = mixup
        # after the move and the memory format: the average is a copy of the model as it trains
        self.ema = ModelEma(self.model, ema_decay) if ema_decay is not None else None
        self.grad_clip = grad_clip
        self.progress = progress or _identity_progress
        self.on_epoch_end = on_epoch_end
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_epoch = -1.0, -1
        #: which weights reached ``best_acc``: ``"model"``, or ``"ema"`` when the EMA validated better
        self.best_weights = "model"
        self.start_epoch = 0
        self._wrap()

    # ---- wrapping --------------------------------------------------------------------------------------

    def _wrap(self) -> None:
        """(Re)build the train/eval forward modules: head-only view, DDP, compile."""
        base = _HeadOnly(self.model) if self.inputs == "features" else self.model
        train_mod: nn.Module = base
        if self.dist.enabled and any(p.requires_grad for p in base.parameters()):
            from torch.nn.parallel import DistributedDataParallel as DDP

            # auxiliary heads (inception) get no gradient from the main logits
            aux = len(getattr(self.model, "head_names", [])) > 1
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_mod = DDP(base, device_ids=ids, find_unused_parameters=aux)
        if self.compile:
            compiled = torch.compile(base)
            train_mod = compiled if train_mod is base else torch.compile(train_mod)
            base = compiled
        self._train_forward, self._eval_forward = train_mod, base

    def _train_mode(self) -> None:
        self.model.train()
        if self.frozen_backbone:
            self.model.eval()
            head = getattr(self.model, "head", None)
            if isinstance(head, nn.Module):
                head.train()

    def _to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=non_blocking)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=non_blocking)

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp)

    def _reduce(self, t: Tensor) -> Tensor:
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    # ---- one epoch -------------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training loader; returns ``{"train_loss", "train_acc", "images"}``."""
        self._train_mode()
        set_loader_epoch(self.train_loader, epoch, self.seed)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n
        bar = self.progress(
            self.train_loader, total=len(self.train_loader), desc=f"epoch {epoch + 1}/{self.epochs}"
        )
        for step, (x, y) in enumerate(bar):
            x, y = self._to_device(x, y)
            soft = None
            if self.mixup is not None:
                x, soft = self.mixup(x, y)
            with self._autocast():
                logits = self._train_forward(x)
            if soft is not None:
                loss = self.mixup.loss(logits.float(), soft)
            else:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], self.grad_clip
                )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.lr_schedule is not None:
                self.lr_schedule.step()
            if self.ema is not None:
                self.ema.update(self.model)
            with torch.no_grad():
                n = y.numel()
                sums += torch.stack(
                    [
                        loss.detach().double() * n,
                        (logits.argmax(1) == y).sum().double(),
                        torch.tensor(n, dtype=torch.float64, device=self.device),
                    ]
                )
            if step % 10 == 0 and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        sums = self._reduce(sums).tolist()
        count = max(sums[2], 1.0)
        return {"train_loss": sums[0] / count, "train_acc": sums[1] / count, "images": int(sums[2])}

    def evaluate(self, loader: DataLoader | None = None, *, model: nn.Module | None = None) -> EvalResult:
        """Loss, accuracy and confusion matrix over ``loader`` (default: the validation loader), all ranks.

        Args:
            loader: what to evaluate on.
            model: other weights of the same network to evaluate (e.g. ``trainer.ema.module``); default:
                the model being trained.
        """
        target = model if model is not None else self.model
        if model is None:
            forward = self._eval_forward
        else:
            forward = _HeadOnly(model) if self.inputs == "features" else model
        self._sync_buffers(target)
        was_training = target.training
        target.eval()  # the forward may be a compiled or head-only view of it
        try:
            return evaluate(
                forward,
                loader if loader is not None else self.val_loader,
                num_classes=self.num_classes,
                device=self.device,
                amp_dtype=self.amp_dtype,
                channels_last=self.channels_last,
                reduce=self._reduce if self.dist.enabled else None,
            )
        finally:
            target.train(was_training)

    def _sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics) before evaluating.

        DDP broadcasts buffers at the start of each forward, so after the last training step every rank
        holds statistics updated by its own batch; evaluating with rank 0's makes the reduced metrics
        those of the model rank 0 saves.
        """
        if not self.dist.enabled:
            return
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)

    # ---- the run ---------------------------------------------------------------------------------------

    def fit(self) -> FitResult:
        """Train from :attr:`start_epoch` (0, or where :meth:`resume` left it) to ``epochs``."""
        result = None
        for epoch in range(self.start_epoch, self.epochs):
            result, improved = self._epoch(epoch)
            if self.on_epoch_end is not None:
                self.on_epoch_end(self, EpochEnd(epoch, self.history[-1], result, improved))
        if result is None:  # resumed a finished run: nothing left to train
            result = self.evaluate()
        return FitResult(self.best_acc, self.best_epoch, self.history, result, self.best_weights)

    def _epoch(self, epoch: int) -> tuple[EvalResult, bool]:
        """Thaw, train, evaluate (the model and its EMA) and record one epoch; ``(evaluation, improved)``."""
        start = time.perf_counter()
        if self.freeze_schedule is not None:
            thawed = self.freeze_schedule.step(epoch, self.optimizer)
            if thawed:
                self._wrap()  # DDP must learn about the newly trainable parameters
        lrs = self.learning_rates()  # the rates this epoch starts with (thawed groups included)
        train = self.train_epoch(epoch)
        result = self.evaluate()
        row = {
            "epoch": epoch,
            "train_loss": train["train_loss"],
            "train_acc": train["train_acc"],
            "val_loss": result.loss,
            "val_acc": result.acc,
        }
        score, weights = result.acc, "model"
        if self.ema is not None:
            averaged = self.evaluate(model=self.ema.module)
            row.update(ema_val_loss=averaged.loss, ema_val_acc=averaged.acc)
            if averaged.acc > result.acc:  # a tie keeps the trained weights
                score, weights = averaged.acc, "ema"
        row.update(lr=lrs, seconds=time.perf_counter() - start)
        self.history.append(row)
        improved = score > self.best_acc
        if improved:
            self.best_acc, self.best_epoch, self.best_weights = score, epoch, weights
        return result, improved

    def weights(self, which: str = "model") -> dict[str, Tensor]:
        """The current state dict of the trained model (``"model"``) or of its EMA (``"ema"``).

        Raises:
            ConfigError: ``"ema"`` without an EMA, or another name.
        """
        if which == "model":
            return self.model.state_dict()
        if which == "ema" and self.ema is not None:
            return self.ema.module.state_dict()
        raise ConfigError(f"weights: expected 'model' or 'ema' (with ema_decay set), got {which!r}")

    def learning_rates(self) -> dict[str, float]:
        """``{group name: current lr}`` (unnamed groups are called ``group<i>``)."""
        out = {}
        for i, g in enumerate(self.optimizer.param_groups):
            lr = g["lr"]
            out[str(g.get("name") or f"group{i}")] = float(lr.item() if isinstance(lr, Tensor) else lr)
        return out

    # ---- checkpoints -----------------------------------------------------------------------------------

    def state_extra(self) -> dict[str, Any]:
        """What goes into a checkpoint's ``extra``: schedule states, history, best, loader generator."""
        extra: dict[str, Any] = {
            "history": self.history,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
            "seed": self.seed,
        }
        if self.ema is not None:
            extra["ema"] = self.ema.state_dict()
        if self.freeze_schedule is not None:
            extra["freeze_schedule"] = self.freeze_schedule.state_dict()
        if self.lr_schedule is not None:
            extra["lr_schedule"] = self.lr_schedule.state_dict()
        gen = getattr(self.train_loader, "generator", None)
        if gen is not None:
            extra["loader_generator"] = gen.get_state()
        return extra

    def checkpoint_state(self, epoch: int, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments of :func:`~transferkit.checkpoint.save_checkpoint` for the full training
        state after ``epoch``: model, EMA, optimizer, scaler, LR step, ``metrics``, :meth:`state_extra`, meta.
        """
        return {
            "model": self.model,
            "models": {"ema": self.ema.module} if self.ema is not None else None,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "epoch": epoch,
            "step": getattr(self.lr_schedule, "last_step", None),
            "metrics": dict(metrics or {}),
            "extra": self.state_extra(),
            "meta": self.meta,
        }

    def resume(
        self,
        source: str | os.PathLike | Mapping[str, Any],
        *,
        label: str | None = None,
        hint: str | None = None,
    ) -> int:
        """Restore everything from a checkpoint of :meth:`checkpoint_state`; returns the epoch to start at.

        Args:
            source: the checkpoint file, or the checkpoint as loaded.
            label, hint: how errors name the checkpoint and what they advise (default: the path; start a new
                run from its weights with ``load_partial``).

        Raises:
            CheckpointError: the file is not a transferkit training checkpoint of this model (a
                :class:`~transferkit.errors.CheckpointMismatchError` when its states do not fit; nothing was
                restored).
        """
        from transferkit.checkpoint import load_checkpoint, restore_checkpoint
        from transferkit.checkpoint.training import require_training_checkpoint

        ckpt = load_checkpoint(source) if not isinstance(source, Mapping) else source
        label = label or ("checkpoint" if isinstance(source, Mapping) else str(source))
        hint = hint or "to start a new run from its weights, load them with load_partial"
        ckpt = require_training_checkpoint(ckpt, label, epoch=True, hint=hint)
        extra = ckpt.get("extra") or {}
        if self.ema is not None and ("ema" not in ckpt["models"] or "ema" not in extra):
            raise CheckpointError(
                f"{label} holds no model EMA, so this run's EMA cannot continue from it; resume without "
                "`ema_decay`, or start a new run from its weights",
                param="ema_decay",
            )
        if self.freeze_schedule is not None and "freeze_schedule" in extra:
            # groups first: the optimizer state is then loaded into the same groups, in the same order
            self.freeze_schedule.load_state_dict(extra["freeze_schedule"], self.optimizer)
        restore_checkpoint(
            ckpt,
            model=self.model,
            models={"ema": self.ema.module} if self.ema is not None else None,
            optimizer=self.optimizer,
            scaler=self.scaler,
            restore_rng=True,
            label=label,
            hint=hint,
        )
        if self.ema is not None:
            self.ema.load_state_dict(extra["ema"])
        if self.lr_schedule is not None and "lr_schedule" in extra:
            self.lr_schedule.load_state_dict(extra["lr_schedule"])
        gen = getattr(self.train_loader, "generator", None)
        if gen is not None and "loader_generator" in extra:
            gen.set_state(extra["loader_generator"])
        self.history = list(extra.get("history", []))
        self.best_acc = float(extra.get("best_acc", -1.0))
        self.best_epoch = int(extra.get("best_epoch", -1))
        self.best_weights = str(extra.get("best_weights", "model"))
        self.start_epoch = int(ckpt["epoch"]) + 1
        self._wrap()
        # log lines count epochs from 1, as the console does; start_epoch and best_epoch count from 0
        logger.info(
            "resumed at epoch %d/%d (best val acc %.4f at epoch %d)",
            self.start_epoch + 1,
            self.epochs,
            self.best_acc,
            self.best_epoch + 1,
        )
        return self.start_epoch
