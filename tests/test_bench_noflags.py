"""Smoke test of the "No flags" benchmark (benchmarks/noflags.py): every shape's
program runs, with tiny work (NOFLAGS_SCALE), without tcap and through tcap, and
the section renders. No timing is asserted: the measurement is `make bench`'s."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import noflags  # noqa: E402

#: Work scaled down to a sliver: every program still starts its pools, workers
#: or cluster and does a few products.
TINY = 0.02


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory() as home:
        yield noflags._env(home, TINY)


@pytest.mark.parametrize("shape", noflags.SHAPES, ids=[s.name for s in noflags.SHAPES])
def test_shape_runs_without_tcap(shape: noflags.Shape, env: dict[str, str]) -> None:
    done = subprocess.run(noflags.command(shape, None), cwd=noflags.HERE, env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "every program prints its result"


def test_measure_and_section_through_tcap(env: dict[str, str]) -> None:
    """One round of two shapes (one of them the bash one), without tcap, under
    the default and under the first grid flags, then the section's table."""
    shapes = [s for s in noflags.SHAPES if s.name in ("serial BLAS", "copies")]
    configs = noflags.configurations(env)
    assert list(configs)[:2] == ["no tcap", "default"] and set(noflags.GRID) <= set(configs)
    picked = {name: configs[name] for name in ["no tcap", "default", *noflags.GRID]}
    samples = noflags.measure(shapes, picked, 1, env, warmup=False)
    assert all(len(times) == 1 and times[0] > 0 for times in samples.values())
    text = noflags.section(shapes, picked, samples, 1, TINY)
    lines = text.splitlines()
    assert lines[0] == "## No flags"
    rows = [line for line in lines if line.startswith("| serial BLAS |") or line.startswith("| copies |")]
    assert len(rows) == 2 and all(row.count("|") == 9 for row in rows)
    assert any(line.startswith("Targets (default ≤ 1.10 × best flags") for line in lines)


def test_a_failing_command_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(RuntimeError, match="failed \\(3\\)"):
        noflags.timed(["bash", "-c", "exit 3"], env)
