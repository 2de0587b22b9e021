"""The package's layers (DESIGN.md): no import cycle anywhere, and each layer imports only
the layers below it. Read from the source with ``ast`` (imports under ``TYPE_CHECKING``
count too: a type-only cycle is still a design cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import langchain_fabstir

ROOT = Path(langchain_fabstir.__file__).parent
PKG = "langchain_fabstir"

# layer -> the layers it may import (besides itself). The ground floor is importable by all.
GROUND = {"errors", "_json", "_eth", "_http", "_redact", "_sync", "_compat", "_version", "_extras"}
ALLOWED: dict[str, set[str]] = {
    "ground": set(),
    "wire": set(),
    "s5": set(),
    "discovery": set(),
    "checkpoints": {"s5", "wire"},
    "chain": {"discovery", "wire"},
    "storage": {"s5"},
    "sessions": {"wire", "discovery", "checkpoints", "chain", "storage", "s5"},
    "integrations": {"sessions", "wire", "checkpoints", "storage", "s5", "discovery", "chain"},
    "portal": {"s5"},
    "host": {"wire", "checkpoints", "s5", "storage"},
    "cli": {
        "integrations",
        "sessions",
        "host",
        "portal",
        "s5",
        "storage",
        "discovery",
        "chain",
        "checkpoints",
        "wire",
    },
}
INTEGRATIONS = {
    "chat_models",
    "chat_message_histories",
    "callbacks",
    "langgraph",
    "embeddings",
    "retrievers",
    "tools",
    "vectorstores",
    "_host_http",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module ``name`` refers to (a submodule, or the package holding it)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import name` imports pkg.name when that is a module, else pkg.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target == PKG or target.startswith(PKG + "."):
                resolved = _resolve(target, modules)
                if resolved and resolved != module:
                    found.add(resolved)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the package itself re-exports everything
    top = parts[1]
    if top in GROUND:
        return "ground"
    if top in INTEGRATIONS:
        return "integrations"
    if top in ALLOWED:
        return top
    raise AssertionError(f"{module} belongs to no layer: add it to a folder or to the test")


def test_no_import_cycle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == [], f"import cycles: {cycles}"


def test_each_layer_imports_only_the_layers_below() -> None:
    wrong = []
    for module, targets in sorted(_graph().items()):
        layer = _layer(module)
        if layer is None:
            continue
        for target in sorted(targets):
            other = _layer(target)
            if other is None:
                wrong.append(f"{module} imports the package root {target}")
            elif other not in ("ground", layer) and other not in ALLOWED[layer]:
                wrong.append(f"{module} ({layer}) imports {target} ({other})")
    assert wrong == []


def test_the_checker_sees_cycles_and_layer_breaks(tmp_path: Path) -> None:
    """The checks above can fail: a planted cycle and a planted upward import are found."""
    modules = {f"{PKG}.a": tmp_path / "a.py", f"{PKG}.b": tmp_path / "b.py"}
    modules[f"{PKG}.a"].write_text(f"from {PKG}.b import x\n")
    modules[f"{PKG}.b"].write_text(f"import {PKG}.a\n")
    assert _imports(f"{PKG}.a", modules[f"{PKG}.a"], modules) == {f"{PKG}.b"}
    assert _imports(f"{PKG}.b", modules[f"{PKG}.b"], modules) == {f"{PKG}.a"}
    with pytest.raises(AssertionError):
        _layer(f"{PKG}.nowhere")
    assert "sessions" not in ALLOWED["wire"] and "host" not in ALLOWED["sessions"]
