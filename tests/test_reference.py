"""The docs' variable table is derived from the table in tcap.variables."""

from pathlib import Path

import pytest

from tcap import reference
from tcap.variables import VARIABLES

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("name", ["profiles.md", "verification.md"])
def test_committed_docs_match_the_tables(name: str) -> None:
    text = (DOCS / name).read_text(encoding="utf-8")
    assert reference.update(text) == text, "run: python -m tcap.reference docs/profiles.md docs/verification.md"


def test_every_pool_of_the_registry_has_a_row() -> None:
    from tcap._pools import POOLS

    table = reference.pool_table()
    assert all(f"`{pool.module}`" in table for pool in POOLS)


@pytest.mark.parametrize("variable", VARIABLES, ids=lambda v: v.name)
def test_every_variable_has_a_row(variable) -> None:  # type: ignore[no-untyped-def]
    rows = [line for line in reference.variable_table().splitlines() if line.startswith(f"| `{variable.name}` |")]
    assert len(rows) == 1
    assert f"`{variable.library}`" in rows[0]


def test_update_refuses_text_without_markers() -> None:
    with pytest.raises(ValueError):
        reference.update("no markers here")
