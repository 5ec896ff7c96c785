"""``transferkit.finetune``: the whole fine-tuning job from Python, with the CLI's run folder.

Example:
    >>> import transferkit
    >>> result = transferkit.finetune(backbone="resnet18", classes=10, epochs=1)  # doctest: +SKIP
    >>> result.best["val_acc"], sorted(p.name for p in result.paths)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError
from transferkit.run.folder import RunFolder
from transferkit.run.spec import FinetuneSpec

__all__ = ["RunResult", "finetune"]


@dataclass(frozen=True)
class RunResult:
    """What a finished run left: its folder, its metrics and the files written.

    Attributes:
        run_dir: the run folder.
        best: the exported (best) weights' facts from ``labels.json``: ``epoch`` (1-based), ``val_acc``,
            ``best_weights`` (``"model"`` or ``"ema"``); empty for an evaluation-only run.
        final: the last epoch's row of ``metrics.csv`` (``epoch`` 1-based, numbers as floats); empty when
            none was written.
        paths: every file in the run folder, sorted.
    """

    run_dir: Path
    best: dict[str, Any]
    final: dict[str, Any]
    paths: tuple[Path, ...]

    @classmethod
    def of(cls, run_dir: Path) -> RunResult:
        """Read the result of the run in ``run_dir`` (through :class:`RunFolder`)."""
        folder = RunFolder(run_dir)
        info, history = folder.read_labels(), folder.read_history()
        best = {k: info[k] for k in ("epoch", "val_acc", "best_weights") if k in info}
        return cls(folder.path, best, dict(history[-1]) if history else {}, folder.files())


def finetune(spec: FinetuneSpec | None = None, /, **options: Any) -> RunResult:
    """Fine-tune a backbone end to end, exactly as ``transferkit finetune`` with the same options does.

    The options given are layered as the command line's are: over a ``config`` file's, over the resumed
    run's own ``args.yaml`` (``resume``), over the defaults. The run's lines are log records of
    ``transferkit.run`` (``logging.basicConfig(level=logging.INFO)`` shows them).

    Args:
        spec: the options; keywords given beside it replace its fields (``finetune(spec, epochs=3)``).
        **options: :class:`FinetuneSpec` fields, when no spec is given (``backbone="resnet18"``, ...).

    Returns:
        The run folder, the best and final metrics, and every file the run wrote.

    Raises:
        TransferkitError: bad options or inputs (``param`` names the option), as the CLI's exit code 2.
    """
    from transferkit.distributed import process_group
    from transferkit.run.options import layered_options
    from transferkit.run.reporter import LogReporter
    from transferkit.run.runner import run

    spec = spec.replace(**options) if spec is not None else FinetuneSpec.from_dict(options)
    defaults = FinetuneSpec.defaults()
    given = {k: v for k, v in spec.to_dict().items() if v != defaults[k]}
    layered, resume_path = layered_options(given)
    spec = FinetuneSpec.from_dict(layered)  # checks every value that needs no model or data
    if spec.eval_only:
        raise ConfigError(
            "`eval_only`=True evaluates and writes no run folder, so there is no RunResult; score weights from "
            "Python with transferkit.evaluate(model, loader)",
            param="eval_only",
        )
    command = f"transferkit.finetune({', '.join(f'{k}={v!r}' for k, v in given.items())})"
    with process_group(spec.device) as (dist, device):
        run_dir = run(spec.to_dict(), resume_path=resume_path, dist=dist, device=device,
                      reporter=LogReporter(dist.rank), command=command)  # fmt: skip
    assert run_dir is not None  # only an evaluation-only run has none
    return RunResult.of(Path(run_dir).resolve())
