"""Salvage tensors from checkpoints that ``weights_only=True`` refuses, without running code from the file.

A pickle is a small program: each ``GLOBAL`` names an importable object and ``REDUCE``/``NEWOBJ``/``INST``/
``OBJ``/``BUILD`` call it or feed it state. Many real checkpoints are refused by ``torch.load(weights_only=True)``
only because of harmless extras (a Lightning callback object, a pickled ``nn.Module``, ``argparse.Namespace``,
NumPy scalars). :func:`salvage_load` reads such files with a restricted unpickler:

* a short allow-list of pure constructors (torch's tensor rebuild functions re-implemented here with bounds
  checks, storage types, dtypes, ``torch.Size``, ``OrderedDict``, ``set`` ...) maps to real objects;
* every other global becomes a :class:`Placeholder` subclass that records its dotted name and, when the
  pickle "calls" it or gives it state, records the arguments and state; nothing from the file is imported,
  called or looked up with ``getattr``;
* storages are read from the zip members (or the raw bytes of a legacy pre-1.6 file) and moved with
  ``map_location``.

The tensors come out; :func:`find_placeholders` lists what was replaced.

Where things live (everything public is re-exported here, so ``from transferkit.salvage import ...`` is all
a caller needs):

* :mod:`.placeholders`: :class:`Placeholder`, :func:`is_placeholder`, :func:`find_placeholders`,
  :func:`module_state_dict`.
* :mod:`.allowlist`: the allowed globals, the bounds-checked tensor rebuilders, the one call gate and the
  ``Refused`` error.
* :mod:`.unpickler`: the restricted unpickler itself.
* :mod:`.devices`: ``map_location`` handling and byte-order swaps for storages.
* :mod:`.readers`: :func:`salvage_load` and the zip, legacy, plain-pickle and safetensors readers.

All of it logs to the one logger ``"transferkit.salvage"``, and the placeholder classes report
``__module__ == "transferkit.salvage"`` (use :func:`is_placeholder` to recognise them).

Example:
    >>> import tempfile, argparse, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "ckpt.pt"
    >>> torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, path)
    >>> obj = salvage_load(path)
    >>> obj["w"]
    tensor([1., 1.])
    >>> find_placeholders(obj)
    ['argparse.Namespace']
    >>> obj["args"].state
    {'lr': 0.1}
"""

from __future__ import annotations

from transferkit.salvage.placeholders import Placeholder, find_placeholders, is_placeholder, module_state_dict
from transferkit.salvage.readers import salvage_load

__all__ = ["Placeholder", "find_placeholders", "is_placeholder", "module_state_dict", "salvage_load"]
