"""Imports go one way: the CLI on top, the commands below it, the core at
the bottom. Checked on every import statement, including the lazy ones
inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import tcap

SOURCE = Path(tcap.__file__).parent
#: Modules that only the layers above them may import.
ABOVE = {
    "tcap.cli": {"tcap.__main__", "tcap"},  # the console script, tcap:_entry
    "tcap.commands": {"tcap.cli"},
}
#: The pure core imports nothing that reads or launches.
CORE = {"tcap.plan", "tcap.variables", "tcap.profiles", "tcap.expr", "tcap.cpuset", "tcap.policy", "tcap.ranks"}
SIDE_EFFECTS = {"tcap.launch", "tcap.supervise", "tcap.placement", "tcap.kernel", "tcap.sweep", "tcap.doctor",
                "tcap.recipe", "tcap.commands", "tcap.cli", "tcap.libraries"}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def modules() -> dict[str, set[str]]:
    out = {}
    for path in SOURCE.rglob("*.py"):
        name = "tcap." + ".".join(path.relative_to(SOURCE).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = imports(path)
    return out


def test_cli_and_commands_are_imported_only_from_above():
    for module, used in modules().items():
        for upper, allowed in ABOVE.items():
            if upper in used and module != upper:
                assert module in allowed, f"{module} imports {upper}"


def test_the_core_does_no_io_imports():
    for module, used in modules().items():
        if module in CORE:
            assert not used & SIDE_EFFECTS, f"{module} imports {used & SIDE_EFFECTS}"


def test_no_import_circles():
    """No module reaches itself through imports, lazy ones included: a
    shared piece lives where both sides can import it."""
    graph = modules()
    names = set(graph)
    edges = {module: {used for used in imports if used in names and used != module} - {"tcap"}
             for module, imports in graph.items()}
    circles = []
    for start in sorted(edges):
        stack = [(start, [start])]
        seen = set()
        while stack:
            module, path = stack.pop()
            for used in edges[module]:
                if used == start:
                    circles.append(" -> ".join([*path, start]))
                elif used not in seen:
                    seen.add(used)
                    stack.append((used, [*path, used]))
    assert not circles, "import circles:\n" + "\n".join(sorted(set(circles)))


def test_the_safe_file_layer_imports_nothing_of_tcap():
    used = modules()["tcap.safefile"]
    assert not {name for name in used if name == "tcap" or name.startswith("tcap.")}, used
