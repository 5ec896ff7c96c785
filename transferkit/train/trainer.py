"""The :class:`Trainer`: one epoch after another, on one process or under DDP (see :mod:`transferkit.train`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from transferkit.data import set_loader_epoch
from transferkit.distributed import DistContext, all_reduce_sum, amp_dtype_for, sync_buffers
from transferkit.errors import ConfigError
from transferkit.evaluation import EvalResult, evaluate
from transferkit.recipes import MixupCutmix, ModelEma
from transferkit.train.events import EpochEnd, FitResult
from transferkit.train.forward import HeadOnly, build_forwards
from transferkit.train.state import Progress, TrainingParts, restore_training, training_extra

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)

ProgressBar = Callable[..., Iterable]


def _identity_progress(iterable: Iterable, **_: Any) -> Iterable:
    return iterable


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
        progress: ProgressBar | None = None,
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
        self._train_forward, self._eval_forward = build_forwards(
            self.model, inputs=self.inputs, dist=self.dist, device=self.device, compile=self.compile
        )

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
        sums = all_reduce_sum(sums, self.dist).tolist()
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
            forward = HeadOnly(model) if self.inputs == "features" else model
        sync_buffers(target, self.dist)  # the reduced metrics are those of the model rank 0 saves
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
                reduce=partial(all_reduce_sum, ctx=self.dist) if self.dist.enabled else None,
            )
        finally:
            target.train(was_training)

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

    def _parts(self) -> TrainingParts:
        generator = getattr(self.train_loader, "generator", None)
        return TrainingParts(self.model, self.optimizer, self.scaler, self.ema, self.freeze_schedule,
                             self.lr_schedule, generator)  # fmt: skip

    def state_extra(self) -> dict[str, Any]:
        """What goes into a checkpoint's ``extra``: schedule states, history, best, loader generator."""
        progress = Progress(self.history, self.best_acc, self.best_epoch, self.best_weights)
        return training_extra(self._parts(), progress, self.seed)

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
        from transferkit.checkpoint import load_checkpoint
        from transferkit.checkpoint.training import require_training_checkpoint

        ckpt = load_checkpoint(source) if not isinstance(source, Mapping) else source
        label = label or ("checkpoint" if isinstance(source, Mapping) else str(source))
        hint = hint or "to start a new run from its weights, load them with load_partial"
        ckpt = require_training_checkpoint(ckpt, label, epoch=True, hint=hint)
        progress = restore_training(ckpt, self._parts(), label, hint)
        self.history = progress.history
        self.best_acc, self.best_epoch, self.best_weights = (
            progress.best_acc, progress.best_epoch, progress.best_weights,
        )  # fmt: skip
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
