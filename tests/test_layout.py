"""The package's layers: a module imports only from its own layer and the ones below it.

Lazy imports inside functions count too, so no import cycle can hide in a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import forwardgrad

PACKAGE = Path(forwardgrad.__file__).parent

LAYERS = [
    {"io", "stats", "config_fields", "environment", "memory", "distributed"},
    {"core"},
    {"guesses", "models", "data", "closedform"},
    {"estimation"},
    {"diagnostics"},
    {"training"},
    {"bench", "reproduce"},
    {"cli", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _top(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imported_tops(source: str, package: list[str]) -> set[str]:
    """The package's top-level parts that ``source``, a module of the subpackage ``package``
    (its parts below ``forwardgrad``), imports, relatively or absolutely."""
    tops = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
                names = [a.name for a in node.names]
                tops.add(parts[0] if parts else names[0])
            elif node.module and node.module.startswith("forwardgrad."):
                tops.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("forwardgrad."):
                    tops.add(alias.name.split(".")[1])
    return tops


def test_every_part_of_the_package_has_a_layer():
    parts = {
        _top(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    }
    assert parts <= set(RANK), f"give these a layer in LAYERS: {sorted(parts - set(RANK))}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue  # the package root re-exports the public API
        own = RANK[_top(path)]
        package = list(path.relative_to(PACKAGE).parent.parts)
        for top in _imported_tops(path.read_text(), package):
            if top in RANK and RANK[top] > own:
                upward.append(f"{path.relative_to(PACKAGE)} imports {top}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_layer_check_sees_upward_imports():
    """Control: lazy relative and absolute imports are both found."""
    source = (
        "import torch\n"
        "def f():\n    from ..training.train import train\n"
        "def g():\n    import forwardgrad.cli.main\n"
        "from . import sites\n"
    )
    assert _imported_tops(source, ["core"]) == {"training", "cli", "core"}
