"""A run's own validation images, found again from what its folder records.

The run's split is deterministic: the embedded digits' fixed split, or the image folder's ``train``/``val``
sub-folders or its stratified split by ``val_split`` and ``seed``, subset by ``limit_val``. Given the same
data, :func:`run_validation_set` gives back the very images (in the same order) the run validated on.

Example:
    >>> from transferkit.use import load_run
    >>> val = run_validation_set(load_run("runs/exp1"))  # doctest: +SKIP
    >>> x, y = val[0]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any

from torch.utils.data import Dataset

from transferkit.use.loaded import LoadedRun

__all__ = ["run_validation_set"]

logger = logging.getLogger(__name__)


def run_validation_set(run: LoadedRun) -> Dataset | None:
    """The run's validation dataset (``(input tensor, label)`` items, the run's preprocessing), or ``None``
    when its image folder is no longer where the run found it.

    Items of an image-folder run are read through :class:`~transferkit.data.ImageFileDataset` with the
    run's preprocessing; its ``samples`` hold the paths.
    """
    from transferkit.data import ImageFileDataset, limit_dataset, load_digits_data
    from transferkit.run.data_plan import scan_data
    from transferkit.run.spec import FinetuneSpec

    # the spec's defaults under what the run recorded: one source for every default (val_split, seed, ...)
    args: dict[str, Any] = {**FinetuneSpec.defaults(), **run.folder.read_args()}
    seed = int(args["seed"])
    if not args.get("data"):
        pre = run.preprocess
        norm = next(s for s in pre.spec["steps"] if s["op"] == "normalize")
        bundle = load_digits_data(pre.size, norm["mean"], norm["std"], augment=False)
        return limit_dataset(bundle.val, args.get("limit_val"), seed)
    folder = run.folder.data_folder()
    if folder is None:
        logger.warning("the run's data folder %s is not there any more (from here)", args.get("data"))
        return None
    split, _ = scan_data({**args, "data": str(folder)})  # the run's own split, scanned as training did
    samples = split.val
    if args.get("limit_val"):
        subset = limit_dataset(samples, int(args["limit_val"]), seed)  # type: ignore[arg-type]
        samples = [subset[i] for i in range(len(subset))]
    return ImageFileDataset(samples, run.preprocess, run.preprocess.mode)
