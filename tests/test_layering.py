"""The package's layering, read from the source: imports go downward only and methods never see a backend."""

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SOURCE / "evosparse"

#: (importing package, imported package) pairs that must never occur.
FORBIDDEN = [
    ("evosparse.methods", "evosparse.backends"),
    ("evosparse.methods", "evosparse.sparsifier"),
    ("evosparse.methods", "evosparse.engine"),
    ("evosparse.topology", "evosparse.methods"),
    ("evosparse.topology", "evosparse.backends"),
    ("evosparse.topology", "evosparse.sparsifier"),
    ("evosparse.topology", "evosparse.engine"),
    ("evosparse.criteria", "evosparse.methods"),
    ("evosparse.criteria", "evosparse.backends"),
    ("evosparse.criteria", "evosparse.engine"),
    ("evosparse.backends", "evosparse.methods"),
    ("evosparse.backends", "evosparse.sparsifier"),
    ("evosparse.backends", "evosparse.engine"),
    ("evosparse.analysis", "evosparse.engine"),
]

#: Names of backend types that no method, engine or export code may test with isinstance.
BACKEND_TYPES = {"MaskedLayer", "CsrLayer", "CsrLinear", "CondensedLayer", "CondensedLinear", "SparseLinear"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules of evosparse that ``path`` imports, at any level (TYPE_CHECKING and function bodies too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules}


GRAPH = {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("importer, imported", FORBIDDEN)
def test_no_upward_or_sideways_import(importer, imported):
    offending = sorted(
        f"{source} -> {target}"
        for source, targets in GRAPH.items()
        if within(source, importer)
        for target in targets
        if within(target, imported)
    )
    assert not offending, offending


def test_no_import_circle():
    graph = GRAPH
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target == node or target.startswith(node + "."):
                continue  # a package importing its own modules (to register them, or lazily)
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("folder", ["methods", "engine"])
def test_no_backend_type_checks_in_methods_or_engine(folder):
    offending = []
    for path in (PACKAGE / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                if names & BACKEND_TYPES:
                    offending.append(f"{path.name}:{node.lineno}")
    assert not offending, offending


def test_the_checker_sees_a_circle(monkeypatch):
    """The circle detector fails on a real circle (so the test above can fail)."""
    monkeypatch.setitem(GRAPH, "evosparse.fake_a", {"evosparse.fake_b"})
    monkeypatch.setitem(GRAPH, "evosparse.fake_b", {"evosparse.fake_a"})
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle()
