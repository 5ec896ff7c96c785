"""The package's dependency order (README, "Architecture"): a module imports only the layers before it.

The check reads every module's imports with ``ast`` (nothing is imported), top-level and inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "transferkit"

# The README's order, lowest first. "__init__" is the package root, which re-exports the public API.
LAYERS = [
    "errors",
    "checkpoint",
    "salvage",
    "load_report",
    "rename",
    "align",
    "converters",
    "partial",
    "backbones",
    "inspect",
    "freeze",
    "optim",
    "schedule",
    "recipes",
    "data",
    "evaluation",
    "distributed",
    "train",
    "report",
    "run",
    "use",
    "commands",
    "cli",
    "__init__",
]

# The one import against the order: load_checkpoint(salvage=True) hands the file to the restricted
# unpickler. It is made inside the function (never at import time), and salvage reaches checkpoint only
# through modules that do not import it back (formats, pickle_scan, safetensors_file).
LAZY_UPWARD = {("checkpoint", "salvage")}


def _unit(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0] if len(parts) > 1 or parts[0] != "__init__" else "__init__"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, top_level)`` for each ``transferkit`` import of the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(n, id(node) in top) for n in names if n.startswith("transferkit.")]
    return found


def _edges() -> list[tuple[str, str, str, bool]]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        for module, top in _imports(path):
            target = module.split(".")[1]
            if target != unit:
                edges.append((str(path.relative_to(PACKAGE)), unit, target, top))
    return edges


def test_every_module_has_a_place_in_the_order() -> None:
    units = {_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS and the README"


def test_imports_point_down_the_layers() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = [
        f"{file}: {unit} imports {target}{'' if top else ' (in a function)'}"
        for file, unit, target, top in _edges()
        if rank[target] > rank[unit] and ((unit, target) not in LAZY_UPWARD or top)
    ]
    assert not wrong, "imports against the README's order:\n" + "\n".join(wrong)


def test_no_module_level_import_cycle() -> None:
    """Between modules (files), counting function-level imports too, there is no cycle."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("transferkit", *path.relative_to(PACKAGE).with_suffix("").parts))
        graph[name.removesuffix(".__init__")] = {m for m, _ in _imports(path)}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*trail, node, nxt])
            if nxt in graph and nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 50


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's body in lines, its docstring excluded."""
    body = node.body
    if (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    return 0 if not body else (node.end_lineno or 0) - body[0].lineno + 1


def test_modules_and_functions_stay_small() -> None:
    """Issue 13's limits, kept: no module over 400 lines, no function body over 50 (docstring excluded)."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(PACKAGE.parent)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and _body_lines(node) > MAX_FUNCTION_LINES
            ):
                too_long.append(f"{name}:{node.lineno} {node.name}: a {_body_lines(node)}-line body")
    assert not too_long, "split these:\n" + "\n".join(too_long)
