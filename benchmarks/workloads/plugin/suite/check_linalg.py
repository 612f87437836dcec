"""numpy/scipy-style unit tests: many small BLAS and LAPACK calls (OpenBLAS's pool)."""

import numpy as np
import pytest

from conftest import count, size

N = size(160)


@pytest.mark.parametrize("seed", range(8))
def test_matmul_chain(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((N, N)) / N
    b = np.eye(N)
    for _ in range(count(60)):
        b = a @ b + np.eye(N)
    assert np.isfinite(b).all()


@pytest.mark.parametrize("seed", range(8))
def test_solve_residual(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(count(25)):
        a = rng.random((N, N)) + N * np.eye(N)
        x = rng.random((N, 4))
        assert np.allclose(np.linalg.solve(a, a @ x), x)


@pytest.mark.parametrize("seed", range(6))
def test_svd_and_eigh(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(count(8)):
        a = rng.standard_normal((N, N))
        s = np.linalg.svd(a, compute_uv=False)
        w = np.linalg.eigvalsh(a @ a.T)
        assert np.allclose(np.sort(s**2), np.sort(w), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_qr_lstsq(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(count(4)):
        a = rng.standard_normal((2 * N, N))
        y = a @ np.ones(N)
        q, r = np.linalg.qr(a)
        assert np.allclose(q @ r, a)
        assert np.allclose(np.linalg.lstsq(a, y, rcond=None)[0], 1.0)
