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

from transferkit.errors import TransferkitError
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

    Args:
        spec: the options; keywords given beside it replace its fields (``finetune(spec, epochs=3)``).
        **options: :class:`FinetuneSpec` fields, when no spec is given (``backbone="resnet18"``, ...).

    Returns:
        The run folder, the best and final metrics, and every file the run wrote.

    Raises:
        TransferkitError: bad options or inputs (``param`` names the option), as the CLI's exit code 2.
    """
    spec = spec.replace(**options) if spec is not None else FinetuneSpec(**options)
    # the job itself is still built in transferkit.commands.finetune (the RunFolder step moves it here)
    from transferkit.commands.finetune import execute
    from transferkit.commands.flags import to_argv

    defaults = FinetuneSpec.defaults()
    explicit = {k: v for k, v in spec.to_dict().items() if v != defaults[k]}
    code, run_dir = execute(explicit, to_argv(explicit))
    if code != 0 or run_dir is None:
        raise TransferkitError(f"the fine-tuning job ended with exit code {code}")
    return RunResult.of(Path(run_dir).resolve())
