"""The run layer: :class:`FinetuneSpec` (every option, typed) and :func:`finetune` (the whole job).

``transferkit.finetune(backbone="resnet18", classes=10)`` runs what ``transferkit finetune --backbone
resnet18 --classes 10`` runs, writes the same run folder, and returns a :class:`RunResult`.
"""

from __future__ import annotations

from transferkit.run.api import RunResult, finetune
from transferkit.run.folder import RunFolder
from transferkit.run.spec import FinetuneSpec

__all__ = ["FinetuneSpec", "RunFolder", "RunResult", "finetune"]
