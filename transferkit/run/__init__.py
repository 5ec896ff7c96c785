"""The run layer: a fine-tuning run from its options to its run folder.

``transferkit.finetune(backbone="resnet18", classes=10)`` runs what ``transferkit finetune --backbone
resnet18 --classes 10`` runs, writes the same run folder, and returns a :class:`RunResult`.

Modules, in the order a run uses them:

* :mod:`.spec` -- :class:`FinetuneSpec`, every option typed (``validate``: the checks that need no model);
* :mod:`.options` -- the options layered: defaults < a resumed run's ``args.yaml`` < ``config`` < given;
* :mod:`.resume` -- the checkpoint ``resume`` names, read and checked, and where its best epoch is;
* :mod:`.data_plan` -- the data scanned, the bundle, the loader workers, the feature-cache decision;
* :mod:`.plan` -- the learning rates, the :class:`~.plan.FreezePlan`, the optimizer and LR schedule;
* :mod:`.start` -- the run folder decided, claimed, and undone on an early failure (``RunStart``);
* :mod:`.job` -- :func:`~.job.build_job`: every input checked and built into one frozen ``Job``;
* :mod:`.training` -- the Trainer, the epochs, the export; :mod:`.facts` -- what the run used and says;
* :mod:`.runner` -- :func:`~.runner.run`, the whole run (train, evaluate only, or already complete);
* :mod:`.folder` -- :class:`RunFolder`, the only reader and writer of a run folder, checkpoints included;
* :mod:`.reporter` -- where a run's lines go; :mod:`.api` -- :func:`finetune` and :class:`RunResult`.
"""

from __future__ import annotations

from transferkit.run.api import RunResult, finetune
from transferkit.run.folder import RunFolder
from transferkit.run.spec import FinetuneSpec

__all__ = ["FinetuneSpec", "RunFolder", "RunResult", "finetune"]
