"""Shape 8: a small numpy-heavy test file, run as `pytest -n 2` (pytest-xdist).

Named so that no test run of the project collects it; benchmarks/noflags.py
passes it to pytest by path.
"""

import os

import numpy as np
import pytest

SCALE = float(os.environ.get("NOFLAGS_SCALE", "1"))
N = max(8, int(400 * min(SCALE, 1.0)))
TESTS = max(2, round(6 * SCALE))


@pytest.mark.parametrize("seed", range(TESTS))
def test_solve_and_svd(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.random((N, N)) + N * np.eye(N)
    b = rng.random(N)
    for _ in range(3):
        x = np.linalg.solve(a, b)
        assert np.allclose(a @ x, b)
        s = np.linalg.svd(a, compute_uv=False)
        assert s[0] >= s[-1] > 0
        a = a @ a.T / np.abs(a).max() + N * np.eye(N)
