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
the best epoch and :attr:`Trainer.best_weights` says which one won (``"model"`` or ``"ema"``).

Resume is exact: the unfreeze schedule rebuilds the optimizer's groups by parameter name, then model,
EMA, optimizer, scaler and RNG states are restored (NumPy's too, which mixup draws from), then the LR
schedule's step counter; the loaders' shuffling and worker seeds depend only on ``(seed, epoch)`` (see
:func:`transferkit.data.set_loader_epoch`).

Multi-process: launch with ``torchrun --standalone --nproc_per_node=2 scripts/finetune.py ...``.
:func:`transferkit.distributed.init_distributed` joins torchrun's process group; the model is wrapped in
``DistributedDataParallel`` (re-wrapped whenever a group thaws, since DDP only syncs parameters that were
trainable when it was built), and metrics are summed across ranks.

Modules: :mod:`.trainer` (:class:`Trainer`), :mod:`.events` (:class:`EpochEnd`, :class:`FitResult`),
:mod:`.forward` (the head-only view, DDP and compile wrapping), :mod:`.state` (a checkpoint's ``extra``
and the order of an exact resume).

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

from transferkit.train.events import EpochEnd, FitResult
from transferkit.train.trainer import Trainer

__all__ = ["EpochEnd", "FitResult", "Trainer"]
