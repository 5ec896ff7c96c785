"""``summary(model)``: a table of parameter counts, trainable and frozen, and BatchNorm modes, by row.

Rows are an adapter's layer groups, or the model's top-level modules (those of the wrapped network when
the model only wraps one, like an adapter's ``backbone``).

Example:
    >>> from torch import nn
    >>> print(summary(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))).splitlines()[-1])
    total        9          9       0
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferkit.errors import ConfigError
from transferkit.freeze.batchnorm import is_bn_locked
from transferkit.freeze.selectors import canonical_names, check_model, layer_groups_of, wrapper_prefix
from transferkit.rename import is_under

__all__ = ["summary"]


def _bn_mode(module: nn.Module) -> str:
    if type(module).__name__ == "FrozenBatchNorm2d":
        return "FrozenBN"
    if isinstance(module, _BatchNorm):
        return "frozen(eval)" if is_bn_locked(module) else ("train" if module.training else "eval")
    return ""


def summary(model: nn.Module, by: str = "auto") -> str:
    """A table of parameter counts (elements), trainable and frozen, and BatchNorm modes.

    Args:
        model: any module.
        by: ``"module"`` (one row per top-level child; the children of the wrapped network when the
            model only wraps one, like an adapter's ``backbone``), ``"group"`` (one row per adapter layer group) or
            ``"auto"`` (groups when the model has ``layer_groups()``).

    Returns:
        The table as text, with a total row.

    Example:
        >>> print(summary(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))))
        module  params  trainable  frozen  batchnorm
        0            6          6       0  -
        1            4          4       0  1 train
        total       10         10       0
    """
    check_model(model, "summary")
    groups = layer_groups_of(model) if by in ("auto", "group") else None
    if by == "group" and groups is None:
        raise ConfigError(
            f"summary(by='group') needs a model with layer_groups(); {type(model).__name__} has none"
        )
    if by not in ("auto", "group", "module"):
        raise ConfigError(f"by must be 'auto', 'group' or 'module', got {by!r}")
    rows = _rows(model, groups)
    bn_modes = _bn_modes_by_row(model, {n: row for row, names in rows.items() for n in names})
    params = dict(model.named_parameters())
    header = ("module" if groups is None else "group", "params", "trainable", "frozen", "batchnorm")
    table = []
    totals = [0, 0, 0]
    for row in [*rows, *(r for r in bn_modes if r not in rows)]:
        names = rows.get(row, [])
        total = sum(params[n].numel() for n in names)
        train = sum(params[n].numel() for n in names if params[n].requires_grad)
        modes = ", ".join(f"{c} {m}" for m, c in bn_modes.get(row, {}).items()) or "-"
        table.append((row, str(total), str(train), str(total - train), modes))
        totals = [totals[0] + total, totals[1] + train, totals[2] + total - train]
    table.append(("total", *map(str, totals), ""))
    return _aligned([header, *table])


def _rows(model: nn.Module, groups: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """Row name -> its parameters: the layer groups, or the top-level modules (of the wrapped network)."""
    _, alias = canonical_names(model)
    if groups is not None:
        return {g: [alias[n] for n in names if n in alias] for g, names in groups.items()}
    rows: dict[str, list[str]] = {}
    base = wrapper_prefix(model)
    for name in dict(model.named_parameters()):
        rest = name[len(base) :]
        top = base + rest.split(".")[0] if "." in rest else "(root)"
        rows.setdefault(top, []).append(name)
    return rows


def _bn_modes_by_row(model: nn.Module, param_row: dict[str, str]) -> dict[str, dict[str, int]]:
    """Row name -> {BatchNorm mode: how many layers}; a BN layer counts in the row of its parameters."""
    bn_modes: dict[str, dict[str, int]] = {}
    name_of = {id(p): n for n, p in model.named_parameters()}
    for mname, module in model.named_modules():
        mode = _bn_mode(module)
        if not mode:
            continue
        owned = [name_of[id(p)] for p in module.parameters()]
        if owned:
            row = param_row.get(owned[0], "(root)")
        else:  # no parameters (affine-free or FrozenBN): the row of the first parameter under its parent
            parent = mname.rpartition(".")[0]
            row = next((param_row[n] for n in param_row if is_under(n, parent)), mname.split(".")[0])
        counts = bn_modes.setdefault(row, {})
        counts[mode] = counts.get(mode, 0) + 1
    return bn_modes


def _aligned(rows: list[tuple[str, ...]]) -> str:
    """The rows as text: the name column left-aligned, the counts right-aligned, the modes as they are."""
    widths = [max(len(r[i]) for r in rows) for i in range(5)]

    def fmt(r: tuple[str, ...]) -> str:
        cells = [r[0].ljust(widths[0]), *(r[i].rjust(widths[i]) for i in range(1, 4)), r[4]]
        return "  ".join(cells).rstrip()

    return "\n".join(fmt(r) for r in rows)
