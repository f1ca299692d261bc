"""The package's layering, checked from the source (no imports executed).

Layers, top to bottom: ``cli`` → ``workflows`` (use cases, the Python API) → building blocks
(``mia``, ``methods``, ``models``, ``training``, ``data``, ``io``, ``config``, ``runtime``,
``errors``). A building block never imports a use case, nothing outside ``cli`` imports ``cli``,
and no module imports itself back through a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "unforget"
BUILDING_BLOCKS = {"mia", "methods", "models", "training", "data", "io", "config", "runtime"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``unforget…`` module a file imports, at any depth (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("unforget"))
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unforget")
        ):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_building_blocks_never_import_use_cases_or_cli() -> None:
    bad = [
        f"{name} imports {dep}"
        for name, deps in _graph().items()
        if _layer(name) in BUILDING_BLOCKS
        for dep in deps
        if _layer(dep) in {"workflows", "cli"}
    ]
    assert bad == []


def test_only_the_cli_imports_the_cli() -> None:
    bad = [
        f"{name} imports {dep}"
        for name, deps in _graph().items()
        if _layer(name) != "cli" and name != "unforget.__main__"
        for dep in deps
        if _layer(dep) == "cli"
    ]
    assert bad == []


def test_no_import_cycles_at_module_level() -> None:
    """Module-level imports only: a lazy import inside a function cannot deadlock an import."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        deps: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module in modules:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}

    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle.extend([*path, node, dep])
                return True
            if dep not in state and visit(dep, [*path, node]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if module not in state and visit(module, []):
            break
    assert cycle == []


def test_the_root_holds_only_the_entry_points() -> None:
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert root == ["__init__.py", "__main__.py", "errors.py"]
    assert not list(PACKAGE.rglob("*.orig"))


def test_command_code_names_no_method() -> None:
    """A method's own state and quirks live behind its interface (``SavedState``, ``info``):
    the use-case layer imports only the registry and the interface, never a method's module,
    and no string in it names a method (``bench`` excepted: choosing methods is its job)."""
    ast_names = ast.parse((PACKAGE / "methods" / "__init__.py").read_text())
    registry = next(
        node.value
        for node in ast.walk(ast_names)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "METHODS"
    )
    assert isinstance(registry, ast.Dict)
    names = {k.value for k in registry.keys if isinstance(k, ast.Constant)}
    assert "pgu" in names and "proxy-distill" in names
    method_modules = {
        f"unforget.methods.{p.stem}"
        for p in (PACKAGE / "methods").glob("*.py")
        if p.stem not in {"__init__", "base"}
    }
    for path in sorted((PACKAGE / "workflows").glob("*.py")):
        if path.name == "bench.py":
            continue
        reached = _imports(path) & method_modules
        assert not reached, f"{path.name} imports a method's module: {sorted(reached)}"
        literals = {
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        # ``train --exclude`` records its exact retraining in the ledger as "retrain"
        named = literals & names - {"retrain"}
        assert not named, f"{path.name} names a method: {sorted(named)}"
