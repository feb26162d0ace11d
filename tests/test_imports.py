"""Every module imports alone, and the modules import each other without a cycle.

A cycle kept alive by imports inside functions still ties two layers together (the CLI
and the server, say), so the graph here counts every `import` statement, wherever it is.
"""

import ast
import pathlib
import subprocess
import sys

import bitrouter

PACKAGE = pathlib.Path(bitrouter.__file__).parent


def module_names() -> dict:
    """Dotted name -> source file, for every module of the package."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: pathlib.Path, modules: dict) -> set:
    """The package's modules that `name` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + [base] if base else anchor)
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
    return {m for m in found if m in modules and m != name and not name.startswith(m + ".")}


def cycles(graph: dict) -> list:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_no_two_modules_import_each_other_even_lazily():
    modules = module_names()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    found = cycles(graph)
    assert not found, "\n".join(" <-> ".join(g) + ": " + "; ".join(
        f"{m} imports {sorted(graph[m] & set(g))}" for m in g) for g in found)


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_imports_alone_with_a_plain_python_c():
    children = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
                for name in module_names()}
    failed = {}
    for name, child in children.items():
        _, err = child.communicate(timeout=60)
        if child.returncode:
            failed[name] = err.strip().splitlines()[-1:]
    assert not failed, failed
