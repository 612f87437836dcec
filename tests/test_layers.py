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
    "tcap.cli": {"tcap.__main__"},
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
