"""Safe, atomic checkpoint I/O: read what people actually have, write complete training states.

Reading (:func:`load_checkpoint`) accepts torch zip files (``.pt``, ``.pth``, ``.pth.tar``, ``.bin``,
Lightning ``.ckpt``), legacy pre-1.6 pickles (``.th`` ...) and ``.safetensors``, always with
``weights_only=True``: a file that needs other globals is refused with :class:`UnsafeCheckpointError`
naming them, and never silently unpickled. :func:`extract_state_dict` finds the weights inside
whatever container they came in. :func:`describe_unsafe_globals` lists what a file would import,
without running any of it.

Writing (:func:`save_checkpoint`, :func:`save_weights`, :func:`atomic_write`) goes through a temporary
file in the target folder (named ``.<name>.tmp-<random>``), which is flushed, fsynced and
``os.replace``-d over the target, after which the folder is fsynced. A crash, an exception, a full disk
or ``kill -9`` at any moment leaves the previous file at the path intact; only a SIGKILL can leave a
``.<name>.tmp-*`` file behind, never a partial file at the path.

A training checkpoint is a plain dict that ``weights_only=True`` reads back::

    {"format": "transferkit.checkpoint/1", "models": {name: state_dict}, "optimizers": {...},
     "schedulers": {...}, "scaler": state|None, "epoch": int|None, "step": int|None, "metrics": {...},
     "rng": {"python", "numpy", "torch", "cuda"}, "extra": {...},
     "meta": {"transferkit_version", "torch_version", "created", ...}}

Where things live (everything public is re-exported here, so ``from transferkit.checkpoint import ...``
is all a caller needs):

* :mod:`.formats`: :func:`~.formats.sniff_format` (the one format sniffer: reading, salvage and inspect
  use it), the ``PathLike`` / ``MapLocation`` types, the checkpoint file suffixes.
* :mod:`.reading`: :func:`load_checkpoint`, the torch reader, refusal messages.
* :mod:`.safetensors_file`: :func:`~.safetensors_file.read_safetensors`.
* :mod:`.unsafe_globals`: :func:`describe_unsafe_globals`, the static scan of a whole file (zip members'
  compression and sizes, legacy, tar, plain pickles) that :func:`load_checkpoint` runs first.
* :mod:`.pickle_scan`: the bounded, symbolic scan of one pickle (budgets, shared references, globals).
* :mod:`.verdicts`: :func:`~.verdicts.classify_global`, harmless / unknown / dangerous.
* :mod:`.state_dicts`: :func:`extract_state_dict`, :func:`snapshot_state`; :mod:`.weight_search`: where
  the weights sit in a container; :mod:`.containers`: reading loaded mappings past planted attributes,
  short reprs, :func:`~.containers.unwrap_model`.
* :mod:`.atomic`: :func:`atomic_write` and the temp-file/fsync/replace machinery.
* :mod:`.rng`: :func:`capture_rng_state`, :func:`restore_rng_state`.
* :mod:`.training`: :func:`save_checkpoint`, :func:`restore_checkpoint`, ``FORMAT``.
* :mod:`.weights`: :func:`save_weights`.
* :mod:`._files` (private to the package): path checks, which file a loaded object came from.

All of it logs to the one logger ``"transferkit.checkpoint"``.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "last.pt"
    >>> model = torch.nn.Linear(2, 1)
    >>> _ = save_checkpoint(path, model=model, epoch=3)
    >>> ckpt = restore_checkpoint(path, model=torch.nn.Linear(2, 1))
    >>> ckpt["epoch"], sorted(extract_state_dict(ckpt))
    (3, ['bias', 'weight'])
"""

from __future__ import annotations

from transferkit.checkpoint.atomic import atomic_write
from transferkit.checkpoint.reading import load_checkpoint
from transferkit.checkpoint.rng import capture_rng_state, restore_rng_state
from transferkit.checkpoint.state_dicts import extract_state_dict, snapshot_state
from transferkit.checkpoint.training import FORMAT, restore_checkpoint, save_checkpoint
from transferkit.checkpoint.unsafe_globals import describe_unsafe_globals
from transferkit.checkpoint.weights import save_weights

__all__ = [
    "FORMAT",
    "load_checkpoint",
    "extract_state_dict",
    "save_checkpoint",
    "restore_checkpoint",
    "save_weights",
    "snapshot_state",
    "atomic_write",
    "describe_unsafe_globals",
    "capture_rng_state",
    "restore_rng_state",
]
