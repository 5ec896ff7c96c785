"""transferkit: transfer learning on PyTorch.

Adapters for pretrained torchvision and timm backbones, partial checkpoint loading that says exactly
what happened, freeze/unfreeze schedules that resume exactly, and safe atomic checkpoints.

Public names are resolved lazily (PEP 562), so ``import transferkit`` stays cheap and each submodule
is imported the first time one of its names is used.

Example:
    >>> import transferkit
    >>> "load_partial" in transferkit.__all__
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "TransferkitError": "errors",
    "CheckpointError": "errors",
    "UnsafeCheckpointError": "errors",
    "LoadError": "errors",
    "ConfigError": "errors",
    # checkpoint
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "restore_checkpoint": "checkpoint",
    "extract_state_dict": "checkpoint",
    "snapshot_state": "checkpoint",
    "save_weights": "checkpoint",
    "atomic_write": "checkpoint",
    "describe_unsafe_globals": "checkpoint",
    # salvage
    "salvage_load": "salvage",
    "find_placeholders": "salvage",
    "Placeholder": "salvage",
    # rename
    "Prefix": "rename",
    "Regex": "rename",
    "parse_rule": "rename",
    "RenameOnLoadMixin": "rename",
    # partial
    "load_partial": "partial",
    "LoadReport": "load_report",
    # align, converters
    "align_by_structure": "align",
    "Alignment": "align",
    "list_converters": "converters",
    "get_converter": "converters",
    "register_converter": "converters",
    "verify_outputs": "converters",
    # inspect
    "inspect_checkpoint": "inspect",
    # backbones
    "create_model": "backbones",
    "list_backbones": "backbones",
    "replace_head": "backbones",
    "Adapter": "backbones",
    # freeze
    "freeze": "freeze",
    "unfreeze": "freeze",
    "freeze_backbone": "freeze",
    "trainable_parameters": "freeze",
    "summary": "freeze",
    "convert_frozen_bn": "freeze",
    # optim
    "build_optimizer": "optim",
    "add_param_group": "optim",
    # schedule
    "GradualUnfreeze": "schedule",
    "LRSchedule": "schedule",
    # evaluation
    "evaluate": "evaluation",
    "EvalResult": "evaluation",
    # run
    "finetune": "run",
    "FinetuneSpec": "run",
    "RunResult": "run",
    "RunFolder": "run",
    # use: a finished run (transferkit.evaluate is evaluation's free function; use.evaluate is not exported)
    "load_run": "use",
    "LoadedRun": "use",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"transferkit.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from transferkit.align import Alignment, align_by_structure
    from transferkit.backbones import Adapter, create_model, list_backbones, replace_head
    from transferkit.checkpoint import (
        atomic_write,
        describe_unsafe_globals,
        extract_state_dict,
        load_checkpoint,
        restore_checkpoint,
        save_checkpoint,
        save_weights,
        snapshot_state,
    )
    from transferkit.converters import get_converter, list_converters, register_converter, verify_outputs
    from transferkit.errors import (
        CheckpointError,
        ConfigError,
        LoadError,
        TransferkitError,
        UnsafeCheckpointError,
    )
    from transferkit.evaluation import EvalResult, evaluate
    from transferkit.freeze import (
        convert_frozen_bn,
        freeze,
        freeze_backbone,
        summary,
        trainable_parameters,
        unfreeze,
    )
    from transferkit.inspect import inspect_checkpoint
    from transferkit.load_report import LoadReport
    from transferkit.optim import add_param_group, build_optimizer
    from transferkit.partial import load_partial
    from transferkit.rename import Prefix, Regex, RenameOnLoadMixin, parse_rule
    from transferkit.run import FinetuneSpec, RunFolder, RunResult, finetune
    from transferkit.salvage import Placeholder, find_placeholders, salvage_load
    from transferkit.schedule import GradualUnfreeze, LRSchedule
    from transferkit.use import LoadedRun, load_run
