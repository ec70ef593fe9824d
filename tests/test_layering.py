"""The import graph keeps its layers: commands -> training / metrics -> models -> data -> the base modules.

Every import counts, also those inside functions. A backend module imports shared modules only, never
another backend; nothing under vpt/models imports the training loop, metrics or commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vpt"
BACKENDS = (
    "vpt.models.river",
    "vpt.models.neuralsde",
    "vpt.models.latte",
    "vpt.models.pvdm",
    "vpt.models.rsvp",
    "vpt.models.seer",
)
BASE = (
    "vpt.errors",
    "vpt.console",
    "vpt.config",
    "vpt.fsutil",
    "vpt.weights",
    "vpt.runs",
    "vpt.progress",
    "vpt.precision",
    "vpt.distributed",
)
# what each layer must never import (a prefix matches the module and everything under it)
FORBIDDEN = {
    "vpt.models": ("vpt.training", "vpt.metrics", "vpt.commands", "vpt.cli"),
    "vpt.data": ("vpt.models", "vpt.training", "vpt.metrics", "vpt.commands", "vpt.cli"),
    "vpt.training": ("vpt.metrics", "vpt.commands", "vpt.cli"),
    "vpt.metrics": ("vpt.training", "vpt.commands", "vpt.cli"),
    **{
        base: ("vpt.data", "vpt.models", "vpt.training", "vpt.metrics", "vpt.commands", "vpt.cli", "vpt.visualize")
        for base in BASE
    },
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every vpt module `path` imports, at the top or inside a function (`from vpt.x import y` counts as
    vpt.x and, where y is a module, vpt.x.y)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("vpt")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vpt") and node.level == 0:
            found.add(node.module)
            found |= {
                f"{node.module}.{alias.name}"
                for alias in node.names
                if (PACKAGE.parent / f"{node.module}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()
                or (PACKAGE.parent / f"{node.module}.{alias.name}".replace(".", "/")).is_dir()
            }
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, imported in graph.items():
        for layer, banned in FORBIDDEN.items():
            if _within(module, layer):
                problems += [
                    f"{module} imports {name} (upward)"
                    for name in sorted(imported)
                    if any(_within(name, b) for b in banned)
                ]
        own = next((b for b in BACKENDS if _within(module, b)), None)
        if own is not None:
            problems += [
                f"{module} imports another backend, {name}"
                for name in sorted(imported)
                if any(_within(name, b) for b in BACKENDS if b != own)
            ]
    return problems


def test_the_package_keeps_its_layers():
    assert layering_violations(_graph()) == []


@pytest.mark.parametrize(
    ("module", "imported"),
    [
        ("vpt.models.latte", "vpt.models.river"),  # backend -> backend
        ("vpt.models.seer.backend", "vpt.models.pvdm"),  # a backend package counts as one backend
        ("vpt.models.backend", "vpt.training.loop"),  # model -> training loop
        ("vpt.models.autoencoders.objective", "vpt.metrics.lpips"),  # model -> metrics
        ("vpt.data.datasets", "vpt.models.latent"),  # data -> models
        ("vpt.runs", "vpt.training"),  # base -> training
    ],
)
def test_an_upward_or_sideways_import_is_caught(module, imported):
    graph = _graph()
    graph[module] = graph.get(module, set()) | {imported}
    assert any(problem.startswith(f"{module} imports") for problem in layering_violations(graph))


def test_imports_inside_functions_are_seen(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from vpt.training import train\n    import vpt.metrics.fvd\n")
    assert {"vpt.training", "vpt.metrics.fvd"} <= _imports(source)
