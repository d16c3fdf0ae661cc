"""The import graph of the four packages, read from the sources (function-local imports
included): imports go one way between packages, and no module imports itself back through
others."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"data_prep": "ecgtune.data_prep", "components": "ecgtune.components",
            "search": "ecgtune.search", "ensembles": "ecgtune.ensembles"}
# What each package may import of the project (DESIGN: imports go one way).
ALLOWED = {
    "ecgtune.data_prep": set(),
    "ecgtune.components": set(),
    "ecgtune.search": {"ecgtune.data_prep", "ecgtune.components"},
    "ecgtune.ensembles": {"ecgtune.data_prep", "ecgtune.components", "ecgtune.search"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, dotted in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((dotted, *parts))] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (an attribute import resolves to its module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):  # every import, at any depth
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("ecgtune.") and (target := _resolve(name)) and target != module:
                targets.add(target)
    return targets


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_imports_go_one_way_between_packages() -> None:
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                   if _package(t) != _package(m) and _package(t) not in ALLOWED[_package(m)])
    assert wrong == []


def _cycle_from(start: str) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in GRAPH[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_module_imports_itself_back() -> None:
    cycles = {" -> ".join(c) for m in GRAPH if (c := _cycle_from(m))}
    assert sorted(cycles) == []


def test_the_graph_sees_function_local_imports() -> None:
    # ensembles.cli.ensemble imports the build only inside its handler.
    assert "ecgtune.ensembles.build.ensemble" in GRAPH["ecgtune.ensembles.cli.ensemble"]
