"""The package's layout: every module file name is unique, and no imports form a cycle.

A newcomer goes from a rule to its module by name (``docs/architecture.md``); two files called
``train.py`` make that lookup ambiguous, and an import cycle makes a module impossible to read
(or import) on its own. Imports are collected with ``ast`` from every ``import``/``from``
statement, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "prefgen"


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``workflow/prefgen``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when it is a
    module, else ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        # a package's __init__ is imported by its submodules implicitly; only edges count here
        graph[name] = {m for m in imports(path, known) if m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
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
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_two_modules_share_a_file_name() -> None:
    names = Counter(p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
    dup = {
        n: sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob(n))
        for n, c in names.items()
        if c > 1
    }
    assert not dup, f"module file names used twice: {dup}"


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert "prefgen.evaluation.judge_types" in graph["prefgen.evaluation.external_judges"]
    found = cycles(graph)
    assert not found, f"import cycles: {found}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_architecture_table_names_each_commands_module() -> None:
    """docs/architecture.md's rule → module tables name, for every rule, the module that
    ``prefgen.cli.COMMANDS`` runs; every workflow command is in them."""
    import re

    from prefgen.cli import COMMANDS, READER_COMMANDS

    doc = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `(\w+)`[^|]*\| `([a-z-]+)` → `([\w/]+\.py)`", doc, flags=re.M)
    assert len(rows) > 30
    for rule, command, path in rows:
        assert command in COMMANDS, f"rule {rule}: unknown command {command}"
        module = COMMANDS[command].removeprefix("prefgen.").replace(".", "/") + ".py"
        assert path == module, f"rule {rule}: the table says {path}, the CLI runs {module}"
        assert (PACKAGE / path).exists(), path
    assert set(COMMANDS) - READER_COMMANDS <= {c for _, c, _ in rows}
