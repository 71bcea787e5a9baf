"""The package's layers: each module imports wgpt only from layers below its own, or from its own
package without closing a cycle. Read from the source (AST), so function-level imports count too.

A function-level import of wgpt is allowed only where it keeps start-up cheap (train.py reports a
mistyped value before torch and Lightning load) or an optional dependency optional; it says so in
a comment on its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Bottom to top; packages on one line are one layer and may not import each other.
LAYERS = [
    ["wgpt.util"],
    ["wgpt.models", "wgpt.tokenizers"],
    ["wgpt.data"],
    ["wgpt.optim", "wgpt.parallel"],
    ["wgpt.lightning"],
    ["wgpt.interop"],
    ["wgpt.core"],
    ["wgpt.api"],
    ["wgpt.tools"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str | None:
    """The layer package holding ``module`` (None for the root package ``wgpt``)."""
    for layer in LAYERS:
        for package in layer:
            if module == package or module.startswith(package + "."):
                return package
    return None


def layer_of(module: str) -> int:
    package = package_of(module)
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def wgpt_imports(path: Path) -> list[tuple[str, int, bool, str]]:
    """(imported module, line, at function level, the line's text) for each import of wgpt."""
    text = path.read_text()
    lines = text.splitlines()
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # `from wgpt.x import y` imports wgpt.x.y where y is a module
                names = [child.module]
                names += [f"{child.module}.{a.name}" for a in child.names if _is_module(f"{child.module}.{a.name}")]
            else:
                names = []
            for name in names:
                if name == "wgpt" or name.startswith("wgpt."):
                    end = getattr(child, "end_lineno", child.lineno)
                    found.append((name, child.lineno, in_function, " ".join(lines[child.lineno - 1 : end])))
            if not isinstance(child, (ast.Import, ast.ImportFrom)):
                visit(child, nested)

    visit(ast.parse(text), False)
    return found


def _is_module(name: str) -> bool:
    path = SRC / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, *_ in wgpt_imports(path):
            while name not in MODULES:  # wgpt.x.y where y is a name in wgpt.x
                name = name.rpartition(".")[0]
            if name != module:
                graph[module].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_every_module_has_a_layer():
    homeless = [m for m in MODULES if m != "wgpt" and package_of(m) is None]
    assert not homeless, f"modules outside every layer of LAYERS: {homeless}"


@pytest.mark.parametrize("module", [m for m in MODULES if m != "wgpt"])
def test_imports_go_down(module):
    """No import of a higher layer, nor of another package of the same layer."""
    mine = package_of(module)
    for name, line, _, text in wgpt_imports(MODULES[module]):
        theirs = package_of(name)
        if theirs == mine or name == "wgpt":
            continue
        assert theirs is not None and layer_of(name) < layer_of(module), (
            f"{module}:{line} imports {name} ({theirs}, layer {layer_of(name) if theirs else '?'}), "
            f"not below {mine} (layer {layer_of(module)}): {text.strip()}"
        )


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_function_level_imports_say_why():
    unexplained = [
        f"{module}:{line}: {text.strip()}"
        for module, path in MODULES.items()
        for name, line, in_function, text in wgpt_imports(path)
        if in_function and "#" not in text
    ]
    assert not unexplained, "function-level imports of wgpt without a comment saying why:\n" + "\n".join(unexplained)


def test_the_check_sees_a_cycle():
    """The cycle finder itself: a graph with a cycle is caught, a DAG is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_private_name_crosses_modules():
    """A ``_name`` is its module's own: another module that needs it gets a public name."""
    crossing = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wgpt") and node.level == 0:
                private = [a.name for a in node.names if a.name.startswith("_")]
                crossing += [f"{module}: from {node.module} import {name}" for name in private]
    assert not crossing, "private names imported across modules:\n" + "\n".join(crossing)


def test_no_file_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these modules by job: {long}"
