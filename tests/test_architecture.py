"""The import graph of gainderive has no cycle, so data flows one way (docs/architecture.md).

formula -> activation -> (symbolic integrator gaussian_rules | backends) -> verify -> compile -> moments -> gains
-> outputs.  The graph counts every import, at module level or inside a function (a function-level import that
closes a circle is still a circle: the symbolic integrator once verified itself by calling moments), and
``from . import x`` as an import of the package root too (the root lazily exports from most submodules).

The graph is built here with ast, independently of any tool the package ships, and checked by Tarjan's
strongly connected components: a cycle is a component of more than one module.
"""

import ast
import pathlib

import pytest

import gainderive

PACKAGE = pathlib.Path(gainderive.__file__).parent


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """{module: modules it imports} for every module under ``root`` (relative and absolute imports)."""
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                candidates = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(c for c in candidates if c in modules and c != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_checker_finds_a_cycle_when_there_is_one(tmp_path):
    # a package whose symbolic layer verifies itself by calling the evaluation layer: the circle of issue #13
    pkg = tmp_path / "toy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "moments.py").write_text("from .rules import derive\n")
    (pkg / "rules.py").write_text("def derive():\n    from .moments import moments\n")
    (pkg / "gains.py").write_text("from . import moments\n")  # the package root is imported too
    (pkg / "leaf.py").write_text("import os\n")
    graph = import_graph(pkg)
    assert graph["toy.rules"] == {"toy.moments"} and graph["toy.gains"] == {"toy", "toy.moments"}
    assert cycles(graph) == [["toy.moments", "toy.rules"]]


def test_gainderive_has_no_import_cycle():
    found = cycles(import_graph(PACKAGE))
    assert found == [], f"import cycles (each a set of modules importing each other): {found}"


@pytest.mark.parametrize("lower, higher", [
    ("gaussian_rules", "verify"), ("backends.quadrature", "verify"), ("verify", "compile"), ("compile", "moments"),
    ("activation", "registry"), ("_cache", "compile"),
])
def test_the_layers_import_only_downwards(lower, higher):
    graph = import_graph(PACKAGE)

    def reaches(source: str, target: str) -> bool:
        seen, todo = set(), [source]
        while todo:
            node = todo.pop()
            if node == target:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return False

    assert reaches(f"gainderive.{higher}", f"gainderive.{lower}")
    assert not reaches(f"gainderive.{lower}", f"gainderive.{higher}"), f"{lower} imports {higher}"


def test_no_submodule_imports_the_package_root_except_the_entry_points():
    # gainderive/__init__.py exports lazily from the computing modules: one of them importing the root is a cycle
    graph = import_graph(PACKAGE)
    importers = sorted(m for m, targets in graph.items() if "gainderive" in targets)
    assert set(importers) <= {"gainderive.propagate", "gainderive.__main__"}, importers


FRAMEWORKS = {"torch": "gainderive.torch", "jax": "gainderive.jax", "flax": "gainderive.jax",
              "keras": "gainderive.keras"}


def test_each_framework_is_imported_by_its_own_module_alone():
    # torch, jax/flax and keras are optional extras: only gainderive.torch, gainderive.jax and gainderive.keras
    # may import them (at any level), so that the rest of the package works without any of them
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                roots = [node.module.split(".")[0]]
            else:
                continue
            offenders += [(name, root) for root in roots if root in FRAMEWORKS and FRAMEWORKS[root] != name]
    assert offenders == [], offenders


def test_importing_gainderive_imports_no_framework():
    import subprocess
    import sys

    code = ("import sys, gainderive, gainderive.init, gainderive.tables, gainderive.testing, gainderive.cli; "
            "gainderive.calculate_gain('relu'); "
            "print(sorted(m for m in ('torch', 'jax', 'flax', 'keras', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
