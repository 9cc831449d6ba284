"""The package's import graph: no module of score_rl/ imports itself back, not even through an import inside a function
(a cycle hidden by a lazy import still ties the modules together), and no module is over the size a reader can hold."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "score_rl"
MAX_LINES = 400
# whole by design: the sandbox's parent side (process start-up, limits, namespaces and the wait in one place)
LONGER = {"score_rl/sandbox/runner.py"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # `from score_rl.x import module` imports the module; `from score_rl.x import name`, score_rl.x
                submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
                targets |= submodules or ({base} & modules.keys())
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names} & modules.keys()
        edges[name] = targets - {name}
    return edges


def _cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    edges = _graph()
    # a package's __init__ re-exports from its modules; its modules importing the package's public names back is
    # the same cycle, so both directions count
    assert _cycles(edges) == []


def _lines(path: str) -> int:
    return len((REPO / path).read_text().splitlines())


@pytest.mark.parametrize("path", sorted(set(str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")) - LONGER))
def test_no_module_is_over_400_lines(path):
    assert _lines(path) <= MAX_LINES, f"{path} has {_lines(path)} lines (at most {MAX_LINES}: split it by concern)"


def test_the_modules_allowed_to_be_longer_still_need_it():
    assert all(_lines(path) > MAX_LINES for path in LONGER), "a module back under the limit: drop it from LONGER"


def test_every_package_is_in_the_distribution():
    """A non-editable install ships only the packages pyproject.toml lists: a new sub-package must be named there."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest's own dependency
        import tomli as tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert packages - listed == set(), "add them to [tool.setuptools] packages in pyproject.toml"
