"""Smoke test of the pytest plugin benchmark (benchmarks/plugin.py): the
suite passes under every configuration with tiny work (PLUGIN_SCALE), the
inert pair runs, and the section renders. No timing is asserted: the
measurement is `make bench`'s."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import plugin  # noqa: E402

#: Work scaled down to a sliver: every test still fits its model or multiplies.
TINY = 0.02


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory() as home:
        yield plugin._env(home, TINY)


@pytest.mark.parametrize("config", list(plugin.CONFIGS))
def test_the_suite_passes(config: str, env: dict[str, str]) -> None:
    """The benchmark's command (its -q undone by a -v, so the header shows)."""
    done = subprocess.run([*plugin.suite_command(config), "-v"], cwd=plugin.HERE, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "48 passed" in done.stdout
    header = [line for line in done.stdout.splitlines() if line.startswith("tcap: profile")]
    if config == "no --tcap":
        assert header == []
    else:
        assert len(header) == 1 and header[0].startswith(f"tcap: profile {plugin.CONFIGS[config][1]}, 2 xdist workers")


def test_measure_and_section(env: dict[str, str]) -> None:
    samples = plugin.measure(1, env, warmup=False, inert_rounds=1)
    assert all(len(times) == 1 and times[0] > 0 for times in samples.values()), samples
    imports = plugin.import_cost(env, runs=2)
    assert len(imports) == 2 and all(0 < ms < 1000 for ms in imports)
    text = plugin.section(samples, 1, TINY, (0.5, 0.7), imports)
    lines = text.splitlines()
    assert lines[0] == "## pytest plugin"
    rows = [line for line in lines if line.startswith("| `pytest -n 2")]
    assert len(rows) == 3 and all(row.count("|") == 4 for row in rows)
    assert rows[0].startswith("| `pytest -n 2` |") and rows[0].endswith("| 1.00 |")
    assert any(line.startswith("Target (`--tcap default` ≥ 1.5× faster than without): ") for line in lines)
    assert "Work scaled by 0.02 (PLUGIN_SCALE)." in text
    assert "Importing the plugin (and tcap's package) takes " in text


def test_a_failing_command_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(RuntimeError, match="failed \\(3\\)"):
        plugin.timed(["bash", "-c", "exit 3"], env)
