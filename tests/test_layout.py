"""The package's shape: no import cycles between its modules, a command line that only parses."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import deconvnet

PACKAGE = Path(deconvnet.__file__).parent
BENCHMARKS = PACKAGE.parent / "benchmarks"


def _module(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """The modules of package ``root`` that ``path`` imports, anywhere in it (lazy imports in
    functions too)."""
    module = _module(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # "from . import image" imports a module
                full = f"{target}.{alias.name}"
                where = root.parent / full.replace(".", "/")
                is_module = where.with_suffix(".py").exists() or (where / "__init__.py").exists()
                found.add(full if is_module else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == root.name and name != module}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    return {_module(path, root): _imports(path, root) for path in root.rglob("*.py")}


def test_no_module_imports_itself_back():
    # graphlib refuses a graph with a cycle and names it. Every import counts, a lazy one inside
    # a function included: it only hides the cycle from the interpreter.
    graph = import_graph()
    assert "deconvnet.pictures.site" in graph["deconvnet.analysis.atlas"]  # the checker sees edges
    assert "deconvnet.mirror" in graph["deconvnet.rules"]  # "from . import mirror": a package
    assert "deconvnet.builder.reading.shapes" in graph["deconvnet.builder.reading"]
    graphlib.TopologicalSorter(graph).prepare()


def test_the_benchmarks_import_no_module_back():
    # One harness, one module per benchmark, the runner on top: python -m benchmarks NAME.
    graph = import_graph(BENCHMARKS)
    assert graph["benchmarks.harness"] == set()  # the harness knows no benchmark
    assert {"benchmarks.harness", "benchmarks.occlusion"} <= graph["benchmarks.gpu"]
    assert "benchmarks.volumes" in graph["benchmarks.run"]  # lazy imports count
    graphlib.TopologicalSorter(graph).prepare()


def test_the_checker_finds_a_cycle():
    graph = import_graph()
    graph["deconvnet.analysis.topk"] = graph["deconvnet.analysis.topk"] | {"deconvnet.pictures.site"}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        assert "deconvnet.pictures.site" in error.args[1]
    else:  # pragma: no cover - the assertion message is the point
        raise AssertionError("a cycle through topk and the site went unseen")


def test_the_command_line_only_parses_and_dispatches():
    # cli.py builds the parser and calls commands.py / demo.py; no figure or model code in it.
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "pathlib", "analysis.invariance", "commands", "demo", "errors", "loading"}, imported


def test_every_kind_of_call_has_its_reader():
    # rules.CALLS names a kind per functional call; reading.READERS holds one reader per kind. A
    # kind without a reader would fail at the first model that calls it, not here.
    from deconvnet import rules
    from deconvnet.builder.reading import READERS

    assert set(rules.CALLS.values()) == set(READERS)
